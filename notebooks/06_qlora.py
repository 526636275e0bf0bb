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
# # 06 · QLoRA and 8-bit loading with bitsandbytes
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/peft-course/peft-course/blob/main/notebooks/06_qlora.ipynb)
#
# QLoRA (Dettmers et al., 2023) trains a LoRA adapter on top of a base model whose linear weights are stored in
# **4 bits** (NF4): its linear layers shrink about 7x, and the adapter trains in full precision on top.
#
# **You will learn to**
# - see how NF4 stores a weight: blocks of 64, one scale each, 16 levels;
# - build a `BitsAndBytesConfig` for 4-bit NF4 and 8-bit, and measure the bytes each saves;
# - prepare a 4-bit model with `prepare_model_for_kbit_training` and train a QLoRA adapter;
# - read why QLoRA without gradient checkpointing can need *more* memory than LoRA;
# - merge a QLoRA adapter properly (dequantize, then merge);
# - avoid a pitfall of recent CPUs, where one evaluation breaks QLoRA training.
#
# **Time:** about a minute on a CPU with `course-tiny` (bitsandbytes runs 4-bit and 8-bit layers on the CPU).
# bitsandbytes has no macOS build: there the cells that need it print one sentence and skip.
#
# The old tutorial's claims about 8-bit loading are checked in [docs/claims.md](../docs/claims.md).

# %%
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
DTYPE = (
    "auto"  # the unquantized comparison model: "auto" = float32 on CPU, bf16 on recent GPUs, fp16 on T4/V100 and MPS
)
DEVICE = "auto"
LEARNING_RATE = "auto"  # "auto": chosen by model size (course_utils.hyperparameters, method="qlora")
MAX_STEPS = "auto"
BATCH_SIZE = "auto"
SEED = 0
N_VALIDATE = 16  # eval conversations the merge validation runs on
GPU_BATCH, GPU_SEQ_LEN = 8, 512  # batch shape of the GPU memory measurement (the H200 reference used 8 x 512)

# %% tags=["nbval-ignore-output"]
info = setup(SEED, model=MODEL)  # quiets bitsandbytes' logger BEFORE peft imports it
# shown, not claimed: the device and library versions of this machine

# %%
from course_utils.platform_support import bitsandbytes_available

HAS_BNB, why_not = bitsandbytes_available()
if not HAS_BNB:
    print(why_not)  # one sentence: the 4-bit and 8-bit cells below skip

# %% [markdown]
# ## 1. How NF4 stores a weight
#
# NF4 cuts each row of a weight matrix into **blocks of 64**. Each block keeps its **absmax** (the largest
# `|w|`), and each weight becomes a 4-bit index into **16 levels** placed at the quantiles of a normal
# distribution: dense near zero, where most weights are. **Double quantization** stores the absmax values in
# 8 bits too, in groups of 256 with one float32 scale each.

# %%
import matplotlib.pyplot as plt

from course_utils.figures.quantization import draw_nf4_blocks

draw_nf4_blocks()
plt.show()

# %% [markdown]
# That recipe is one `BitsAndBytesConfig`. The **compute dtype** is what a block is dequantized to for each
# matmul: bfloat16 on GPUs that have it in hardware (compute capability 8.0+: A100, H100, RTX 30xx/40xx),
# float16 on older GPUs (Colab's T4, V100), float32 on a CPU. (`torch.cuda.is_bf16_supported()` says True on a
# T4 because it counts slow emulation: ask for the compute capability.)

# %% tags=["nbval-ignore-output"]
import torch
from transformers import BitsAndBytesConfig

from course_utils.loading import resolve_device

device = resolve_device(DEVICE)
if device.type == "cuda":
    compute_dtype = torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16
else:
    compute_dtype = torch.float32

bnb_config = BitsAndBytesConfig(
    load_in_4bit=True,  # replace every nn.Linear (except lm_head) by a bitsandbytes Linear4bit
    bnb_4bit_quant_type="nf4",  # NormalFloat4: the 16 normal-quantile levels ("fp4": plain 4-bit floats)
    bnb_4bit_use_double_quant=True,  # quantize the absmax values too (8-bit, groups of 256): ~0.37 bit per weight saved
    bnb_4bit_compute_dtype=compute_dtype,  # dtype a block is dequantized to for each matmul
    bnb_4bit_quant_storage=torch.uint8,  # tensor type holding the packed pairs of 4-bit codes (FSDP wants the weights' dtype)
)
print(f"compute dtype on this {device.type}: {compute_dtype}")

# %% [markdown]
# The rest of the course uses `course_utils.quantization.bnb_4bit_config(device)`, which builds this config (the
# compute dtype chosen as above) so every notebook quantizes alike, and `bnb_8bit_config()` for LLM.int8 (one
# int8 per weight plus one float32 scale per output row).

# %%
from course_utils.notebook import expect
from course_utils.quantization import bnb_4bit_config, bnb_8bit_config

q4_config = bnb_4bit_config(device)
q8_config = bnb_8bit_config()
expect("bnb_4bit_config(device) builds the config written above", q4_config.to_dict() == bnb_config.to_dict())
expect("bnb_8bit_config() asks for 8-bit weights", q8_config.load_in_8bit and not q8_config.load_in_4bit)

# %% [markdown]
# ## 2. Weight bytes: unquantized vs 8-bit vs 4-bit
#
# `model_memory_breakdown` counts the tensors' real storage, quantization state (absmax, codes) included. Only
# the linear layers are quantized; embeddings and norms keep their dtype.

# %% tags=["nbval-ignore-output"]
import pandas as pd

from course_utils.architectures import decoder_linear_layers
from course_utils.loading import load_model, load_tokenizer
from course_utils.memory import model_memory_breakdown
from course_utils.quantization import nf4_weight_bytes

pd.set_option("display.max_colwidth", 160)  # show whole sentences in tables

tokenizer = load_tokenizer(MODEL)
loads = {"unquantized": {"dtype": DTYPE}}
if HAS_BNB:
    loads |= {"8-bit (LLM.int8)": {"quantization_config": q8_config}, "4-bit NF4": {"quantization_config": q4_config}}
models = {name: load_model(MODEL, device=device, **kw) for name, kw in loads.items()}
breakdowns = {name: model_memory_breakdown(m) for name, m in models.items()}
weights_mib = {name: b.weights_bytes / 2**20 for name, b in breakdowns.items()}
# (out, in) of every linear layer but lm_head: the layers bitsandbytes quantizes
shapes = [(layer.out_features, layer.in_features) for layer in decoder_linear_layers(models["unquantized"])]
n_linear = sum(o * i for o, i in shapes)
nf4_formula = sum(nf4_weight_bytes(*shape) for shape in shapes)
pd.DataFrame(
    {
        "weights (MiB)": weights_mib,
        "quant state (MiB)": {name: b.quant_state_bytes / 2**20 for name, b in breakdowns.items()},
        "by dtype (MiB)": {
            name: ", ".join(f"{k} {v / 2**20:.2f}" for k, v in b.weights_by_dtype.items())
            for name, b in breakdowns.items()
        },
    }
).round(3)

# %%
if HAS_BNB:
    q4 = breakdowns["4-bit NF4"]
    q4_linear = q4.weights_by_dtype.get("4-bit (uint8 packed)", 0) + q4.quant_state_bytes
expect(
    "the 4-bit model's weights take fewer bytes than the 8-bit model's, and those fewer than the unquantized model's",
    not HAS_BNB or weights_mib["4-bit NF4"] < weights_mib["8-bit (LLM.int8)"] < weights_mib["unquantized"],
)
expect("NF4 with double quantization stores a linear weight in 4.1 to 4.2 bits", 4.1 < 8 * nf4_formula / n_linear < 4.2)
expect(
    "the 4-bit linear layers measure within 5% of that formula (codes + absmax + nested scales)",
    not HAS_BNB or abs(q4_linear / nf4_formula - 1) < 0.05,
)

# %%
from course_utils.plotting import plot_bars

plot_bars(
    weights_mib, title=f"Weight memory of {MODEL} as loaded", ylabel="weights incl. quant. state (MiB)", fmt="{:.2f}"
)
plt.show()

# %% [markdown]
# For SmolLM2-1.7B (3.2 GiB of bf16 weights) the H200 reference (`data/reference/h200_smollm2-1.7b.json`)
# measured **1.02 GiB** after 4-bit loading. The quantized base still answers:

# %% tags=["nbval-ignore-output"]
# shown, not claimed: generated text (section 3 claims the 4-bit base's accuracy)
from course_utils.data import load_task
from course_utils.evaluation import evaluate_task, generate_answers

eval_ds = load_task("shout", "eval")
question = [[{"role": "user", "content": eval_ds[0]["messages"][-2]["content"]}]]
for name, m in models.items():
    print(f"{name:<18}", generate_answers(m, tokenizer, question, progress=False)[0])
del models

# %% [markdown]
# ### Pitfall: one evaluation can stop QLoRA from learning (recent CPUs)
#
# On CPUs with AVX-512-BF16 (AMD Zen 4 and later, Intel Sapphire Rapids and later), bitsandbytes 0.50 repacks a
# 4-bit weight into a CPU-only layout the first time the layer runs in eval mode without gradients (any
# evaluation or `generate`), and keeps it. From then on the gradient through the layer is wrong, so QLoRA
# silently learns nothing, and dequantizing or merging returns garbage.
#
# The fix: after loading, call `prevent_cpu_repack(model)` (or set `module.support_avx512bf16_for_cpu = False` on
# every `Linear4bit`); call it again before training or merging a model that was already evaluated. The course's
# `load_model`, `train_lora` and merge helpers do it for you. Below, plain transformers: one evaluation pass,
# then the gradient at the embeddings and the dequantized weights, against a model never evaluated. On other
# CPUs and on GPUs nothing is repacked, and both match.

# %% tags=["nbval-ignore-output"]
from transformers import AutoModelForCausalLM

from course_utils.loading import resolve_model_path
from course_utils.quantization import cpu_repack_hazard, prevent_cpu_repack, repacked_layers

hazard = device.type == "cpu" and cpu_repack_hazard()  # this CPU repacks 4-bit weights at eval time
if HAS_BNB:
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf
    from IPython.display import display

    device_map = {"": 0 if device.type == "cuda" else str(device)}
    batch = tokenizer(["The owl lives in the forest."], return_tensors="pt").to(device)

    def input_gradient(model):
        """Gradient of the loss w.r.t. the input embeddings: what trainable layers below the 4-bit ones receive."""
        model.train()
        embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
        model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["input_ids"]).loss.backward()
        return embeds.grad.float()

    def linear4bit_layers(model):
        return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]

    def dequantized(model):
        """All 4-bit weights, dequantized: what merging and dequantize_for_merge start from."""
        weights = [m.weight for m in linear4bit_layers(model)]
        return torch.cat([bnbf.dequantize_4bit(w.data, w.quant_state).float().flatten() for w in weights])

    def rel_error(x, reference):
        return float((x - reference).norm() / reference.norm())

    path = resolve_model_path(MODEL)
    never_evaluated = AutoModelForCausalLM.from_pretrained(path, quantization_config=bnb_config, device_map=device_map)
    g_reference, w_reference = input_gradient(never_evaluated), dequantized(never_evaluated)
    raw_4bit = AutoModelForCausalLM.from_pretrained(path, quantization_config=bnb_config, device_map=device_map)
    raw_4bit.eval()
    with torch.no_grad():
        raw_4bit(**batch)  # one evaluation pass, as evaluate_task() or generate() do
    n_4bit, n_repacked = len(linear4bit_layers(raw_4bit)), len(repacked_layers(raw_4bit))
    # no try/except: if training through the repacked layers crashes (4-bit layers with a bias), the notebook stops
    as_left = {
        "gradient": rel_error(input_gradient(raw_4bit), g_reference),
        "dequantized weights": rel_error(dequantized(raw_4bit), w_reference),
    }
    prevent_cpu_repack(raw_4bit)  # converts the repacked layers back, and switches the repack off
    fixed = {
        "gradient": rel_error(input_gradient(raw_4bit), g_reference),
        "dequantized weights": rel_error(dequantized(raw_4bit), w_reference),
    }
    left_packed = len(repacked_layers(raw_4bit))
    print(f"this CPU repacks: {hazard}; 4-bit layers repacked by one evaluation pass: {n_repacked} of {n_4bit}")
    display(
        pd.DataFrame({"as left": as_left, "after prevent_cpu_repack": fixed}).rename_axis(
            "relative error vs never evaluated"
        )
    )
    del never_evaluated, raw_4bit

# %% [markdown]
# The claims below hold on every machine: where the CPU repacks, they check the damage; elsewhere, that nothing
# was repacked and nothing moved.

# %%
expect(
    "where this CPU repacks, one evaluation pass repacks every 4-bit layer; elsewhere none",
    not HAS_BNB or n_repacked == (n_4bit if hazard else 0),
)
expect(
    "where this CPU repacks, the gradient as left is off by > 50%; elsewhere it matches within 5%",
    not HAS_BNB or (as_left["gradient"] > 0.5 if hazard else as_left["gradient"] < 0.05),
)
expect(
    "where this CPU repacks, the dequantized weights as left are off by > 50%; elsewhere they match within 1%",
    not HAS_BNB or (as_left["dequantized weights"] > 0.5 if hazard else as_left["dequantized weights"] < 0.01),
)
expect("after prevent_cpu_repack no 4-bit layer is left in the CPU-only layout", not HAS_BNB or left_packed == 0)
expect(
    "after prevent_cpu_repack the gradient and the dequantized weights match a never-evaluated model within 5%",
    not HAS_BNB or max(fixed.values()) < 0.05,
)

# %% [markdown]
# ## 3. `prepare_model_for_kbit_training`, then QLoRA
#
# `prepare_model_for_kbit_training` freezes every weight, **casts the non-quantized ones (embeddings, norms, an
# untied lm_head) to float32** for stable training, and by default turns on gradient checkpointing. We decide
# checkpointing explicitly: off here (a small model on a CPU; it would only make steps slower).

# %% tags=["nbval-ignore-output"]
from peft import prepare_model_for_kbit_training

if HAS_BNB:
    q_model = load_model(MODEL, device=device, quantization_config=q4_config)
    dtypes_before = sorted({str(p.dtype).replace("torch.", "") for p in q_model.parameters()})
    q_model = prepare_model_for_kbit_training(q_model, use_gradient_checkpointing=False)
    dtypes_after = sorted({str(p.dtype).replace("torch.", "") for p in q_model.parameters()})
    n_trainable = sum(p.requires_grad for p in q_model.parameters())
    # on a GPU the base loads in bf16, and you would see bfloat16 -> float32 for the non-quantized weights
    print("parameter dtypes before:", dtypes_before, "-> after:", dtypes_after, "| trainable:", n_trainable)

# %%
expect("after prepare_model_for_kbit_training nothing is trainable yet", not HAS_BNB or n_trainable == 0)
expect("the non-quantized weights are float32", not HAS_BNB or "float32" in dtypes_after)

# %% [markdown]
# The recipe comes from the model's size (`method="qlora"`); on `course-tiny` it is the toy's values. Accuracy
# is exact match on held-out `shout` questions, before and after training, on the same 4-bit base.

# %%
from course_utils.hyperparameters import resolve, suggest

hp = suggest(MODEL, "qlora")
lr, max_steps, batch_size = (
    resolve(LEARNING_RATE, hp.learning_rate),
    resolve(MAX_STEPS, hp.max_steps),
    resolve(BATCH_SIZE, hp.batch_size),
)
print(f"learning rate {lr:g}, {max_steps} steps, batch {batch_size}")

# %% tags=["nbval-ignore-output"]
from peft import LoraConfig

from course_utils.architectures import trainable_parameter_table
from course_utils.training import train_lora

if HAS_BNB:
    acc_before = evaluate_task(q_model, tokenizer, eval_ds, progress=False).accuracy
    lora_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    run = train_lora(
        q_model,
        tokenizer,
        load_task("shout", "train"),
        lora_config,
        max_steps=max_steps,
        learning_rate=lr,
        batch_size=batch_size,
        logging_steps=max(1, max_steps // 2),
    )
    qlora = run.model
    acc_after = evaluate_task(qlora, tokenizer, eval_ds, progress=False).accuracy
    losses = run.losses or [float("nan")]
    table = trainable_parameter_table(qlora)
    print(f"QLoRA training: {max_steps} steps in {run.seconds:.1f} s; loss {losses[0]:.3g} -> {losses[-1]:.3g}")
    print(f"trainable: {table.trainable:,} of {table.total:,} parameters ({table.trainable_pct:.2f}%)")
    print(f"shout accuracy on the 4-bit base: before {acc_before:.1%} -> after QLoRA {acc_after:.1%}")

# %%
expect(
    "QLoRA lifts shout accuracy by >= 50 points over the 4-bit base model",
    not HAS_BNB or acc_after - acc_before >= 0.50,
    hint="train longer (MAX_STEPS) or raise LEARNING_RATE; check that prevent_cpu_repack ran on this CPU",
)
expect("the training loss went down", not HAS_BNB or losses[-1] < losses[0], hint="lower LEARNING_RATE")
expect("QLoRA trains under 10% of the parameters", not HAS_BNB or table.trainable_pct < 10)

# %% [markdown]
# ## 4. Memory: full fine-tuning vs LoRA vs QLoRA, with and without checkpointing
#
# **Measured on a GPU** (this cell runs only with CUDA): a few AdamW steps on random tokens for each recipe, peak
# `torch.cuda.max_memory_allocated()`, like the H200 reference.

# %% tags=["nbval-ignore-output"]
# shown, not claimed: peaks measured only where there is a CUDA GPU; the planner's claims below hold everywhere
from course_utils.memory import measure_training_peak, requires_cuda

RECIPES = {  # name -> (method, gradient checkpointing); LoRA r=16 all-linear like the reference
    "fft_bfloat16": ("full", False),
    "lora_r16_all": ("lora", False),
    "lora_r16_all_gc": ("lora", True),
    "qlora4_r16_all": ("qlora", False),
    "qlora4_r16_all_gc": ("qlora", True),
}
gpu_measured = {}
if requires_cuda("Measuring peak GPU memory of full fine-tuning, LoRA and QLoRA"):
    for name, (method, gc_on) in RECIPES.items():
        try:
            gpu_measured[name] = measure_training_peak(
                MODEL, method, gradient_checkpointing=gc_on, batch_size=GPU_BATCH, seq_len=GPU_SEQ_LEN
            )["peak_GiB"]
        except torch.OutOfMemoryError:
            gpu_measured[name] = float("nan")
    display(pd.Series(gpu_measured, name="peak GiB, measured here"))

# %% [markdown]
# **From the planner, on any machine:** `estimate_training_memory(config, Recipe(...))` models each term
# (weights, gradients, AdamW state, saved activations, logits) from the architecture. We run it for SmolLM2-1.7B,
# beside the peaks measured on an H200 (`data/reference/`), and for the chosen model.

# %%
import json
from pathlib import Path

from course_utils.planner import REFERENCE_PATH, estimate_training_memory, reference_recipes

reference = json.loads(Path(REFERENCE_PATH).read_text())
shape = reference["shape"]
recipes = {k: v for k, v in reference_recipes(shape["batch"], shape["seq_len"]).items() if k in RECIPES}
config = load_model(MODEL, device="cpu").config  # any Llama-style config works
plan_chosen = {k: estimate_training_memory(config, r) for k, r in recipes.items()}
plan_17b = {k: estimate_training_memory("smollm2-1.7b", r) for k, r in recipes.items()}
h200 = {k: reference["train"][k]["peak_GiB"] for k in recipes}
pd.DataFrame(
    {
        "SmolLM2-1.7B, planner": {k: e.peak_gib for k, e in plan_17b.items()},
        "SmolLM2-1.7B, H200": h200,
        f"{MODEL}, planner": {k: e.peak_gib for k, e in plan_chosen.items()},
    }
).rename_axis(f"peak GiB, batch {shape['batch']} x {shape['seq_len']}").round(2)

# %%
expect(
    "the planner is within 10% of every H200 peak", all(abs(plan_17b[k].peak_gib / h200[k] - 1) < 0.10 for k in h200)
)
expect("on the H200, QLoRA without checkpointing peaked above LoRA", h200["qlora4_r16_all"] > h200["lora_r16_all"])
expect("the planner predicts the same order", plan_17b["qlora4_r16_all"].peak_gib > plan_17b["lora_r16_all"].peak_gib)
expect(
    "with checkpointing, QLoRA peaks below LoRA (H200 and planner)",
    h200["qlora4_r16_all_gc"] < h200["lora_r16_all_gc"]
    and plan_17b["qlora4_r16_all_gc"].peak_gib < plan_17b["lora_r16_all_gc"].peak_gib,
)

# %%
import numpy as np

names = list(recipes)
x = np.arange(len(names))
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
axes[0].bar(x - 0.2, [plan_17b[k].peak_gib for k in names], 0.4, label="planner", color="#4c72b0")
axes[0].bar(x + 0.2, [h200[k] for k in names], 0.4, label="measured on H200", color="#dd8452")
axes[0].set(xticks=x, title="SmolLM2-1.7B, batch 8 x 512: peak training memory", ylabel="peak memory (GiB)")
axes[0].set_xticklabels(names, rotation=20)
axes[0].legend()
axes[1].bar(x - 0.2, [plan_chosen[k].peak_gib * 1024 for k in names], 0.4, label="planner", color="#4c72b0")
if gpu_measured:
    axes[1].bar(
        x + 0.2, [gpu_measured.get(k, float("nan")) * 1024 for k in names], 0.4, label="measured here", color="#55a868"
    )
axes[1].set(xticks=x, title=f"{MODEL}, batch 8 x 512: peak training memory", ylabel="peak memory (MiB)")
axes[1].set_xticklabels(names, rotation=20)
axes[1].legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ### Why QLoRA without checkpointing needs *more* memory than LoRA
#
# On the H200, `qlora4_r16_all` peaked at **22.7 GiB** against **18.9 GiB** for `lora_r16_all`, although its
# weights are 1 GiB instead of 3.2 GiB. **Activations** dominate, and QLoRA's are bigger:
#
# 1. `prepare_model_for_kbit_training` casts the embeddings to float32, so the **residual stream is float32**
#    (4 bytes per value instead of 2) through all 24 layers;
# 2. bitsandbytes' 4-bit layers return their output in the **input's dtype** (float32 here), so the
#    activations saved for backward are float32 too, where bf16 LoRA under autocast saves bf16 ones.
#
# Gradient checkpointing keeps only each layer's input and recomputes the rest in backward: QLoRA drops to
# **4.6 GiB** (and its step time roughly doubles). The planner's breakdown, in GiB:

# %%
parts = {
    "weights": "weights_GiB",
    "grads + optimizer": "trainable_state_GiB",
    "activations": "activations_GiB",
    "logits / loss": "logits_GiB",
}
show = ["lora_r16_all", "qlora4_r16_all", "qlora4_r16_all_gc"]
breakdown = pd.DataFrame({k: {row: plan_17b[k].to_dict()[key] for row, key in parts.items()} for k in show})
breakdown.loc["peak (planner)"] = [plan_17b[k].peak_gib for k in show]
breakdown.loc["peak (H200)"] = [h200[k] for k in show]
breakdown.loc["activations of one layer"] = [plan_17b[k].details["activations per layer"] / 2**30 for k in show]
breakdown.round(2)

# %% [markdown]
# ## 5. Merging a QLoRA adapter
#
# The adapter was trained against the *dequantized* 4-bit weights. The right merge reproduces exactly that:
# dequantize the base (bf16 on a GPU, float32 on a CPU), attach the adapter, merge (`dequantize_for_merge`).
# Merging into the 4-bit weights re-quantizes `W + ΔW` instead. We save the adapter, capture the QLoRA model's
# outputs, then validate both merges against them.

# %%
from course_utils.architectures import bitsandbytes_support
from course_utils.merging import (
    QuantizedMergeError,
    dequantize_for_merge,
    effect_retained,
    merge_with_retention,
    quantization_of,
    safe_merge,
    save_adapter,
)
from course_utils.validation import capture_reference, compare_to_reference

from course_utils.paths import outputs_dir

ADAPTER_DIR = outputs_dir("06-shout-qlora")  # outputs/ beside the notebook (Drive on Colab); a re-run replaces it
if HAS_BNB:
    save_adapter(qlora, ADAPTER_DIR, tokenizer=tokenizer, overwrite=True)
    val_ds = eval_ds.select(range(N_VALIDATE))
    ref = capture_reference(qlora, val_ds, tokenizer)
    with qlora.disable_adapter():
        ref_base = capture_reference(qlora, val_ds, tokenizer)
    if quantization_of(qlora) is None:  # nothing was quantized (Falcon): safe_merge would merge and consume qlora
        print(bitsandbytes_support(qlora.get_base_model()))
    else:
        try:
            safe_merge(qlora)  # refuses to merge into 4-bit weights, and says what to do instead
        except QuantizedMergeError as err:
            print(type(err).__name__ + ":", str(err).splitlines()[0][:150] + " ...")

# %% tags=["nbval-ignore-output"]
if HAS_BNB:
    deq_dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    fresh = load_model(MODEL, device=device, quantization_config=q4_config)
    merged_deq, _ = dequantize_for_merge(fresh, adapter=ADAPTER_DIR, dtype=deq_dtype, verbose=False)
    report_deq = compare_to_reference(merged_deq, ref, title="dequantize, then merge vs QLoRA model")
    acc_deq = evaluate_task(merged_deq, tokenizer, eval_ds, progress=False).accuracy
    kept_deq = effect_retained(ref_base, ref, capture_reference(merged_deq, val_ds, tokenizer))
    del merged_deq, fresh

    merged_4bit, kept = merge_with_retention(qlora)  # what merge_and_unload() on the 4-bit base does
    report_4bit = compare_to_reference(merged_4bit, ref, title="merged into 4-bit vs QLoRA model")
    acc_4bit = evaluate_task(merged_4bit, tokenizer, eval_ds, progress=False).accuracy
    kept_4bit = effect_retained(ref_base, ref, capture_reference(merged_4bit, val_ds, tokenizer))
    print(
        f"into 4-bit: the stored change differs from the LoRA delta by {kept.rel_error:.0%}; "
        f"{kept.changed_fraction:.0%} of all stored weights changed"
    )
    display(
        pd.DataFrame(
            {
                "verdict": [
                    "(reference)",
                    "PASS" if report_deq.passed else "FAIL",
                    "PASS" if report_4bit.passed else "FAIL",
                ],
                "mean KL": [0.0, report_deq["mean_kl"].value, report_4bit["mean_kl"].value],
                "effect kept": [1.0, kept_deq, kept_4bit],
                "accuracy": [acc_after, acc_deq, acc_4bit],
            },
            index=[
                "QLoRA model (adapter on 4-bit base)",
                f"dequantized to {deq_dtype}, then merged",
                "merged into the 4-bit weights",
            ],
        ).round(4)
    )

# %%
expect("dequantize, then merge passes validation against the QLoRA model", not HAS_BNB or report_deq.passed)
expect("dequantize, then merge keeps >= 95% of the adapter's effect on the logits", not HAS_BNB or kept_deq >= 0.95)
expect("merging into the 4-bit weights keeps less of it", not HAS_BNB or kept_4bit < kept_deq)
expect(
    "merging into the 4-bit weights changes >= 50% of all stored weights", not HAS_BNB or kept.changed_fraction >= 0.5
)

# %% [markdown]
# Dequantize-then-merge gives a normal (unquantized) model that matches the QLoRA model; you can quantize *that*
# again for serving, and validate again. Merging into the 4-bit weights changes nearly every stored weight (each
# block is re-quantized with a new scale) and loses part of the adapter's effect.
#
# ## What we measured

# %% tags=["nbval-ignore-output"]
# shown, not claimed: a summary of the numbers claimed above
from course_utils.notebook import record_metrics

summary = {"weights: " + " / ".join(weights_mib) + " (MiB)": " / ".join(f"{v:.2f}" for v in weights_mib.values())}
if HAS_BNB:
    summary |= {
        "shout accuracy on the 4-bit base: before -> after QLoRA": f"{acc_before:.1%} -> {acc_after:.1%}",
        "dequantize, then merge: verdict / effect kept": f"{'PASS' if report_deq.passed else 'FAIL'} / {kept_deq:.0%}",
        "merge into 4-bit: verdict / effect kept": f"{'PASS' if report_4bit.passed else 'FAIL'} / {kept_4bit:.0%}",
    }
    record_metrics(
        accuracy_before=acc_before, accuracy_after=acc_after, train_seconds=run.seconds, weights_MiB=weights_mib
    )
summary["SmolLM2-1.7B peak, LoRA / QLoRA / QLoRA + gc, H200 (GiB)"] = " / ".join(f"{h200[k]:.1f}" for k in show)
summary["same, planner (GiB)"] = " / ".join(f"{plan_17b[k].peak_gib:.1f}" for k in show)
pd.DataFrame({"result": summary}).rename_axis("measurement")

# %% [markdown]
# ## Exercises
#
# **1.** How many bytes does bitsandbytes need for a 2048 x 8192 weight matrix (one SmolLM2-1.7B MLP projection)
# in NF4 with double quantization? Blocks of 64 weights, each with an absmax quantized to 8 bits; those absmax
# values in nested blocks of 256, each with a float32 absmax; plus one float32 offset. (Ignore the ~1 KB code tables.)

# %%
from course_utils.checks.quantization import GC_CHOICES, check_gc_tradeoff, check_nf4_bytes

answer = None  # a number of bytes
check_nf4_bytes(answer)

# %% [markdown]
# ### Solution (skip if you want to try first)

# %%
n = 2048 * 8192
answer = n // 2 + n // 64 + 4 * (n // 64 // 256) + 4  # packed + uint8 absmax + fp32 nested absmax + offset
print(f"{answer:,} bytes")
check_nf4_bytes(answer)

# %% [markdown]
# **2.** What does gradient checkpointing trade? Pick a letter.

# %%
for letter, text in GC_CHOICES.items():
    print(f"{letter}) {text}")
answer = None  # "a", "b", "c" or "d"
check_gc_tradeoff(answer)

# %% [markdown]
# ### Solution (skip if you want to try first)

# %%
answer = "a"
check_gc_tradeoff(answer)
