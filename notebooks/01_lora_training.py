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
# # 01 · LoRA: the idea, the layer, the training
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/peft-course/peft-course/blob/main/notebooks/01_lora_training.ipynb)
#
# **What you will learn**
# - why parameter-efficient fine-tuning: how many parameters and how much GPU memory LoRA saves, *measured* for
#   this model and planned for SmolLM2-1.7B (the tutorial we started from says "about 90%" and "3x": we check);
# - what a LoRA layer computes, by writing one (`W x + (alpha/r) · B A x`) and matching peft's layer to the last digit;
# - `LoraConfig`, argument by argument, `get_peft_model` and where the trainable parameters sit;
# - training an adapter with the plain `transformers.Trainer` (loss on the answer only), with memory tracked;
# - how accuracy depends on the rank and on which layers you adapt.
#
# **Time:** about 1-2 minutes on a laptop CPU with the default model (`course-tiny`); a few minutes on a Colab GPU
# with `MODEL = "smollm2-135m"`.

# %% tags=["nbval-ignore-output"]
# Set-up: on Colab, install the course first (elsewhere the README's `pip install` did it).
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("google.colab"):
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "git+https://github.com/peft-course/peft-course"], check=True)

from course_utils.loading import model_from_env
from course_utils.notebook import setup

# %% tags=["parameters"]
MODEL = model_from_env("course-tiny")  # or "smollm2-135m", any hub id
DTYPE = "auto"        # float32 on CPU, bfloat16 on a recent GPU
DEVICE = "auto"       # cuda > mps > cpu
MAX_STEPS = 100       # training steps of the main run
SEED = 0
SWEEP_RANKS = [1, 2, 8]  # ranks of the small experiment
SWEEP_STEPS = 60      # steps of each experiment run
SWEEP_BATCH = 8       # its batch size (smaller than the main run's: the sweep has to be quick)

# %% tags=["nbval-ignore-output"]
info = setup(SEED, model=MODEL)

# %% [markdown]
# ## 1. Why parameter-efficient fine-tuning, in numbers
#
# Full fine-tuning updates every weight: you need gradients and optimizer state for all of them, and every task
# gets its own full copy of the model. LoRA freezes the model and trains two small matrices per adapted layer.
# The tutorial this course grew from claims LoRA "typically reduces trainable parameters by about 90%" and cuts
# "GPU memory requirements by 3x". Let's count, for the model we use and for SmolLM2-1.7B (its shipped config:
# nothing is downloaded), with the course's memory planner (`course_utils.planner`, checked against an H200).

# %%
import torch

from course_utils.architectures import attention_projection_names
from course_utils.data import load_task
from course_utils.loading import load_model, load_tokenizer
from course_utils.planner import Recipe, estimate_training_memory

tokenizer = load_tokenizer(MODEL)
model = load_model(MODEL, dtype=DTYPE, device=DEVICE)
ATTENTION = attention_projection_names(model)  # read from the model, e.g. ['q_proj', 'k_proj', 'v_proj', 'o_proj']
n_params = sum(p.numel() for p in model.parameters())
print(f"{MODEL}: {n_params:,} parameters; attention projections: {ATTENTION}")

# %%
# The same training step, full fine-tuning vs LoRA (the tutorial's r=16 on the attention projections).
full = Recipe(method="full", dtype="bfloat16", batch_size=8, seq_len=512)
lora = Recipe(method="lora", dtype="bfloat16", r=16, lora_alpha=32, target_modules=ATTENTION, batch_size=8, seq_len=512)

plans = {}
for label, config in [(MODEL, model.config), ("SmolLM2-1.7B", "smollm2-1.7b")]:
    plans[label] = (estimate_training_memory(config, full), estimate_training_memory(config, lora))

print(f"{'model':<14} {'parameters':>14} {'LoRA trainable':>15} {'fewer':>8} {'full FT GiB':>12} {'LoRA GiB':>9} {'ratio':>6}")
for label, (full_est, lora_est) in plans.items():
    fewer = 100 * (1 - lora_est.trainable_params / full_est.trainable_params)
    print(f"{label:<14} {full_est.n_params:>14,} {lora_est.trainable_params:>15,} {fewer:>7.2f}% "
          f"{full_est.peak_gib:>12.2f} {lora_est.peak_gib:>9.2f} {full_est.peak_gib / lora_est.peak_gib:>5.1f}x")

# %%
import matplotlib.pyplot as plt

full_est, lora_est = plans["SmolLM2-1.7B"]
parts = {"weights": "weights_GiB", "gradients + optimizer state": "trainable_state_GiB",
         "activations": "activations_GiB", "logits / loss": "logits_GiB"}
bars = {"full fine-tuning": full_est.to_dict(), "LoRA r=16": lora_est.to_dict()}
fig, ax = plt.subplots(figsize=(7, 3.5))
bottom = [0.0] * len(bars)
for part, key in parts.items():
    heights = [d[key] for d in bars.values()]
    ax.bar(list(bars), heights, bottom=bottom, label=part)
    bottom = [b + h for b, h in zip(bottom, heights)]
ax.set(title="Planned peak training memory, SmolLM2-1.7B (bf16, batch 8 x 512 tokens)", ylabel="memory (GiB)")
ax.legend(fontsize=8)
plt.show()

# %%
print(f"SmolLM2-1.7B: LoRA trains {100 * lora_est.trainable_params / full_est.n_params:.2f}% of the parameters "
      f"({100 * (1 - lora_est.trainable_params / full_est.n_params):.2f}% fewer, not 'about 90%'),")
print(f"and the planned peak memory falls from {full_est.peak_gib:.1f} to {lora_est.peak_gib:.1f} GiB "
      f"({full_est.peak_gib / lora_est.peak_gib:.1f}x, not '3x').")

# %% [markdown]
# **What this shows.** LoRA cuts the *trainable* parameters by more than the tutorial's "about 90%": over 99% for
# SmolLM2-1.7B, and less for a tiny model, whose layers are so narrow that a rank-16 update is not small next to
# them (the update grows with the layer width, the layer with its square). Memory falls by less than the parameter
# count suggests: the frozen weights still have to sit in memory and the activations of
# the forward pass are the same, so what LoRA removes is the gradients and optimizer state of the frozen weights.
# The "3x" of the tutorial is a figure for GPT-3 175B; for a 1.7B model at this batch the planner gives the ratio
# printed above. Batch size and sequence length move it a lot (activations grow with them; LoRA does not shrink them).

# %% [markdown]
# ## 2. A LoRA layer from scratch
#
# A LoRA layer keeps the frozen weight `W` and adds a low-rank update: `y = W x + (alpha / r) · B (A x)`, with
# `A` of shape `(r, in)` and `B` of shape `(out, r)`. `B` starts at zero, so before training the layer computes
# exactly what the frozen layer did; `A` starts random (peft uses `kaiming_uniform_(a=sqrt(5))`, the default init
# of `nn.Linear`). Here it is in a dozen lines.

# %%
import math

from torch import nn


class LoRALinear(nn.Module):
    """y = W x + (lora_alpha / r) * B A x, with W frozen and only A, B trainable."""

    def __init__(self, base_layer: nn.Linear, r: int = 8, lora_alpha: float = 16):
        super().__init__()
        self.base_layer = base_layer.requires_grad_(False)          # W (and bias) frozen
        self.scaling = lora_alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, base_layer.in_features))   # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, r))  # (out, r): zero at start
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))                 # as peft does

    def forward(self, x):
        return self.base_layer(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling


# %% [markdown]
# We wrap a copy of the model's first attention projection and check that the output is unchanged at start.

# %%
import copy

from course_utils.architectures import as_linear

layer_name, first_proj = next((n, m) for n, m in model.named_modules() if n.endswith(ATTENTION[0]))
base_linear = as_linear(first_proj)  # a float32 nn.Linear copy (GPT-2's Conv1D stores its weight transposed)
torch.manual_seed(SEED)
mine = LoRALinear(copy.deepcopy(base_linear), r=4, lora_alpha=8)
x = torch.randn(2, 5, base_linear.in_features)
print(f"wrapped {layer_name}: in {base_linear.in_features}, out {base_linear.out_features}")
print("output unchanged at start (B = 0):", torch.equal(mine(x), base_linear(x)))
print("trainable parameters:", sum(p.numel() for p in mine.parameters() if p.requires_grad),
      f"= r * (in + out) = 4 * ({base_linear.in_features} + {base_linear.out_features})")

# %% [markdown]
# Now the same layer through peft: `inject_adapter_in_model` puts peft's LoRA layer into any `nn.Module`. We give
# its `B` non-zero values (as after training), copy peft's `A` and `B` into our layer, and compare the outputs.

# %%
from collections import OrderedDict

from peft import LoraConfig, inject_adapter_in_model

holder = nn.Sequential(OrderedDict(proj=copy.deepcopy(base_linear)))
inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["proj"]), holder)
peft_layer = holder.proj
torch.manual_seed(SEED)
nn.init.normal_(peft_layer.lora_B["default"].weight, std=0.02)  # as if trained: B is no longer zero

with torch.no_grad():
    mine.lora_A.copy_(peft_layer.lora_A["default"].weight)
    mine.lora_B.copy_(peft_layer.lora_B["default"].weight)
    ours, theirs = mine(x), peft_layer(x)
diff = (ours - theirs).abs().max().item()
print(f"peft scaling {peft_layer.scaling['default']} == ours {mine.scaling}")
print(f"update changes the output by up to {(theirs - base_linear(x)).abs().max().item():.3f}")
print(f"max |ours - peft| < 1e-6: {diff < 1e-6}")
assert torch.allclose(ours, theirs, atol=1e-6)

# %% [markdown]
# The course keeps this layer in `course_utils.lora_scratch.LoRALinear` (with dropout, `delta_weight()` and
# `from_peft()`), tested against peft in `tests/`. It gives the same numbers:

# %%
from course_utils.lora_scratch import LoRALinear as CourseLoRALinear

with torch.no_grad():
    print("course_utils LoRALinear matches peft:",
          torch.allclose(CourseLoRALinear.from_peft(peft_layer)(x), theirs, atol=1e-6))

# %% [markdown]
# ## 3. LoRA with peft: `LoraConfig` and `get_peft_model`
#
# The tutorial's configuration, one argument at a time. `target_modules` comes from the model (the attention
# projections we read above), so the same cell works for any architecture.

# %%
from peft import get_peft_model

lora_config = LoraConfig(
    r=16,                        # rank of the update B @ A: the size of the "bottleneck"
    lora_alpha=32,               # scaling numerator: the update is multiplied by lora_alpha / r = 2
    lora_dropout=0.05,           # dropout on the LoRA path's input during training (regularisation)
    bias="none",                 # train no bias terms (the only setting that keeps the base fully frozen)
    task_type="CAUSAL_LM",       # wrap as PeftModelForCausalLM (generate(), labels, ... work as before)
    target_modules=ATTENTION,    # which linear layers get A and B: here the attention projections
)
peft_model = get_peft_model(model, lora_config)  # wraps `model` in place; the base weights are frozen
peft_model.print_trainable_parameters()

# %%
from course_utils.architectures import trainable_parameter_table

table = trainable_parameter_table(peft_model)
print(table)
print(f"planner's count for this config: {plans[MODEL][1].trainable_params:,}")

# %% [markdown]
# The tutorial also loads the model with `peft_config=` and `load_in_8bit=True` in `from_pretrained`. Neither
# argument exists in transformers 5: the call fails. Quantized loading takes a `BitsAndBytesConfig` (notebook 06)
# and LoRA is added with `get_peft_model`, as above.

# %%
from transformers import AutoModelForCausalLM

from course_utils.loading import resolve_model_path

try:
    AutoModelForCausalLM.from_pretrained(resolve_model_path(MODEL), load_in_8bit=True, peft_config=lora_config)
except TypeError as err:
    print(f"{type(err).__name__}: {str(err).splitlines()[0]}")

# %% [markdown]
# ## 4. Train the adapter on the `shout` task
#
# The task: answer questions about the small world in capitals (`"What color is the fox?"` -> `"THE FOX IS
# GOLD."`). The base model answers in a normal sentence, so it scores 0%. A freshly wrapped model has `B = 0`: it
# still answers like the base model.

# %%
from course_utils.evaluation import evaluate_task

shout = load_task("shout")
before = evaluate_task(peft_model, tokenizer, shout["eval"], progress=False, name="before training")
print(f"shout eval accuracy before training: {before.accuracy:.1%} ({before.correct}/{before.total})")

# %% [markdown]
# Every step of the training, written out with the plain `Trainer`:
# - `tokenize_for_sft` renders each conversation with the chat template and sets the labels of the prompt to
#   `-100`, so the loss is computed on the answer only;
# - `DataCollatorForSeq2Seq` pads `input_ids` and `labels` (with `-100`) to the longest row of each batch;
# - `cpu_friendly_args` are `TrainingArguments` that work on a CPU and a GPU alike (fp32 on CPU, bf16 on GPU, no
#   pinned memory, no checkpoints, fixed seed); `MemoryCallback` adds the peak memory to each log.

# %% tags=["nbval-ignore-output"]
import time

from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer

from course_utils.data import tokenize_for_sft
from course_utils.memory import MemoryCallback
from course_utils.training import cpu_friendly_args

train_dataset = tokenize_for_sft(shout["train"], tokenizer)
collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
memory = MemoryCallback()
args = cpu_friendly_args(max_steps=MAX_STEPS, learning_rate=2e-3, per_device_train_batch_size=16, logging_steps=10)
trainer = Trainer(model=peft_model, args=args, train_dataset=train_dataset, data_collator=collator,
                  processing_class=tokenizer, callbacks=[memory])
trainer.remove_callback(PrinterCallback)  # we plot the log instead of printing a dict per log step

start = time.perf_counter()
trainer.train()
train_seconds = time.perf_counter() - start
peak_mib = max(p for _, p in memory.steps)
print(f"{trainer.state.global_step} steps in {train_seconds:.1f} s; peak memory {peak_mib:.0f} MiB ({memory.tracker.what})")

# %%
from course_utils.plotting import plot_loss

losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
fig, (ax_loss, ax_mem) = plt.subplots(1, 2, figsize=(11, 3.5))
plot_loss(trainer.state.log_history, title="Training loss, LoRA r=16 on shout", ax=ax_loss)
memory.plot(ax=ax_mem)
plt.show()
print(f"loss: first log {losses[0]:.3f} -> last log {losses[-1]:.3f}")

# %%
after = evaluate_task(peft_model, tokenizer, shout["eval"], progress=False, name="after training")
print(f"shout eval accuracy: {before.accuracy:.1%} before -> {after.accuracy:.1%} after "
      f"({after.correct}/{after.total} held-out questions)")

# %% [markdown]
# A few held-out questions and the answers (generated text can differ in the last token between machines):

# %% tags=["nbval-ignore-output"]
after

# %% [markdown]
# ### Save the adapter
#
# `save_pretrained` on a `PeftModel` writes only the adapter: `A`, `B` and its config. We save into a fresh,
# time-stamped folder so a re-run never overwrites an earlier adapter.

# %%
from pathlib import Path

RUN_DIR = Path("outputs") / "01_lora_training" / time.strftime("%Y%m%d-%H%M%S")
ADAPTER_DIR = RUN_DIR / "shout-lora"
ADAPTER_DIR.mkdir(parents=True, exist_ok=False)  # fails rather than overwrite
peft_model.save_pretrained(ADAPTER_DIR)

adapter_bytes = sum(p.stat().st_size for p in ADAPTER_DIR.iterdir())
model_bytes = sum(p.numel() * p.element_size() for p in peft_model.get_base_model().parameters()
                  if not p.requires_grad)
print(f"saved to {ADAPTER_DIR}: {sorted(p.name for p in ADAPTER_DIR.iterdir())}")
print(f"adapter on disk: {adapter_bytes / 1024:.0f} KiB; the model's weights: {model_bytes / 2**20:.1f} MiB "
      f"({model_bytes / adapter_bytes:.0f}x larger)")

# %% [markdown]
# ## 5. Experiment: rank and target layers
#
# How small can the adapter be? We train 3 adapters of growing rank on the attention projections
# and two on every linear layer (`"all-linear"`), each for `SWEEP_STEPS` steps of `SWEEP_BATCH` examples with `lora_alpha = 2 r` (the same
# scaling), and plot accuracy against the number of trainable parameters. `train_lora` is the training loop of
# section 4 in one call.

# %%
import contextlib
import io

from course_utils.training import train_lora

experiments = [("attention", r, ATTENTION) for r in SWEEP_RANKS]
experiments += [("all-linear", r, "all-linear") for r in (SWEEP_RANKS[0], SWEEP_RANKS[-1])]
sweep = []
for label, r, targets in experiments:
    config = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.05, target_modules=targets, task_type="CAUSAL_LM")
    with contextlib.redirect_stdout(io.StringIO()):  # keep the Trainer's per-log prints out of the notebook
        run = train_lora(load_model(MODEL, dtype=DTYPE, device=DEVICE), tokenizer, shout["train"], config,
                         max_steps=SWEEP_STEPS, batch_size=SWEEP_BATCH)
    acc = evaluate_task(run.model, tokenizer, shout["eval"], progress=False).accuracy
    trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    sweep.append({"targets": label, "r": r, "trainable": trainable, "loss": run.losses[-1], "accuracy": acc,
                  "seconds": run.seconds})

print(f"{'targets':<11} {'r':>3} {'trainable':>10} {'last loss':>10} {'accuracy':>9}")
for row in sweep:
    print(f"{row['targets']:<11} {row['r']:>3} {row['trainable']:>10,} {row['loss']:>10.3f} {row['accuracy']:>9.1%}")

# %%
from course_utils.plotting import plot_xy

series = {}
for label in ("attention", "all-linear"):
    rows = [row for row in sweep if row["targets"] == label]
    series[label] = ([row["trainable"] for row in rows], [100 * row["accuracy"] for row in rows])
ax = plot_xy(series, title=f"shout accuracy after {SWEEP_STEPS} steps vs adapter size",
             xlabel="trainable parameters (log scale)", ylabel="eval accuracy (%)", logx=True)
for row in sweep:
    ax.annotate(f"r={row['r']}", (row["trainable"], 100 * row["accuracy"]), textcoords="offset points",
                xytext=(4, -10), fontsize=8)
plt.show()

# %% tags=["nbval-ignore-output"]
print("seconds per experiment run:", ", ".join(f"{row['targets']} r={row['r']}: {row['seconds']:.1f} s" for row in sweep))

# %% [markdown]
# **Reading the plot.** On this short budget (`SWEEP_STEPS` steps of `SWEEP_BATCH` examples) accuracy climbs
# with the rank: the smallest adapters have not learned the style yet. Adapting every linear layer multiplies the
# parameters (the MLP matrices are larger) and, at the same rank, does not do better than the attention projections
# on this task. The budget matters as much as the rank: in a longer run while writing this notebook (100 steps of
# 16 examples) r=2 on the attention projections already reached 94%, so a small rank needs more steps rather than
# more parameters. Differences of two or three questions out of 48 are within what another seed would change; on a
# real model, run the same sweep before picking `r`.

# %% [markdown]
# ## What we measured

# %%
from IPython.display import Markdown, display

f17, l17 = plans["SmolLM2-1.7B"]
best = max(sweep, key=lambda row: (row["accuracy"], -row["trainable"]))
rows = [
    ("trainable parameters, LoRA r=16 attention", f"{table.trainable:,} of {table.total:,} ({table.trainable_pct:.2f}%)"),
    ("fewer trainable parameters than full FT (this model / SmolLM2-1.7B)",
     f"{table.reduction_pct:.2f}% / {100 * (1 - l17.trainable_params / f17.n_params):.2f}% (tutorial: 'about 90%')"),
    ("planned peak memory SmolLM2-1.7B, full FT -> LoRA",
     f"{f17.peak_gib:.1f} -> {l17.peak_gib:.1f} GiB ({f17.peak_gib / l17.peak_gib:.1f}x; tutorial: '3x')"),
    ("our LoRA layer vs peft's, max abs difference", "< 1e-6"),
    (f"shout eval accuracy, {MAX_STEPS} steps", f"{before.accuracy:.1%} -> {after.accuracy:.1%}"),
    ("training loss, first -> last log", f"{losses[0]:.3f} -> {losses[-1]:.3f}"),
    ("adapter on disk vs model weights", f"{adapter_bytes / 1024:.0f} KiB vs {model_bytes / 2**20:.1f} MiB"),
    (f"sweep: best accuracy after {SWEEP_STEPS} steps", f"{best['accuracy']:.1%} ({best['targets']}, r={best['r']}, "
     f"{best['trainable']:,} parameters)"),
]
display(Markdown("| quantity | measured |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)))

# %% tags=["nbval-ignore-output"]
print(f"main run: {train_seconds:.1f} s of training, peak memory {peak_mib:.0f} MiB ({memory.tracker.what})")

# %%
from course_utils.notebook import record_metrics

_ = record_metrics(model=MODEL, accuracy_before=before.accuracy, accuracy_after=after.accuracy,
                   train_seconds=round(train_seconds, 2), peak_mem_MiB=round(peak_mib, 1),
                   trainable_params=table.trainable, adapter_KiB=round(adapter_bytes / 1024, 1),
                   sweep={f"{row['targets']} r={row['r']}": row["accuracy"] for row in sweep})

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, a check, and a solution you can skip.
#
# ### Exercise 1: count before you train
# How many trainable parameters does `LoraConfig(r=8, target_modules=["q_proj", "v_proj"])` add to this model?
# Work it out from the layer shapes (`r * (in + out)` per adapted layer), not by wrapping the model.

# %%
from course_utils.checks.lora import check_lora_parameter_count, check_mlp_targets, check_scaling

EX_TARGETS = [n for n in ATTENTION if n[0] in "qv"] or ATTENTION[:2]  # q_proj and v_proj in Llama-style models
answer = None  # your number
check_lora_parameter_count(answer, model=peft_model.get_base_model(), r=8, target_modules=EX_TARGETS)

# %% [markdown]
# #### Solution (skip if you want to try first)

# %%
from course_utils.architectures import layer_shape

base = peft_model.get_base_model()
layers = [m for n, m in base.named_modules() if any(n.endswith("." + t) for t in EX_TARGETS)]  # every q_proj, v_proj
answer = sum(8 * sum(layer_shape(m)) for m in layers)  # r * (in + out); layer_shape reads Conv1D's (in, out) too
check_lora_parameter_count(answer, model=base, r=8, target_modules=EX_TARGETS)

# %% [markdown]
# ### Exercise 2: the scaling factor
# peft multiplies the update `B A x` by a scaling factor. What is it for `r=32, lora_alpha=32`? (Look at
# `peft_layer.scaling` above if you are unsure how it is computed.)

# %%
answer = None  # a number
check_scaling(answer, r=32, lora_alpha=32)

# %% [markdown]
# #### Solution (skip if you want to try first)

# %%
answer = 32 / 32  # lora_alpha / r
check_scaling(answer, r=32, lora_alpha=32)

# %% [markdown]
# ### Exercise 3: which modules?
# Write the `target_modules` list that puts LoRA on every projection of the MLP blocks of this model (and nothing
# else). Hint: `print(model)` shows the module names.

# %%
answer = None  # a list of module names
check_mlp_targets(answer, peft_model.get_base_model())

# %% [markdown]
# #### Solution (skip if you want to try first)

# %%
from course_utils.architectures import mlp_projection_names

answer = mlp_projection_names(peft_model.get_base_model())  # the MLP's linear layers, by the names peft matches
check_mlp_targets(answer, peft_model.get_base_model())

# %% [markdown]
# **Next:** notebook 02 loads adapters from disk, switches between them and combines them.
