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
# **4 bits** (NF4). The tutorial this course grew from loads a model with `load_in_8bit=True, peft_config=...`
# in `from_pretrained`: with transformers 5 both arguments fail (shown below, run in this notebook). Here we do it
# the current way and measure what it buys.
#
# **You will learn to**
# - build a `BitsAndBytesConfig` for 4-bit NF4 yourself, every argument explained, then with the course's helper;
# - measure the weight bytes of float32 vs 8-bit vs 4-bit models, absmax overhead included;
# - prepare a quantized model with `prepare_model_for_kbit_training` and train a QLoRA adapter (accuracy before/after);
# - read the memory of full fine-tuning vs LoRA vs QLoRA, with and without gradient checkpointing (GPU measurement,
#   the planner, and the H200 reference), and why QLoRA *without* checkpointing can need more memory than LoRA;
# - merge a QLoRA adapter properly (dequantize, then merge) and measure what merging into the 4-bit weights loses;
# - avoid a pitfall of recent CPUs: bitsandbytes repacks 4-bit weights at the first evaluation, which silently breaks
#   QLoRA training and merging unless you undo it.
#
# **Time:** about 1-2 minutes on a CPU with `course-tiny` (bitsandbytes 0.50 runs 4-bit and 8-bit layers on the CPU);
# a few minutes on a Colab GPU, where the memory measurements run too.

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
DTYPE = "auto"  # dtype of the unquantized comparison model ("auto": float32 on CPU, bf16 on GPU)
DEVICE = "auto"
MAX_STEPS = 100  # QLoRA training steps (all-linear, r=8)
SEED = 0
N_VALIDATE = 16  # eval conversations the merge validation runs on
GPU_BATCH, GPU_SEQ_LEN = 8, 512  # batch shape of the GPU memory measurement (the H200 reference used 8 x 512)

# %% tags=["nbval-ignore-output"]
info = setup(SEED, model=MODEL)  # quiets bitsandbytes' logger BEFORE peft imports it

# %% [markdown]
# ## 1. Quantization configs
#
# QLoRA's recipe is one `BitsAndBytesConfig`. NF4 stores each weight as one of 16 levels spaced like a normal
# distribution, scaled per block of 64 weights by that block's absmax; double quantization stores those absmax
# values in 8 bits too. The **compute dtype** is what each block is dequantized to for the matmul: bfloat16 on a
# GPU that has it in hardware (compute capability 8.0 and newer: A100, H100, RTX 30xx/40xx), float16 on older
# GPUs (the T4 of Colab's free tier, the V100), **float32 on a CPU**, where bf16 matmuls crawl without
# AVX-512-BF16/AMX. (`torch.cuda.is_bf16_supported()` says True on a T4 because it counts slow emulation: ask
# for the compute capability instead.)

# %%
import json
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from peft import LoraConfig, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from course_utils.architectures import decoder_linear_layers, trainable_parameter_table
from course_utils.data import load_task
from course_utils.evaluation import evaluate_task
from course_utils.loading import load_model, load_tokenizer, resolve_device, resolve_model_path
from course_utils.memory import model_memory_breakdown
from course_utils.notebook import expect

device = resolve_device(DEVICE)
if device.type == "cuda":
    compute_dtype = torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16
else:
    compute_dtype = torch.float32

bnb_config = BitsAndBytesConfig(
    load_in_4bit=True,  # replace every nn.Linear (except lm_head) by a bitsandbytes Linear4bit
    bnb_4bit_quant_type="nf4",  # NormalFloat4, QLoRA's 16 levels for normally distributed weights ("fp4": plain 4-bit floats)
    bnb_4bit_use_double_quant=True,  # quantize the per-block absmax constants too (8-bit, blocks of 256): ~0.37 bit per weight saved
    bnb_4bit_compute_dtype=compute_dtype,  # dtype a block is dequantized to for each matmul; also the dtype of the layer's output math
    bnb_4bit_quant_storage=torch.uint8,  # tensor type that holds the packed pairs of 4-bit values (FSDP wants the weights' dtype here)
)
print(
    "4-bit:",
    bnb_config.bnb_4bit_quant_type,
    "| double quant:",
    bnb_config.bnb_4bit_use_double_quant,
    "| compute dtype:",
    str(bnb_config.bnb_4bit_compute_dtype).replace("torch.", ""),
    f"(device: {device.type})",
)

# %% [markdown]
# The rest of the course uses `course_utils.quantization.bnb_4bit_config(device)`, which builds this same config
# (the compute dtype chosen as above) so that every notebook and `course-utils` command quantizes alike, and
# `bnb_8bit_config()` for LLM.int8 (`BitsAndBytesConfig(load_in_8bit=True)`: one int8 per weight plus one
# float32 scale per output row).

# %%
from course_utils.quantization import bnb_4bit_config, bnb_8bit_config, int8_weight_bytes, nf4_weight_bytes

q4_config = bnb_4bit_config(device)
q8_config = bnb_8bit_config()
expect("bnb_4bit_config(device) builds the config written above", q4_config.to_dict() == bnb_config.to_dict())
print("8-bit:", q8_config.load_in_8bit)

# %% [markdown]
# The tutorial's way fails in transformers 5 (`load_in_8bit`/`load_in_4bit`/`peft_config` are no longer
# `from_pretrained` arguments):

# %%
try:
    AutoModelForCausalLM.from_pretrained(resolve_model_path(MODEL), load_in_8bit=True)
except (TypeError, ValueError) as err:
    print(type(err).__name__ + ":", str(err).splitlines()[0][:160])

# %% [markdown]
# ## 2. Weight bytes: float32 vs 8-bit vs 4-bit
#
# `model_memory_breakdown` counts the tensors' real storage, the quantization state (absmax, codes) included.
# Only the linear layers are quantized; embeddings and norms keep their dtype.

# %%
tokenizer = load_tokenizer(MODEL)
models = {
    "float32": load_model(MODEL, dtype="float32", device=device),
    "8-bit (LLM.int8)": load_model(MODEL, device=device, quantization_config=q8_config),
    "4-bit NF4 + double quant": load_model(MODEL, device=device, quantization_config=q4_config),
}
weights_mib = {}
for name, m in models.items():
    b = model_memory_breakdown(m)
    weights_mib[name] = b.weights_bytes / 2**20
    parts = ", ".join(f"{k} {v / 2**20:.2f}" for k, v in b.weights_by_dtype.items())
    print(f"{name:<26} {weights_mib[name]:7.2f} MiB  ({parts}; quant state {b.quant_state_bytes / 2**20:.3f}) MiB")

# the same numbers from the formulas, for the linear layers only
# (out, in) of every linear layer but lm_head: nn.Linear, or GPT-2's Conv1D whose weight is stored (in, out)
shapes = [(layer.out_features, layer.in_features) for layer in decoder_linear_layers(models["float32"])]
n_lin = sum(o * i for o, i in shapes)
print(
    f"linear weights: {n_lin:,} -> float32 {4 * n_lin / 2**20:.2f} MiB, int8 "
    f"{sum(int8_weight_bytes(*shape) for shape in shapes) / 2**20:.2f} MiB, NF4 "
    f"{sum(nf4_weight_bytes(*shape) for shape in shapes) / 2**20:.2f} MiB "
    f"({8 * sum(nf4_weight_bytes(*shape) for shape in shapes) / n_lin:.3f} bits per weight)"
)

# %%
from course_utils.plotting import plot_bars

plot_bars(
    weights_mib, title=f"Weight memory of {MODEL} as loaded", ylabel="weights incl. quant. state (MiB)", fmt="{:.2f}"
)
plt.show()

# %% [markdown]
# On `course-tiny` the embeddings (vocabulary x hidden, not quantized) are a large share of all weights, so the
# total shrinks less than the linear layers do. For SmolLM2-1.7B (weights 3.2 GiB in bf16) the H200 reference
# (`data/reference/h200_smollm2-1.7b.json`) measured **1.02 GiB** after 4-bit loading. Quality check: the
# quantized base still knows its facts.

# %% tags=["nbval-ignore-output"]
eval_ds = load_task("shout", "eval")
from course_utils.evaluation import generate_answers

q = [[{"role": "user", "content": eval_ds[0]["messages"][-2]["content"]}]]
for name, m in models.items():
    print(f"{name:<26}", generate_answers(m, tokenizer, q, progress=False)[0])
del models

# %% [markdown]
# ### Pitfall: one evaluation can stop QLoRA from learning (recent CPUs)
#
# On CPUs with AVX-512-BF16 (AMD Zen 4 and later, Intel Sapphire Rapids and later), bitsandbytes 0.50 repacks a
# 4-bit weight into a CPU-only layout the first time the layer runs in eval mode without gradients (any
# evaluation or `generate`), and keeps it; from then on the gradient through the layer is wrong, so QLoRA
# silently learns nothing (on an AMD EPYC, this notebook's QLoRA went 0% -> 0% instead of 0% -> 85% before
# the course fixed it; `benchmarks/cpu_repack.py` measures it), and dequantizing or merging returns garbage.
# Your own code hits this: after loading a 4-bit model, call `prevent_cpu_repack(model)` (or set
# `module.support_avx512bf16_for_cpu = False` on every `Linear4bit`), and call it again before training or
# merging a model that was already evaluated; `load_model`, `train_lora` and the merge helpers do it for you.
# The cell below loads the model with plain transformers, runs one evaluation pass and compares the gradient
# that reaches the embeddings with that of a model that was never evaluated.

# %% tags=["nbval-ignore-output"]
from course_utils.quantization import cpu_repack_hazard, prevent_cpu_repack, repacked_layers

device_map = {"": 0 if device.type == "cuda" else str(device)}
batch = tokenizer(["The owl lives in the forest."], return_tensors="pt").to(device)


def input_gradient(model):
    """Gradient of the loss w.r.t. the input embeddings: what trainable layers below the 4-bit ones receive."""
    model.train()
    embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
    model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["input_ids"]).loss.backward()
    return embeds.grad.float()


never_evaluated = AutoModelForCausalLM.from_pretrained(
    resolve_model_path(MODEL), quantization_config=bnb_config, device_map=device_map
)
g_reference = input_gradient(never_evaluated)
raw_4bit = AutoModelForCausalLM.from_pretrained(
    resolve_model_path(MODEL), quantization_config=bnb_config, device_map=device_map
)
raw_4bit.eval()
with torch.no_grad():
    raw_4bit(**batch)  # one evaluation pass, as evaluate_task() or generate() do
n_repacked = len(repacked_layers(raw_4bit))
try:
    g_repacked = input_gradient(raw_4bit)
except RuntimeError as err:  # 4-bit layers with a bias (GPT-2, OPT, NeoX...) fail outright instead of silently
    g_repacked = None
    print(f"training through the repacked layers fails: {type(err).__name__}: {str(err).splitlines()[0][:90]}")
prevent_cpu_repack(raw_4bit)  # converts the repacked layers back, and switches the repack off
g_fixed = input_gradient(raw_4bit)


def rel_error(g):
    return float("nan") if g is None else float((g - g_reference).norm() / g_reference.norm())


print(f"this CPU has AVX-512-BF16: {cpu_repack_hazard()}; 4-bit layers repacked by one evaluation pass: {n_repacked}")
print(
    f"gradient at the embeddings vs a never-evaluated model: relative error {rel_error(g_repacked):.3g} as left, "
    f"{rel_error(g_fixed):.3g} after prevent_cpu_repack"
)

# %%
expect("after prevent_cpu_repack no 4-bit layer is left in the CPU-only layout", not repacked_layers(raw_4bit))
expect("the gradient then matches a never-evaluated model's within 5%", rel_error(g_fixed) < 0.05)
del never_evaluated, raw_4bit

# %% [markdown]
# ## 3. `prepare_model_for_kbit_training`, then QLoRA
#
# `prepare_model_for_kbit_training` freezes every weight, **casts the non-quantized ones (embeddings, norms, an
# untied lm_head) to float32** for stable training, and by default turns on gradient checkpointing
# (`use_gradient_checkpointing=True`). We decide checkpointing explicitly: off here (small model, CPU; it
# would only make steps slower). The old `prepare_model_for_int8_training` is gone.

# %%
try:
    from peft import prepare_model_for_int8_training  # noqa: F401  (the name in the tutorial this course grew from)
except ImportError as err:
    print(type(err).__name__ + ":", str(err).splitlines()[0].split(" (")[0])

q_model = load_model(MODEL, device=device, quantization_config=q4_config)
dtypes_before = sorted({str(p.dtype).replace("torch.", "") for p in q_model.parameters()})
q_model = prepare_model_for_kbit_training(q_model, use_gradient_checkpointing=False)
dtypes_after = sorted({str(p.dtype).replace("torch.", "") for p in q_model.parameters()})
# on a GPU the base loads in bf16, and you would see bfloat16 -> float32 for the non-quantized weights
print(
    "parameter dtypes before:",
    dtypes_before,
    "-> after:",
    dtypes_after,
    "| trainable:",
    sum(p.requires_grad for p in q_model.parameters()),
)

# %% tags=["nbval-ignore-output"]
from course_utils.training import train_lora

train_ds = load_task("shout", "train")
acc_before = evaluate_task(q_model, tokenizer, eval_ds, progress=False).accuracy
lora_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
run = train_lora(q_model, tokenizer, train_ds, lora_config, max_steps=MAX_STEPS, logging_steps=50)
qlora = run.model
print(f"QLoRA training: {MAX_STEPS} steps in {run.seconds:.1f} s")

# %% tags=["nbval-ignore-output"]
acc_after = evaluate_task(qlora, tokenizer, eval_ds, progress=False).accuracy
losses = run.losses or [float("nan")]  # one entry per logging_steps=50 steps
print(f"training loss {losses[0]:.3g} -> {losses[-1]:.3g}")
print(f"shout accuracy on the 4-bit base: before {acc_before:.1%} -> after QLoRA {acc_after:.1%}")

# %%
expect("the 4-bit base alone answers <= 10% of the shout questions", acc_before <= 0.10)
expect("QLoRA lifts shout accuracy by >= 50 points", acc_after - acc_before >= 0.50)
expect("the training loss went down", losses[-1] < losses[0])
table = trainable_parameter_table(qlora)
print(f"trainable: {table.trainable:,} of {table.total:,} parameters ({table.trainable_pct:.2f}%)")

# %% [markdown]
# ## 4. Memory: full fine-tuning vs LoRA vs QLoRA, with and without gradient checkpointing
#
# **Measured on a GPU** (this cell runs only with CUDA): a few AdamW steps on random tokens for each recipe,
# peak `torch.cuda.max_memory_allocated()`, like the H200 reference.

# %%
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
        print(f"{name:<20} peak {gpu_measured[name]:.3f} GiB")

# %% [markdown]
# **From the planner, on any machine:** `estimate_training_memory(config, Recipe(...))` models each term
# (weights, gradients, AdamW state, saved activations, logits) from the architecture numbers. We run it for the
# chosen model and for SmolLM2-1.7B, beside the peaks measured on an H200 (`data/reference/`).

# %%
from course_utils.planner import REFERENCE_PATH, estimate_training_memory, reference_recipes

reference = json.loads(Path(REFERENCE_PATH).read_text())
shape = reference["shape"]
recipes = {k: v for k, v in reference_recipes(shape["batch"], shape["seq_len"]).items() if k in RECIPES}
config = load_model(MODEL, device="cpu").config  # any Llama-style config works
plan_chosen = {k: estimate_training_memory(config, r) for k, r in recipes.items()}
plan_17b = {k: estimate_training_memory("smollm2-1.7b", r) for k, r in recipes.items()}
h200 = {k: reference["train"][k]["peak_GiB"] for k in recipes}
print(f"batch {shape['batch']} x {shape['seq_len']} tokens; peak GiB")
print(f"{'recipe':<20} {MODEL + ' (planner)':>24} {'GPU measured':>12} | {'1.7B (planner)':>14} {'1.7B H200':>10}")
for k in recipes:
    gpu = f"{gpu_measured[k]:.3f}" if k in gpu_measured else "-"
    print(f"{k:<20} {plan_chosen[k].peak_gib:>24.3f} {gpu:>12} | {plan_17b[k].peak_gib:>14.2f} {h200[k]:>10.2f}")

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
# ### Why QLoRA without checkpointing needs *more* memory than bf16 LoRA here
#
# In the H200 reference (`data/reference/h200_smollm2-1.7b.json`: SmolLM2-1.7B, batch 8 x 512, LoRA r=16 on all
# linear layers), `qlora4_r16_all` peaked at **22.7 GiB** vs **18.9 GiB** for `lora_r16_all`, although its weights
# are 1 GiB instead of 3.2 GiB. The weights are not what dominates: **activations** are. Two mechanisms:
#
# 1. `prepare_model_for_kbit_training` casts the embeddings to float32, so the **residual stream is float32**
#    (4 bytes per value instead of 2) through all 24 layers;
# 2. bitsandbytes' 4-bit layers return their output in the **input's dtype** (float32 here), so the
#    activations saved for backward are float32 too, while bf16 LoRA under autocast saves bf16 ones.
#
# Gradient checkpointing keeps only each layer's input and recomputes the rest in backward: QLoRA drops to
# **4.6 GiB** (and its step time roughly doubles). The planner's breakdown shows where the bytes go:

# %%
rows = {
    "weights": "weights_GiB",
    "trainable state (grads + optimizer)": "trainable_state_GiB",
    "activations": "activations_GiB",
    "logits / loss": "logits_GiB",
}
show = ["lora_r16_all", "qlora4_r16_all", "qlora4_r16_all_gc"]
print(f"SmolLM2-1.7B, GiB at the peak {'':<6}" + "".join(f"{k:>19}" for k in show))
for row, key in rows.items():
    vals = [plan_17b[k].to_dict()[key] for k in show]
    print(f"{row:<36}" + "".join(f"{v:>19.2f}" for v in vals))
print(f"{'peak (planner)':<36}" + "".join(f"{plan_17b[k].peak_gib:>19.2f}" for k in show))
print(f"{'peak (H200 measured)':<36}" + "".join(f"{h200[k]:>19.2f}" for k in show))
print(
    f"{'activations of ONE decoder layer':<36}"
    + "".join(f"{plan_17b[k].details['activations per layer'] / 2**30:>19.2f}" for k in show)
)

# %% [markdown]
# ## 5. Merging a QLoRA adapter
#
# The adapter was trained against the *dequantized* 4-bit weights. The right merge reproduces exactly that:
# dequantize the base (bf16 on a GPU, float32 on a CPU), attach the adapter, merge
# (`dequantize_for_merge`). Merging into the 4-bit weights re-quantizes `W + ΔW` instead. We capture the QLoRA
# model's outputs first, then validate both.

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

OUT = Path(tempfile.mkdtemp(prefix="nb06-"))
adapter_dir = save_adapter(qlora, OUT / "qlora-adapter", tokenizer=tokenizer)
val_ds = eval_ds.select(range(N_VALIDATE))
ref = capture_reference(qlora, val_ds, tokenizer)
with qlora.disable_adapter():
    ref_base = capture_reference(qlora, val_ds, tokenizer)
if quantization_of(qlora) is None:  # nothing was quantized (Falcon): safe_merge would merge and consume qlora
    print(bitsandbytes_support(qlora.get_base_model()))
else:
    try:
        safe_merge(qlora)
    except QuantizedMergeError as err:
        print(type(err).__name__ + ":", str(err).splitlines()[0][:150] + " ...")

# %% tags=["nbval-ignore-output"]
deq_dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
fresh = load_model(MODEL, device=device, quantization_config=q4_config)
merged_deq, info = dequantize_for_merge(fresh, adapter=adapter_dir, dtype=deq_dtype, verbose=False)
report_deq = compare_to_reference(merged_deq, ref, title="dequantize, then merge vs QLoRA model")
acc_deq = evaluate_task(merged_deq, tokenizer, eval_ds, progress=False).accuracy
kept_deq = effect_retained(ref_base, ref, capture_reference(merged_deq, val_ds, tokenizer))
del merged_deq, fresh

merged_4bit, kept = merge_with_retention(qlora)  # what merge_and_unload() on the 4-bit base does
report_4bit = compare_to_reference(merged_4bit, ref, title="merged into 4-bit vs QLoRA model")
acc_4bit = evaluate_task(merged_4bit, tokenizer, eval_ds, progress=False).accuracy
kept_4bit = effect_retained(ref_base, ref, capture_reference(merged_4bit, val_ds, tokenizer))


def g2(v):
    if v < 1e-9:
        return "<1e-9"  # rounding noise: the exact digits depend on the CPU
    return f"{v:.1e}" if v < 0.01 else f"{v:.2g}"


print(f"{'path':<36} {'verdict':>8} {'mean KL':>8} {'effect kept':>12} {'accuracy':>9}")
print(f"{'QLoRA model (adapter, 4-bit base)':<36} {'(ref)':>8} {'-':>8} {'100%':>12} {acc_after:>9.1%}")
print(
    f"{'dequantized to ' + str(deq_dtype).replace('torch.', '') + ', then merged':<36} "
    f"{'PASS' if report_deq.passed else 'FAIL':>8} {g2(report_deq['mean_kl'].value):>8} {kept_deq:>12.0%} {acc_deq:>9.1%}"
)
print(
    f"{'merged into the 4-bit weights':<36} {'PASS' if report_4bit.passed else 'FAIL':>8} "
    f"{g2(report_4bit['mean_kl'].value):>8} {kept_4bit:>12.0%} {acc_4bit:>9.1%}"
)
print(
    f"into 4-bit: the stored change differs from the LoRA delta by {kept.rel_error:.0%}; "
    f"{kept.changed_fraction:.0%} of all stored weights changed"
)

# %%
expect("dequantize, then merge passes validation against the QLoRA model", report_deq.passed)
expect("dequantize, then merge keeps >= 95% of the adapter's effect on the logits", kept_deq >= 0.95)
expect("merging into the 4-bit weights keeps less of it", kept_4bit < kept_deq)
expect("merging into the 4-bit weights changes >= 50% of all stored weights", kept.changed_fraction >= 0.5)

# %% [markdown]
# Dequantize-then-merge gives a normal (unquantized) model that matches the QLoRA model it was validated
# against; you can re-quantize *that* for serving and validate again. Merging into the 4-bit weights changes
# nearly every stored weight (each block is re-quantized with a new scale) and loses part of the adapter's
# effect; how much depends on the size of the delta relative to one 4-bit step.
#
# ## What we measured
#
# Numbers from training and merging differ in their last digits between CPU families, so the table is shown but
# not compared; the claims above are what the course's checks compare.

# %% tags=["nbval-ignore-output"]
from IPython.display import Markdown, display

rows = [
    ("weights: float32 / 8-bit / 4-bit (MiB)", " / ".join(f"{v:.2f}" for v in weights_mib.values())),
    ("shout accuracy on the 4-bit base: before -> after QLoRA", f"{acc_before:.1%} -> {acc_after:.1%}"),
    (
        "SmolLM2-1.7B peak, LoRA / QLoRA / QLoRA+gc, H200 (GiB)",
        f"{h200['lora_r16_all']:.1f} / {h200['qlora4_r16_all']:.1f} / {h200['qlora4_r16_all_gc']:.1f}",
    ),
    (
        "same, planner (GiB)",
        " / ".join(f"{plan_17b[k].peak_gib:.1f}" for k in ("lora_r16_all", "qlora4_r16_all", "qlora4_r16_all_gc")),
    ),
    ("dequantize, then merge: verdict / effect kept", f"{'PASS' if report_deq.passed else 'FAIL'} / {kept_deq:.0%}"),
    ("merge into 4-bit: verdict / effect kept", f"{'PASS' if report_4bit.passed else 'FAIL'} / {kept_4bit:.0%}"),
]
display(Markdown("| measurement | result |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)))

# %% tags=["nbval-ignore-output"]
from course_utils.notebook import record_metrics

record_metrics(
    accuracy_before=acc_before,
    accuracy_after=acc_after,
    train_seconds=run.seconds,
    weights_MiB=weights_mib,
    effect_kept_dequant=kept_deq,
    effect_kept_4bit=kept_4bit,
    gpu_peak_GiB=gpu_measured or None,
)
print("metrics recorded")

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
