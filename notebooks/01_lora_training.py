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
# - why parameter-efficient fine-tuning: how many parameters and how much GPU memory LoRA saves, counted and
#   planned for this model and SmolLM2-1.7B and set beside an H200 measurement (the tutorial we started from says
#   "about 90%" and "3x": we check each against the setting it was made in);
# - what a LoRA layer computes, by writing one (`W x + (alpha/r) · B A x`) and matching peft's layer to the last digit;
# - `LoraConfig`, argument by argument, `get_peft_model` and where the trainable parameters sit;
# - training an adapter with the plain `transformers.Trainer` (loss on the answer only), with memory tracked;
# - how accuracy depends on the rank and on which layers you adapt.
#
# **Time:** about 1-2 minutes on a laptop CPU with the default model (`course-tiny`); a few minutes on a Colab GPU
# with `MODEL = "smollm2-135m"`.

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
DTYPE = "auto"  # float32 on CPU, bfloat16 on a recent GPU
DEVICE = "auto"  # cuda > mps > cpu
MAX_STEPS = 100  # training steps of the main run
SEED = 0
SWEEP_RANKS = [1, 2, 8]  # ranks of the small experiment
SWEEP_STEPS = 60  # steps of each experiment run
SWEEP_BATCH = 8  # its batch size (smaller than the main run's: the sweep has to be quick)

# %% tags=["nbval-ignore-output"]
info = setup(SEED, model=MODEL)

# %% [markdown]
# ## 1. Why parameter-efficient fine-tuning, in numbers
#
# Full fine-tuning updates every weight: you need gradients and optimizer state for all of them, and every task
# gets its own full copy of the model. LoRA freezes the model and trains two small matrices per adapted layer.
# The tutorial this course grew from claims LoRA "typically reduces trainable parameters by about 90%" and, "for
# GPT-3 175B, ... GPU memory requirements by 3x compared to full fine-tuning". We check both, for the model we use
# and for SmolLM2-1.7B (its shipped config: nothing is downloaded), with the course's memory planner
# (`course_utils.planner`: arithmetic on the config, checked against peak memory measured on an H200 GPU, which
# ships in `data/reference/`).

# %%
import torch

from course_utils.architectures import attention_projection_names
from course_utils.data import load_task
from course_utils.loading import load_model, load_tokenizer
from course_utils.planner import Recipe, estimate_training_memory, load_config

tokenizer = load_tokenizer(MODEL)
model = load_model(MODEL, dtype=DTYPE, device=DEVICE)
ATTENTION = attention_projection_names(model)  # read from the model, e.g. ['q_proj', 'k_proj', 'v_proj', 'o_proj']
SMOLLM2 = load_config("smollm2-1.7b")  # the shipped config.json of SmolLM2-1.7B: shapes only, no weights
n_params = sum(p.numel() for p in model.parameters())
print(f"{MODEL}: {n_params:,} parameters; attention projections: {ATTENTION}")

# %% [markdown]
# ### Trainable parameters: "about 90%"?
#
# LoRA r=16 on the attention projections (the tutorial: LoRA "injects trainable matrices into the model's attention
# layers"), counted by the planner from each config.

# %%
LLAMA_ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]  # SmolLM2 is a Llama-architecture model
lora_attention = Recipe(method="lora", r=16, lora_alpha=32, target_modules=ATTENTION)
counts = {
    MODEL: estimate_training_memory(model.config, lora_attention),
    "SmolLM2-1.7B": estimate_training_memory(SMOLLM2, lora_attention.replace(target_modules=LLAMA_ATTENTION)),
}

print(f"{'model':<14} {'parameters':>14} {'LoRA trainable':>15} {'share':>7} {'fewer than full FT':>19}")
for label, est in counts.items():
    share = est.trainable_params / est.n_params
    print(f"{label:<14} {est.n_params:>14,} {est.trainable_params:>15,} {share:>7.2%} {1 - share:>19.2%}")

# %% [markdown]
# LoRA cuts the *trainable* parameters by more than the tutorial's "about 90%": over 99% for SmolLM2-1.7B (a
# count, so it holds on any machine), and less for our tiny model, whose layers are so narrow that a rank-16
# update is not small next to them (the update grows with the layer width, the layer with its square). For any
# other model, the planner gives the count from its config before you download a weight.
#
# ### Memory: "3x" compared with which full fine-tuning?
#
# Memory is where the baseline matters. Full fine-tuning comes in two common forms, and LoRA in one:
#
# | recipe | weights | gradients | Adam's two moments | bytes per parameter, before activations |
# |---|---|---|---|---|
# | full FT, **mixed precision** | fp32 master copy, matmuls in bf16 (autocast) | fp32 | fp32 | 4 + 4 + 8 = 16 |
# | full FT, **pure bf16** | bf16 | bf16 | bf16 | 2 + 2 + 4 = 8 |
# | **LoRA** r=16 on q, v | bf16, frozen | only for the adapter (fp32) | only for the adapter (fp32) | about 2 |
#
# Mixed precision is what `Trainer(bf16=True)` does with a model loaded with `dtype=torch.float32`. Pure bf16 is
# what you get by loading with `dtype=torch.bfloat16` and training every weight; note that transformers 5 loads a
# checkpoint in its own dtype by default (`dtype="auto"`: bf16 for SmolLM2), so a plain `from_pretrained(name)`
# followed by full fine-tuning is pure bf16. LoRA on q and v is the LoRA paper's own GPT-3 setting, what peft
# picks for Llama models when `target_modules` is left out (as in the tutorial's `LoraConfig`), and the row the
# H200 reference measured. Each recipe planned at batch 8 x 512 tokens, beside the H200's measurement of the
# same step:

# %%
import json

from course_utils.planner import REFERENCE_PATH

SHAPE = {"batch_size": 8, "seq_len": 512}
memory_recipes = {  # keys: the rows of data/reference/h200_smollm2-1.7b.json
    "fft_float32": Recipe(method="full", dtype="float32", **SHAPE),  # mixed precision: fp32 weights, bf16 autocast
    "fft_bfloat16": Recipe(method="full", dtype="bfloat16", **SHAPE),  # pure bf16
    "lora_r16_qv": Recipe(
        method="lora", dtype="bfloat16", r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], **SHAPE
    ),
}
LABELS = {
    "fft_float32": "full FT, mixed precision",
    "fft_bfloat16": "full FT, pure bf16",
    "lora_r16_qv": "LoRA r=16 q,v",
}
h200 = json.loads(REFERENCE_PATH.read_text())["train"]  # peak GiB measured on an H200 (bf16, batch 8 x 512)
planned = {key: estimate_training_memory(SMOLLM2, rc) for key, rc in memory_recipes.items()}
measured = {key: h200[key]["peak_GiB"] for key in memory_recipes}

print("SmolLM2-1.7B, batch 8 x 512: peak training memory, and its ratio to LoRA's")
print(f"{'recipe':<26} {'planner GiB':>11} {'H200 GiB':>9} {'planner ratio':>14} {'H200 ratio':>11}")
for key in memory_recipes:
    print(
        f"{LABELS[key]:<26} {planned[key].peak_gib:>11.1f} {measured[key]:>9.1f} "
        f"{planned[key].peak_gib / planned['lora_r16_qv'].peak_gib:>13.1f}x "
        f"{measured[key] / measured['lora_r16_qv']:>10.1f}x"
    )

# %%
import matplotlib.pyplot as plt

parts = {
    "weights": "weights_GiB",
    "gradients + optimizer state": "trainable_state_GiB",
    "activations": "activations_GiB",
    "logits / loss": "logits_GiB",
}
bars = {LABELS[key].replace(", ", "\n"): est.to_dict() for key, est in planned.items()}
fig, ax = plt.subplots(figsize=(7, 3.5))
bottom = [0.0] * len(bars)
for part, key in parts.items():
    heights = [d[key] for d in bars.values()]
    ax.bar(list(bars), heights, bottom=bottom, label=part)
    bottom = [b + h for b, h in zip(bottom, heights)]
ax.scatter(
    [LABELS[key].replace(", ", "\n") for key in measured],
    list(measured.values()),
    color="black",
    marker="_",
    s=400,
    zorder=3,
    label="measured on an H200",
)
ax.set(title="Planned peak training memory, SmolLM2-1.7B (batch 8 x 512 tokens)", ylabel="memory (GiB)")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# **Which baseline is the "3x"?** The tutorial's figure is the LoRA paper's (Hu et al., 2021, section 4.2): on
# GPT-3 175B, LoRA cut training memory from 1.2 TB to 350 GB, "up to 2/3" less "as we do not need to store the
# optimizer states for the frozen parameters". That baseline is full fine-tuning with Adam as large models are
# trained, in mixed precision. Against that baseline the H200 measures 2.7x for SmolLM2-1.7B at batch 8 x 512 (the
# planner: 2.6x): the tutorial is nearly right. Against pure-bf16 full fine-tuning the same LoRA step saves 1.6x.
#
# **Which baseline do you meet in practice?** Mixed precision is the default for full fine-tuning and pre-training
# (`Trainer(bf16=True)` on an fp32 model, DeepSpeed and FSDP mixed precision): bf16 keeps 8 significant bits, so
# an update smaller than about 1/256 of a weight is rounded away, and the fp32 master copy keeps those small steps.
# Pure bf16 halves the per-parameter state and is used when memory is tight and runs are short (and, as above, by
# anyone who fine-tunes a bf16 checkpoint without asking for fp32). LoRA needs no fp32 master copy of the base:
# the frozen weights are never updated, so they stay in bf16 and only the small adapter is kept in fp32.
#
# **Why the ratio is not one number.** LoRA removes a fixed cost, the state of every weight (gradients, Adam
# moments and, in mixed precision, the fp32 copy). It does not remove the activations saved for the backward pass,
# which grow with the tokens per step, batch size x sequence length (linearly, with the memory-efficient attention
# the planner assumes). Small batches or short sequences: the fixed cost dominates and the ratio is large. Large
# batches or long sequences: activations dominate both recipes and the ratio falls towards 1; doubling the
# sequence length does what doubling the batch does. Gradient checkpointing keeps only each layer's input and
# recomputes the rest during the backward pass: activations shrink, the fixed cost dominates again, and the ratio
# rises. The planner, over batch sizes (sequence length 512):

# %%
BATCHES = [1, 2, 4, 8, 16, 32]
ratios = {}
for gc in (False, True):
    for key in ("fft_float32", "fft_bfloat16"):
        ratios[(key, gc)] = [
            estimate_training_memory(
                SMOLLM2, memory_recipes[key].replace(batch_size=b, gradient_checkpointing=gc)
            ).peak_gib
            / estimate_training_memory(
                SMOLLM2, memory_recipes["lora_r16_qv"].replace(batch_size=b, gradient_checkpointing=gc)
            ).peak_gib
            for b in BATCHES
        ]

print(f"{'full FT / LoRA r=16 q,v, planned':<42}" + "".join(f"{'batch ' + str(b):>10}" for b in BATCHES))
for (key, gc), values in ratios.items():
    label = LABELS[key].removeprefix("full FT, ") + (", gradient checkpointing" if gc else "")
    print(f"{label:<42}" + "".join(f"{v:>9.1f}x" for v in values))

# %%
fig, ax = plt.subplots(figsize=(7, 3.8))
for (key, gc), values in ratios.items():
    ax.plot(
        BATCHES,
        values,
        marker="o",
        ms=4,
        ls="--" if gc else "-",
        color="C0" if key == "fft_float32" else "C1",
        label=LABELS[key] + (", checkpointing" if gc else ""),
    )
for key, color in (("fft_float32", "C0"), ("fft_bfloat16", "C1")):
    ax.scatter(
        [8], [measured[key] / measured["lora_r16_qv"]], marker="*", s=160, color=color, edgecolor="black", zorder=3
    )
ax.axhline(3, color="grey", lw=0.8, ls=":")
ax.text(1, 3.1, "the tutorial's '3x'", fontsize=8, color="grey")
ax.set_xscale("log", base=2)
ax.set_xticks(BATCHES, [str(b) for b in BATCHES])
ax.set(
    title="Full fine-tuning / LoRA peak memory, SmolLM2-1.7B (seq 512; stars: H200)",
    xlabel="batch size (sequences of 512 tokens)",
    ylabel="memory ratio (x)",
)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# At batch 1 the mixed-precision peak is the optimizer step (fp32 weights, gradients and both Adam moments at
# once), and LoRA needs about 7x less; at batch 32 activations decide and the ratio is under 2x. Checkpointing
# lifts the ratio at batch 8 from 2.6x to more than 5x. These are the planner's figures (arithmetic on the
# config, the same on any machine); the stars are the H200's measurements. For your own model and batch, plan
# it: `estimate_training_memory(...)` as above or `course-utils plan <config> --method lora --gc`;
# `course_utils.planner.compare_with_reference()` shows how close the planner lands to all eight H200 rows.

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
        self.base_layer = base_layer.requires_grad_(False)  # W (and bias) frozen
        self.scaling = lora_alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, base_layer.in_features))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, r))  # (out, r): zero at start
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as peft does

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
print(
    "trainable parameters:",
    sum(p.numel() for p in mine.parameters() if p.requires_grad),
    f"= r * (in + out) = 4 * ({base_linear.in_features} + {base_linear.out_features})",
)

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
    update = (theirs - base_linear(x)).abs().max().item()
diff = (ours - theirs).abs().max().item()
print(f"peft scaling {peft_layer.scaling['default']} == ours {mine.scaling}")
print(f"the update changes the output (max |change| > 0.01): {update > 0.01}")
print(f"max |ours - peft| < 1e-6: {diff < 1e-6}")
assert torch.allclose(ours, theirs, atol=1e-6)

# %% tags=["nbval-ignore-output"]
print(f"the update changes the output by up to {update:.3f}; ours and peft's differ by at most {diff:.1e}")

# %% [markdown]
# The course keeps this layer in `course_utils.lora_scratch.LoRALinear` (with dropout, `delta_weight()` and
# `from_peft()`), tested against peft in `tests/`. It gives the same numbers:

# %%
from course_utils.lora_scratch import LoRALinear as CourseLoRALinear

with torch.no_grad():
    print(
        "course_utils LoRALinear matches peft:",
        torch.allclose(CourseLoRALinear.from_peft(peft_layer)(x), theirs, atol=1e-6),
    )

# %% [markdown]
# ## 3. LoRA with peft: `LoraConfig` and `get_peft_model`
#
# The tutorial's configuration, one argument at a time. `target_modules` comes from the model (the attention
# projections we read above), so the same cell works for any architecture.

# %%
from peft import get_peft_model

lora_config = LoraConfig(
    r=16,  # rank of the update B @ A: the size of the "bottleneck"
    lora_alpha=32,  # scaling numerator: the update is multiplied by lora_alpha / r = 2
    lora_dropout=0.05,  # dropout on the LoRA path's input during training (regularisation)
    bias="none",  # train no bias terms (the only setting that keeps the base fully frozen)
    task_type="CAUSAL_LM",  # wrap as PeftModelForCausalLM (generate(), labels, ... work as before)
    target_modules=ATTENTION,  # which linear layers get A and B: here the attention projections
)
peft_model = get_peft_model(model, lora_config)  # wraps `model` in place; the base weights are frozen
peft_model.print_trainable_parameters()

# %%
from course_utils.architectures import trainable_parameter_table

table = trainable_parameter_table(peft_model)
print(table)
print(f"planner's count for this config (section 1): {counts[MODEL].trainable_params:,}")
# The table divides by all parameters, adapter included; section 1 divides by the base model's (what full FT trains).
print(f"as a share of the base model's {n_params:,} parameters: {table.trainable / n_params:.2%}")

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

# %% tags=["nbval-ignore-output"]
from course_utils.evaluation import evaluate_task
from course_utils.notebook import expect

shout = load_task("shout")
before = evaluate_task(peft_model, tokenizer, shout["eval"], progress=False, name="before training")
print(f"shout eval accuracy before training: {before.accuracy:.1%} ({before.correct}/{before.total})")

# %% [markdown]
# Accuracies come out of generation, whose last digits differ between CPU families, so the number above is in a
# cell the course's tests do not compare; the claim the lesson rests on is checked in the next cell, with a margin.

# %%
expect("the base model scores below 10% on shout (it answers in normal case)", before.accuracy < 0.10)

# %% [markdown]
# ### The loss on the answer only: masking the prompt
#
# A training row is the whole conversation, but the model should learn to *answer*, not to repeat the system
# prompt and the question. `Trainer` computes the cross-entropy on every position whose label is not `-100`
# (PyTorch's `ignore_index`), so we copy the token ids into the labels and set the prompt's labels to `-100`.
# Here is one row, by hand:

# %%
messages = shout["train"][0]["messages"]  # [user, assistant]; the template adds its default system prompt
prompt_ids = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True, return_dict=True)[
    "input_ids"
]  # the prompt, up to "<|im_start|>assistant\n"
input_ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]  # the whole row
assert input_ids[: len(prompt_ids)] == prompt_ids  # the template renders the prompt the same inside the row
labels = [-100] * len(prompt_ids) + input_ids[len(prompt_ids) :]

print(f"{len(input_ids)} tokens; the first {len(prompt_ids)} (the prompt) get label -100 and carry no loss")
print("loss on:", repr(tokenizer.decode([t for t in labels if t != -100])))

# %% [markdown]
# `course_utils.data.tokenize_for_sft` does exactly this for every row (and raises a clear error for a chat
# template that renders the prompt differently inside the conversation, where this simple cut would be wrong).
# The rest of the course uses it; it gives the same ids and labels:

# %%
from course_utils.data import tokenize_for_sft

train_dataset = tokenize_for_sft(shout["train"], tokenizer)
row = train_dataset[0]
print(
    "tokenize_for_sft, row 0: same input_ids", row["input_ids"] == input_ids, "| same labels", row["labels"] == labels
)

# %% [markdown]
# Every step of the training, written out with the plain `Trainer`:
# - `train_dataset`: the masked rows above;
# - `DataCollatorForSeq2Seq` pads `input_ids` and `labels` (with `-100`) to the longest row of each batch;
# - `cpu_friendly_args` are `TrainingArguments` that work on a CPU and a GPU alike (fp32 on CPU, bf16 on GPU, no
#   pinned memory, no checkpoints, fixed seed); `MemoryCallback` adds the peak memory to each log.

# %% tags=["nbval-ignore-output"]
import time

from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer

from course_utils.memory import MemoryCallback
from course_utils.training import cpu_friendly_args

collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
memory = MemoryCallback()
args = cpu_friendly_args(max_steps=MAX_STEPS, learning_rate=2e-3, per_device_train_batch_size=16, logging_steps=10)
trainer = Trainer(
    model=peft_model,
    args=args,
    train_dataset=train_dataset,
    data_collator=collator,
    processing_class=tokenizer,
    callbacks=[memory],
)
trainer.remove_callback(PrinterCallback)  # we plot the log instead of printing a dict per log step

start = time.perf_counter()
trainer.train()
train_seconds = time.perf_counter() - start
peak_mib = max(p for _, p in memory.steps)
print(
    f"{trainer.state.global_step} steps in {train_seconds:.1f} s; peak memory {peak_mib:.0f} MiB ({memory.tracker.what})"
)

# %% tags=["nbval-ignore-output"]
from course_utils.plotting import plot_loss

losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
fig, (ax_loss, ax_mem) = plt.subplots(1, 2, figsize=(11, 3.5))
plot_loss(trainer.state.log_history, title="Training loss, LoRA r=16 on shout", ax=ax_loss)
memory.plot(ax=ax_mem)
plt.show()
print(f"loss: first log {losses[0]:.3f} -> last log {losses[-1]:.3f}")

# %% tags=["nbval-ignore-output"]
after = evaluate_task(peft_model, tokenizer, shout["eval"], progress=False, name="after training")
print(
    f"shout eval accuracy: {before.accuracy:.1%} before -> {after.accuracy:.1%} after "
    f"({after.correct}/{after.total} held-out questions)"
)

# %%
expect("the training loss fell to less than half of its first logged value", losses[-1] < 0.5 * losses[0])
expect("shout accuracy after training >= 75% (held-out questions)", after.accuracy >= 0.75)

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

# The weights file only: the config and README beside it hold the base model's path, whose length varies.
adapter_bytes = (ADAPTER_DIR / "adapter_model.safetensors").stat().st_size
model_bytes = sum(p.numel() * p.element_size() for p in peft_model.get_base_model().parameters() if not p.requires_grad)
print(f"saved to {ADAPTER_DIR}: {sorted(p.name for p in ADAPTER_DIR.iterdir())}")
print(
    f"adapter weights on disk: {adapter_bytes / 1024:.0f} KiB; the model's weights: {model_bytes / 2**20:.1f} MiB "
    f"({model_bytes / adapter_bytes:.0f}x larger)"
)

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
        run = train_lora(
            load_model(MODEL, dtype=DTYPE, device=DEVICE),
            tokenizer,
            shout["train"],
            config,
            max_steps=SWEEP_STEPS,
            batch_size=SWEEP_BATCH,
        )
    acc = evaluate_task(run.model, tokenizer, shout["eval"], progress=False).accuracy
    trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    sweep.append(
        {
            "targets": label,
            "r": r,
            "trainable": trainable,
            "loss": run.losses[-1],
            "accuracy": acc,
            "seconds": run.seconds,
        }
    )

print(f"{'targets':<11} {'r':>3} {'trainable':>10}")  # counts: the same on every machine
for row in sweep:
    print(f"{row['targets']:<11} {row['r']:>3} {row['trainable']:>10,}")

# %% tags=["nbval-ignore-output"]
print(f"{'targets':<11} {'r':>3} {'last loss':>10} {'accuracy':>9} {'seconds':>8}")
for row in sweep:
    print(f"{row['targets']:<11} {row['r']:>3} {row['loss']:>10.3f} {row['accuracy']:>9.1%} {row['seconds']:>8.1f}")

# %%
from course_utils.plotting import plot_xy

series = {}
for label in ("attention", "all-linear"):
    rows = [row for row in sweep if row["targets"] == label]
    series[label] = ([row["trainable"] for row in rows], [100 * row["accuracy"] for row in rows])
ax = plot_xy(
    series,
    title=f"shout accuracy after {SWEEP_STEPS} steps vs adapter size",
    xlabel="trainable parameters (log scale)",
    ylabel="eval accuracy (%)",
    logx=True,
)
for row in sweep:
    ax.annotate(
        f"r={row['r']}",
        (row["trainable"], 100 * row["accuracy"]),
        textcoords="offset points",
        xytext=(4, -10),
        fontsize=8,
    )
plt.show()

# %%
by_rank = {row["r"]: row["accuracy"] for row in sweep if row["targets"] == "attention"}
expect(
    f"on this budget, r={SWEEP_RANKS[-1]} on attention beats r={SWEEP_RANKS[0]} by at least 30 points",
    by_rank[SWEEP_RANKS[-1]] - by_rank[SWEEP_RANKS[0]] >= 0.30,
)

# %% [markdown]
# **Reading the plot.** On this short budget (`SWEEP_STEPS` steps of `SWEEP_BATCH` examples) accuracy climbs
# with the rank on our 1.8M-parameter model: the smallest adapters have not learned the style yet. Adapting every
# linear layer multiplies the parameters (the MLP matrices are larger) and, at the same rank, did not do better
# than the attention projections on this task in our run (see the table above). The budget matters as much as
# the rank: set `SWEEP_STEPS = 100` and `SWEEP_BATCH = 16`, the main run's budget, and small ranks catch up
# (when this notebook was written, r=2 on the attention projections reached 94% with that budget). Differences
# of two or three questions out of 48 are within what another seed would change.
#
# **Does this hold for a real model?** Not as a rule. Our model's layers are 192 wide; in a model of 2048 the
# same rank is a far smaller share of the layer, and a style change needs little of it: the LoRA paper found
# r=1 on W_q and W_v about as good as r=64 for GPT-3 175B on WikiSQL and MultiNLI (its Table 6). To check on your
# model, run this notebook with `MODEL = "smollm2-135m"` (or `course-utils run 01 --model smollm2-135m` on a GPU)
# and compare the sweep. Memory is no reason to pick a small rank: the planner gives SmolLM2-1.7B's step (LoRA on
# q, v, batch 8 x 512) at the same size for r=1 and r=64, within 1%:

# %%
for r in (1, 16, 64):
    est = estimate_training_memory(SMOLLM2, memory_recipes["lora_r16_qv"].replace(r=r, lora_alpha=2 * r))
    print(
        f"SmolLM2-1.7B, LoRA r={r:<2} on q,v: {est.trainable_params:>10,} trainable parameters, planned peak {est.peak_gib:.2f} GiB"
    )

# %% [markdown]
# ## What we measured

# %% tags=["nbval-ignore-output"]
from IPython.display import Markdown, display

best = max(sweep, key=lambda row: (row["accuracy"], -row["trainable"]))
mp, bf, lq = (planned[k].peak_gib for k in ("fft_float32", "fft_bfloat16", "lora_r16_qv"))
mm, bm, lm = (measured[k] for k in ("fft_float32", "fft_bfloat16", "lora_r16_qv"))
rows = [
    (
        "trainable parameters, LoRA r=16 attention (this model, counted by peft)",
        f"{table.trainable:,} ({table.trainable / n_params:.2%} of {n_params:,})",
    ),
    (
        "fewer trainable parameters than full FT, LoRA r=16 attention (planner: this model / SmolLM2-1.7B)",
        " / ".join(f"{1 - est.trainable_params / est.n_params:.2%}" for est in counts.values())
        + " (tutorial: 'about 90%')",
    ),
    (
        "peak memory SmolLM2-1.7B, batch 8 x 512: full FT mixed precision -> LoRA r=16 q,v (planner / H200)",
        f"{mp:.1f} -> {lq:.1f} GiB, {mp / lq:.1f}x / {mm:.1f} -> {lm:.1f} GiB, {mm / lm:.1f}x (tutorial: '3x', this baseline)",
    ),
    (
        "same, full FT pure bf16 -> LoRA r=16 q,v (planner / H200)",
        f"{bf:.1f} -> {lq:.1f} GiB, {bf / lq:.1f}x / {bm:.1f} -> {lm:.1f} GiB, {bm / lm:.1f}x",
    ),
    ("our LoRA layer vs peft's, max abs difference", "< 1e-6"),
    (f"shout eval accuracy, {MAX_STEPS} steps (this notebook)", f"{before.accuracy:.1%} -> {after.accuracy:.1%}"),
    ("training loss, first -> last log", f"{losses[0]:.3f} -> {losses[-1]:.3f}"),
    ("adapter weights on disk vs model weights", f"{adapter_bytes / 1024:.0f} KiB vs {model_bytes / 2**20:.1f} MiB"),
    (
        f"sweep: best accuracy after {SWEEP_STEPS} steps",
        f"{best['accuracy']:.1%} ({best['targets']}, r={best['r']}, {best['trainable']:,} parameters)",
    ),
]
display(Markdown("| quantity | measured |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)))

# %% tags=["nbval-ignore-output"]
print(f"main run: {train_seconds:.1f} s of training, peak memory {peak_mib:.0f} MiB ({memory.tracker.what})")

# %%
from course_utils.notebook import record_metrics

_ = record_metrics(
    model=MODEL,
    accuracy_before=before.accuracy,
    accuracy_after=after.accuracy,
    train_seconds=round(train_seconds, 2),
    peak_mem_MiB=round(peak_mib, 1),
    trainable_params=table.trainable,
    adapter_KiB=round(adapter_bytes / 1024, 1),
    sweep={f"{row['targets']} r={row['r']}": row["accuracy"] for row in sweep},
)

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
