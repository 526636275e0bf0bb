# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · Beyond one GPU: DDP, FSDP and ZeRO-3 with accelerate
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/peft-course/peft-course/blob/main/notebooks/07_beyond_one_gpu.ipynb)
#
# A LoRA adapter on SmolLM2 fits one GPU; an 8B model at a useful batch often does not. The answer of today's
# ecosystem is `accelerate launch` with data parallelism (DDP), FSDP or DeepSpeed ZeRO-3, and peft and TRL
# support all three. Nothing here is home-made: TRL's `SFTTrainer` trains, accelerate wraps the model, peft
# supplies FSDP's auto-wrap policy, and the Trainer saves only the adapter, from the main process.
#
# **You will learn to**
# - say what DDP, FSDP and ZeRO-3 each keep on every GPU: weights, gradients, optimizer state, activations;
# - read the planner's per-GPU peak for SmolLM2-1.7B and an 8B model on 1-8 GPUs of 16, 24 and 80 GB, LoRA and QLoRA;
# - launch a training run with `accelerate launch --config_file ...` (configs for DDP, FSDP+LoRA, FSDP+QLoRA, ZeRO-3 ship
#   with the course), and why QLoRA under FSDP needs `bnb_4bit_quant_storage`;
# - run a real 2-process launch on this CPU and check that the ranks saw different data, held the bytes the
#   planner predicts and saved one adapter that reproduces the trained model.
#
# **Time:** about a minute on a CPU (the 2-process launch is most of it).

# %% tags=["nbval-ignore-output"]
# Set-up: on Colab, install the course first (elsewhere the README's `pip install` did it).
import subprocess
import sys

REPOSITORY = "https://github.com/peft-course/peft-course"
if "google.colab" in sys.modules:  # Colab's kernel imports it at start-up
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"git+{REPOSITORY}"], check=True)

from course_utils.loading import model_from_env
from course_utils.notebook import setup

# %% tags=["parameters"]
MODEL = model_from_env("course-tiny")  # or "smollm2-135m", any hub id
SEED = 0
NUM_PROCESSES = 2  # processes of the real launch (CPU processes here; GPUs where at least this many exist)
MAX_STEPS = 20  # training steps of the launch (each process trains on its own batch per step)
BATCH_SIZE = 8  # sequences per process per step
R = 8  # LoRA rank (all-linear)

# %% tags=["nbval-ignore-output"]
info = setup(SEED, model=MODEL)

# %% [markdown]
# ## 1. What each GPU keeps
#
# Training state has four parts: the **weights**, their **gradients**, the **optimizer state** (AdamW: two
# tensors per trainable parameter) and the **activations** saved for backward. With N GPUs each process trains
# on its own micro-batch, and the strategies differ in what they split:
#
# | | weights | gradients | optimizer state | activations |
# |---|---|---|---|---|
# | **DDP** (`DistributedDataParallel`) | all | all, plus gradient buckets of the same size | all | own micro-batch |
# | **FSDP** (`FULL_SHARD`) | 1/N, plus the unit being computed (gathered) | 1/N | 1/N | own micro-batch |
# | **DeepSpeed ZeRO-3** | 1/N, plus parameters being computed | 1/N | 1/N | own micro-batch |
#
# DDP never saves memory: it buys speed (N batches at once). FSDP and ZeRO-3 split every tensor of the training
# state into N shards and all-gather one wrapped unit (a decoder layer) when it is needed. Activations do not
# shrink with N: only a smaller micro-batch or gradient checkpointing shrinks them.
#
# With LoRA the gradients and optimizer state are tiny (only the adapters train), so sharding mostly splits the
# frozen **weights**. First by hand on the default model: count the bytes of a LoRA model's tensors.

# %%
import torch
from peft import LoraConfig, get_peft_model

from course_utils.loading import load_model

model = get_peft_model(
    load_model(MODEL, dtype="float32", device="cpu"),
    LoraConfig(r=R, lora_alpha=2 * R, target_modules="all-linear", task_type="CAUSAL_LM"),
)
weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
trainable_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
adam_bytes = 2 * trainable_bytes  # exp_avg and exp_avg_sq, float32 like the LoRA weights

by_hand = {
    "ddp": (weight_bytes, trainable_bytes, adam_bytes),
    "fsdp": (-(-weight_bytes // NUM_PROCESSES), -(-trainable_bytes // NUM_PROCESSES), -(-adam_bytes // NUM_PROCESSES)),
}
print(f"{MODEL} + LoRA r={R}, float32, per process with {NUM_PROCESSES} processes (bytes):")
print(f"{'':6}{'weights':>12}{'gradients':>12}{'optimizer':>12}")
for kind, (w, g, o) in by_hand.items():
    print(f"{kind:6}{w:>12,}{g:>12,}{o:>12,}")

# %% [markdown]
# The course's planner does this for any config, adding what the mechanisms keep on top (DDP's gradient buckets,
# FSDP's gathered units): `Recipe(..., n_gpus=N, sharding="ddp" | "fsdp" | "zero3")` gives the **per-GPU** estimate,
# and `details` lists each term. (`course_utils/sharding.py` holds the rules of the table above.)

# %%
from course_utils.planner import Recipe, estimate_training_memory

tiny = Recipe(method="lora", dtype="float32", r=R, lora_dropout=0.0, batch_size=BATCH_SIZE, seq_len=128)
planned = {}
for kind in ("ddp", "fsdp"):
    d = estimate_training_memory(model.config, tiny.replace(n_gpus=NUM_PROCESSES, sharding=kind)).details
    planned[kind] = (d["per GPU: weights (own shard)"], d["per GPU: grads"], d["per GPU: optimizer state"])
    print(
        f"planner, {kind}: weights {planned[kind][0]:,}  gradients {planned[kind][1]:,}  optimizer {planned[kind][2]:,}"
        f"  (+ gathered {d['per GPU: gathered weights (FSDP/ZeRO-3 units)']:,}, buckets {d['per GPU: DDP gradient buckets']:,})"
    )
expect_planner = planned == by_hand

# %%
from course_utils.notebook import expect

expect(
    "the planner's per-GPU weights, gradients and optimizer state equal the hand count (DDP and FSDP)", expect_planner
)
del model

# %% [markdown]
# ## 2. Real models on 1, 2, 4 and 8 GPUs
#
# The planner's per-GPU peak for SmolLM2-1.7B and an 8B model (`data/configs/llama-3.1-8b`: Llama-3.1-8B's
# shape, config only), LoRA and QLoRA (r=16, all-linear), batch 8 x 512 tokens per GPU with gradient
# checkpointing, FSDP on 2-8 GPUs. "fits" adds ~5% allocator slack and 1 GiB of CUDA context, as everywhere in
# the course. These are planner numbers (no GPU was used); section 5 says how to measure them.

# %%
from course_utils.planner import load_config

MODELS = {"SmolLM2-1.7B": "smollm2-1.7b", "8B (Llama-3.1-8B shape)": "llama-3.1-8b"}
GPU_COUNTS, GPU_GB = (1, 2, 4, 8), (16, 24, 80)
base = Recipe(method="lora", batch_size=8, seq_len=512, gradient_checkpointing=True)
peaks = {}
print(f"{'model':<24}{'method':<7}{'GPUs':>5}{'per-GPU peak GiB':>18}  " + "  ".join(f"{g} GB" for g in GPU_GB))
for label, cfg in MODELS.items():
    config = load_config(cfg)
    for method in ("lora", "qlora"):
        for n in GPU_COUNTS:
            est = estimate_training_memory(
                config, base.replace(method=method, n_gpus=n, sharding="fsdp" if n > 1 else "none")
            )
            peaks[label, method, n] = est
            fits = "  ".join(f"{'yes' if est.fits(g) else 'no':>5}" for g in GPU_GB)
            print(f"{label:<24}{method:<7}{n:>5}{est.peak_gib:>18.2f}  {fits}")

# %%
import matplotlib.pyplot as plt

from course_utils.plotting import plot_xy

ax = plot_xy(
    {
        f"{label}, {method}": (GPU_COUNTS, [peaks[label, method, n].peak_gib for n in GPU_COUNTS])
        for label in MODELS
        for method in ("lora", "qlora")
    },
    title="Planned per-GPU peak with FSDP (batch 8 x 512 per GPU, checkpointing)",
    xlabel="GPUs",
    ylabel="GiB per GPU",
    logx=True,
)
for g in GPU_GB:
    ax.axhline(g / 1.05 - 1, color="grey", lw=0.8, ls="--")  # what a g-GB card can hold after slack and context
    ax.text(GPU_COUNTS[-1], g / 1.05 - 1, f"{g} GB card", va="bottom", ha="right", fontsize=8)
ax.set_xticks(GPU_COUNTS, [str(n) for n in GPU_COUNTS])
plt.show()

# %% [markdown]
# Read the table with the four parts in mind:
# - **8B LoRA** keeps 16 GB of bf16 weights: it needs more than one 16 or 24 GB card, while FSDP splits the weights
#   and four 16 GB cards hold it. What remains per GPU is mostly the logits of 8 x 512 tokens over a 128k vocabulary,
#   which no sharding splits.
# - **QLoRA** barely moves with N: its 4-bit weights are small already, and what dominates (the float32 embeddings
#   and head after `prepare_model_for_kbit_training`, gathered as FSDP's root unit, plus logits and activations) is
#   not split. QLoRA + FSDP pays off when even the 4-bit weights do not fit one card: 70B models.
# - **SmolLM2-1.7B** fits one card; more GPUs only add speed (use DDP).
#
# The fit table names the smallest number of GPUs that fits, beside the single-GPU knobs:

# %%
from course_utils.planner import fit_table

print(fit_table("llama-3.1-8b", [base, base.replace(gradient_checkpointing=False)], gpus=GPU_GB))

# %%
need = {
    g: [
        s
        for s in fit_table("llama-3.1-8b", [base], gpus=(g,)).estimates[0].suggestions.get(g, [])
        if s.startswith("n_gpus")
    ]
    for g in (16,)
}
expect(
    "8B LoRA with checkpointing: the fit table suggests 4 GPUs with FSDP on 16 GB cards",
    need[16] == ["n_gpus=4, sharding='fsdp'"],
)
expect(
    "8B LoRA with checkpointing fits one 80 GB card and no 24 GB card alone",
    peaks["8B (Llama-3.1-8B shape)", "lora", 1].fits(80) and not peaks["8B (Llama-3.1-8B shape)", "lora", 1].fits(24),
)
expect(
    "QLoRA's per-GPU peak drops by less than 20% from 1 to 8 GPUs (8B)",
    peaks["8B (Llama-3.1-8B shape)", "qlora", 8].peak_bytes
    > 0.8 * peaks["8B (Llama-3.1-8B shape)", "qlora", 1].peak_bytes,
)

# %% [markdown]
# From the command line: `course-utils plan llama-3.1-8b --gc --gpus 4 --sharding fsdp --gpu 16`.
#
# ## 3. Launching: `accelerate launch --config_file ...`
#
# A launch is a script plus a config. The course ships both: the training module `course_utils.distributed`
# (TRL's `SFTTrainer` with a LoRA or QLoRA `peft_config`, the course's data and evaluation) and four accelerate
# configs inside the package, so they work after `pip install` too:

# %%
from course_utils.distributed import ACCELERATE_CONFIGS, accelerate_config

for name, what in ACCELERATE_CONFIGS.items():
    print(f"{name + '.yaml':<16} {what}")
print()
print(accelerate_config("fsdp-lora").read_text())

# %% [markdown]
# The commands (the config's `num_processes` is overridden on the command line):
#
# ```bash
# CFG=$(python -m course_utils.distributed --config fsdp-lora)    # path of a shipped config
# accelerate launch --config_file $CFG --num_processes 4 -m course_utils.distributed \
#     --model HuggingFaceTB/SmolLM2-1.7B-Instruct --output-dir adapters/smollm2-fsdp
# accelerate launch --config_file $(python -m course_utils.distributed --config fsdp-qlora) --num_processes 4 \
#     -m course_utils.distributed --method qlora --model <8B hub id> --gradient-checkpointing
# accelerate launch --config_file $(python -m course_utils.distributed --config zero3) --num_processes 8 \
#     -m course_utils.distributed --model <8B hub id>                # pip install deepspeed first
# ```
#
# What the engines do for you:
# - **Auto-wrap that suits peft.** The FSDP configs ask for `TRANSFORMER_BASED_WRAP` (one unit per decoder layer);
#   when the model is a `PeftModel`, the Trainer replaces it with peft's `fsdp_auto_wrap_policy`, which also puts
#   every trainable LoRA layer in its own unit, so no flat parameter mixes frozen and trainable tensors.
# - **QLoRA under FSDP.** FSDP shards parameters of one floating dtype, but bitsandbytes packs 4-bit weights in
#   uint8. `BitsAndBytesConfig(bnb_4bit_quant_storage=torch.bfloat16)`, the compute dtype, stores the same bytes as
#   bf16 elements, and the Trainer sets FSDP's mixed precision to match. The module does this when launched with FSDP:
#   `course_utils.distributed.qlora_config("fsdp", torch.bfloat16)`.
# - **One adapter, from the main process.** `trainer.save_model(...)` gathers the adapter's shards and writes only
#   the adapter (a few MB), once.
# - **What cannot run here says so.** DeepSpeed and FSDP need GPUs (accelerate runs FSDP on GPUs only; on CPU
#   processes it would silently fall back to plain DDP), so the module refuses them on a CPU with one sentence saying
#   what to use instead. `course-utils doctor` lists what runs on your machine.

# %%
from course_utils.distributed import UnsupportedHereError, require_supported

for kind, method in (("fsdp", "lora"), ("deepspeed", "lora"), ("fsdp", "qlora")):
    try:
        require_supported(kind, method, cuda=False)
    except UnsupportedHereError as err:
        print(f"{kind} + {method} on CPUs: {err}")

# %% [markdown]
# ## 4. A real 2-process launch on this machine
#
# Without (enough) GPUs, the DDP config starts CPU processes that exchange gradients over **gloo**: the same code
# path as N GPUs, with the same data sharding and the same saving. The module writes what each rank saw and held to
# a JSON file (`--facts`), which we check below. Its output (losses, timings) varies between machines, so the cell
# output is not compared; the claims are checked in the cell after it.

# %% tags=["nbval-ignore-output"]
import json
import os
import tempfile
import time
from pathlib import Path

import course_utils
from course_utils.distributed import launch_command

work = Path(tempfile.mkdtemp(prefix="dist-"))
adapter_dir, facts_file = work / "adapter", work / "facts.json"
cmd = launch_command(
    [
        "--model",
        MODEL,
        "--max-steps",
        str(MAX_STEPS),
        "--batch-size",
        str(BATCH_SIZE),
        "--r",
        str(R),
        "--output-dir",
        str(adapter_dir),
        "--facts",
        str(facts_file),
        "--eval-examples",
        "16",
        "--seed",
        str(SEED),
    ],
    num_processes=NUM_PROCESSES,
)
env = {
    **os.environ,
    "TQDM_DISABLE": "1",
    "OMP_NUM_THREADS": "1",
    # the processes import the same course_utils as this notebook
    "PYTHONPATH": os.pathsep.join([str(Path(course_utils.__file__).parent.parent), os.environ.get("PYTHONPATH", "")]),
}
if torch.cuda.device_count() < NUM_PROCESSES:
    env["CUDA_VISIBLE_DEVICES"] = ""  # CPU processes (gloo) unless there is one GPU per process
print("$", " ".join(cmd))
start = time.perf_counter()
proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)  # exit code shown below
launch_seconds = time.perf_counter() - start
for line in proc.stdout.splitlines():
    if line.startswith(("{'loss'", "[rank", "saved adapter", "done in")):
        print(line)
print(f"exit code {proc.returncode}; the launch took {launch_seconds:.1f} s wall time")
if proc.returncode != 0:
    print(proc.stderr[-3000:])

# %% [markdown]
# Each rank printed its own line. Now the checks: the two ranks trained on **different** batches (the Trainer's
# distributed sampler), they hold the same bytes as the planner's `ddp` column of section 1, DDP kept the two
# replicas identical, and the **saved** adapter, loaded on a fresh base model, gives the trained model's logits.

# %% tags=["nbval-ignore-output"]
from peft import PeftModel

from course_utils.loading import load_tokenizer

facts = json.loads(facts_file.read_text())
ranks = facts["ranks"]
tokenizer = load_tokenizer(MODEL)
reloaded = PeftModel.from_pretrained(load_model(MODEL, dtype="float32", device="cpu"), str(adapter_dir)).eval()
with torch.no_grad():
    probe = reloaded(**tokenizer("Hello there, how are you?", return_tensors="pt")).logits[0, -1]
max_diff = (probe - torch.tensor(ranks[0]["probe_logits"])).abs().max().item()
replica_diff = (torch.tensor(ranks[0]["probe_logits"]) - torch.tensor(ranks[1]["probe_logits"])).abs().max().item()
for r in ranks:
    print(
        f"rank {r['rank']}: {len(r['batches'])} batches, first {r['batches'][:2]}, losses {[round(x, 3) for x in r['losses']]}"
    )
print(f"saved adapter vs rank 0's model: max |logit diff| {max_diff:.2e}; rank 0 vs rank 1: {replica_diff:.2e}")
print(f"saved files: {ranks[0]['adapter_files']}")
print(f"eval after training, from the saved adapter: {ranks[0].get('eval')}")

# %%
expect(
    f"{NUM_PROCESSES} processes trained, each on {MAX_STEPS} batches",
    len(ranks) == NUM_PROCESSES and all(len(r["batches"]) == MAX_STEPS for r in ranks),
)
expect("no batch was seen by two ranks", len({b for r in ranks for b in r["batches"]}) == NUM_PROCESSES * MAX_STEPS)
expect(
    "each rank held exactly the planner's per-GPU weights, gradients and optimizer state (DDP)",
    all((r["weight_bytes"], r["grad_bytes"], r["optimizer_state_bytes"]) == planned["ddp"] for r in ranks),
)
expect("the replicas stayed identical (max logit diff < 1e-4)", replica_diff < 1e-4)
expect("the saved adapter reproduces rank 0's model (max logit diff < 1e-4)", max_diff < 1e-4)
expect(
    "only the adapter was saved",
    "adapter_model.safetensors" in ranks[0]["adapter_files"]
    and not any(f.startswith("model") for f in ranks[0]["adapter_files"]),
)
expect("the loss went down", ranks[0]["losses"][-1] < ranks[0]["losses"][0])

# %% [markdown]
# ## 5. What holds for real models, and how to check
#
# - The per-rank **byte counts** are exact on any model: they are tensor sizes, and the launch above measures them
#   the way a GPU run would (`--facts`). With FSDP they are 1/N of the same numbers, rounded up: torch's own FSDP2
#   (`fully_shard`) does run on CPU processes, and `tests/test_distributed.py` shards this LoRA model over 2 gloo
#   processes and finds exactly the planner's `fsdp` column of section 1 on each rank (accelerate's FSDP is GPU-only).
# - The **peaks** of section 2 are the planner's model of the mechanisms (checked within 15% against an H200 on one
#   GPU, `data/reference/`); the FSDP and ZeRO-3 extras (gathered units, prefetch) are modelled, not yet measured. One
#   GPU cannot show sharding across GPUs. On a machine with N GPUs, measure with the same launch and
#   `torch.cuda.max_memory_allocated()`, e.g. `course-utils plan llama-3.1-8b --gc --gpus 4 --sharding fsdp` against
#   `accelerate launch --config_file $(python -m course_utils.distributed --config fsdp-lora) --num_processes 4 ...`.
# - DeepSpeed is optional (`pip install "peft-course[deepspeed]"`, CUDA only); FSDP needs nothing beyond torch.
#
# ## What we measured

# %% tags=["nbval-ignore-output"]
from IPython.display import Markdown, display

from course_utils.notebook import record_metrics

rows = [
    (
        f"{MODEL}, LoRA r={R}: bytes per rank, DDP (weights / grads / optimizer)",
        " / ".join(f"{v:,}" for v in planned["ddp"]),
    ),
    ("same, FSDP (planner, 1/N)", " / ".join(f"{v:,}" for v in planned["fsdp"])),
    (f"{NUM_PROCESSES}-process CPU launch, {MAX_STEPS} steps: wall time", f"{launch_seconds:.0f} s"),
    ("loss, first -> last logged (rank 0)", f"{ranks[0]['losses'][0]:.3f} -> {ranks[0]['losses'][-1]:.3f}"),
    (
        "8B LoRA + gc per-GPU peak, 1 / 2 / 4 / 8 GPUs (planner, GiB)",
        " / ".join(f"{peaks['8B (Llama-3.1-8B shape)', 'lora', n].peak_gib:.1f}" for n in GPU_COUNTS),
    ),
    (
        "8B QLoRA + gc per-GPU peak, 1 / 2 / 4 / 8 GPUs (planner, GiB)",
        " / ".join(f"{peaks['8B (Llama-3.1-8B shape)', 'qlora', n].peak_gib:.1f}" for n in GPU_COUNTS),
    ),
]
display(Markdown("| measurement | result |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)))
_ = record_metrics(
    model=MODEL,
    launch_seconds=launch_seconds,
    processes=NUM_PROCESSES,
    max_steps=MAX_STEPS,
    loss_first=ranks[0]["losses"][0],
    loss_last=ranks[0]["losses"][-1],
)

# %% [markdown]
# ## Exercises
#
# 1. Run `course-utils plan llama-3.1-8b --gpus 8 --sharding ddp --gc` and compare with `--sharding fsdp`. Which
#    term is the same, which is 8x smaller, and why does DDP come out *above* one GPU?
# 2. Relaunch section 4 with `NUM_PROCESSES = 1` (papermill `-p NUM_PROCESSES 1`, or edit the parameters cell). The
#    same module runs unchanged; which claim of the check cell changes meaning?
# 3. On a machine with 2+ GPUs, launch with `fsdp-lora.yaml` and compare each rank's `weight_bytes` in the facts file
#    with the planner's `per GPU: weights (own shard)` for `sharding="fsdp"`.
