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
# - loading a model and tokenizer with transformers; padding left for generation, right for training;
# - how many parameters and how much memory LoRA saves, for this model and SmolLM2-1.7B;
# - what a LoRA layer computes (`W x + (alpha/r) · B A x`), by writing one and matching peft's;
# - `LoraConfig`, `get_peft_model`, `TrainingArguments` and `Trainer`, argument by argument;
# - how rank and target layers change accuracy; saving and sharing the adapter; your own data.
#
# **Time:** about a minute on a laptop CPU with the default model (`course-tiny`); a few minutes on a Colab GPU
# with `MODEL = "smollm2-135m"`.
#
# The old tutorial's claims about LoRA's savings are checked in [docs/claims.md](../docs/claims.md).

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
MODEL = model_from_env("course-tiny")  # or "smollm2-135m", any hub id or local folder
DTYPE = "auto"  # float32 on CPU, bfloat16 on recent GPUs, float16 on older GPUs (T4, V100) and on Apple's MPS
DEVICE = "auto"  # cuda > mps > cpu
LEARNING_RATE = "auto"  # "auto": chosen by model size (course-tiny: 3e-3); or a number
MAX_STEPS = "auto"  # optimizer steps of the main run (course-tiny: 45)
BATCH_SIZE = "auto"  # rows per step (course-tiny: 16)
SEED = 0
SWEEP_RANKS = [1, 2, 8]  # ranks of the small experiment (section 8)
SWEEP_STEPS = 40  # steps of each experiment run
SWEEP_BATCH = 8  # its batch size (smaller than the main run's: the sweep has to be quick)

# %% tags=["nbval-ignore-output"]
info = setup(SEED, model=MODEL)
# shown, not claimed: the device and library versions of this machine

# %% [markdown]
# ## 1. The model and its tokenizer, with transformers
#
# Two calls load everything: `AutoTokenizer.from_pretrained` and `AutoModelForCausalLM.from_pretrained`. They take
# a hub id (`"HuggingFaceTB/SmolLM2-135M-Instruct"`) or a local folder. The course's default model ships in the
# repository, in `data/course-tiny`; `resolve_model_path` turns the short name into that folder and leaves hub ids
# as they are.
#
# `dtype` is a real choice: float32 on a CPU (16-bit matmuls are slow there), bfloat16 on a recent GPU.

# %%
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from course_utils.loading import resolve_device, resolve_dtype, resolve_model_path

MODEL_PATH = resolve_model_path(MODEL)  # "course-tiny" -> the folder data/course-tiny; a hub id stays as it is
device = resolve_device(DEVICE)  # "auto": torch.device("cuda") if there is a GPU, else "mps", else "cpu"
dtype = resolve_dtype(DTYPE, device)  # "auto": torch.float32 on CPU, torch.bfloat16 on a recent GPU

tokenizer = AutoTokenizer.from_pretrained(MODEL_PATH)
model = AutoModelForCausalLM.from_pretrained(MODEL_PATH, dtype=dtype).to(device)
n_params = sum(p.numel() for p in model.parameters())
print(f"{MODEL}: a {model.config.model_type} model, {model.config.num_hidden_layers} layers, {n_params:,} parameters")

# %% [markdown]
# ### Padding: which token, and on which side
#
# A batch is a rectangle: shorter rows are filled with a **pad token**, and the attention mask tells the model
# to ignore them. Two settings matter, and both are on the tokenizer:

# %%
import pandas as pd

pd.DataFrame(
    {
        "token": [tokenizer.eos_token, tokenizer.pad_token],
        "id": [tokenizer.eos_token_id, tokenizer.pad_token_id],
    },
    index=["end of turn (EOS)", "padding"],
).assign(padding_side=["", tokenizer.padding_side])

# %% [markdown]
# **The side.** Here is the same pair of prompts padded both ways (`·` marks a pad):

# %%
pair = ["The carp eats nuts. What does the carp eat?", "Is the fox gold?"]
layouts = {}
for side in ("left", "right"):
    tokenizer.padding_side = side
    ids = tokenizer(pair, padding=True)["input_ids"]
    layouts[side] = [
        " ".join("·" if t == tokenizer.pad_token_id else tokenizer.decode([t]).strip() for t in row) for row in ids
    ]
pd.DataFrame(layouts, index=pair).rename(columns=lambda side: f"padding_side={side!r}")

# %% [markdown]
# - **Generation: left.** `generate` appends each new token at the right end of every row. With right padding the
#   short prompt would continue after its pads; with left padding every row ends with its last real token.
# - **Training: right.** The loss ignores pads either way, but with right padding every row's real tokens sit at
#   positions 0, 1, 2, ... exactly as when the model reads one prompt alone.
#
# **A pad distinct from EOS.** The model must learn to emit EOS (`<|im_end|>` here) at the end of each answer, or
# generation never stops. Code that masks labels by token id (`labels[input_ids == pad_id] = -100`) would also
# mask every real EOS if pad == EOS. `course-tiny` has its own `<|pad|>`. With a tokenizer whose pad is its EOS,
# build the labels before padding and pad them with `-100` by position, as section 5 does.

# %% [markdown]
# ## 2. Why parameter-efficient fine-tuning, in numbers
#
# Full fine-tuning updates every weight: it keeps gradients and optimizer state for all of them, and every task
# gets its own full copy of the model. LoRA freezes the model and trains two small matrices per adapted layer.
#
# How much does that save? We count it for our model and for SmolLM2-1.7B (its shipped config: nothing is
# downloaded) with the course's memory planner, `course_utils.planner`: arithmetic on the config, checked
# against peak memory measured on an H200 GPU (the measurements ship in `data/reference/`).

# %%
from course_utils.architectures import attention_projection_names
from course_utils.planner import Recipe, estimate_training_memory, load_config

ATTENTION = attention_projection_names(model)  # read from the model: ['q_proj', 'k_proj', 'v_proj', 'o_proj']
LLAMA_ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]  # SmolLM2 is a Llama-architecture model
SMOLLM2 = load_config("smollm2-1.7b")  # the shipped config.json of SmolLM2-1.7B: shapes only, no weights

lora_attention = Recipe(method="lora", r=16, lora_alpha=32, target_modules=ATTENTION)
counts = {
    MODEL: estimate_training_memory(model.config, lora_attention),
    "SmolLM2-1.7B": estimate_training_memory(SMOLLM2, lora_attention.replace(target_modules=LLAMA_ATTENTION)),
}
pd.DataFrame(
    {
        "parameters": [est.n_params for est in counts.values()],
        "LoRA r=16 trainable": [est.trainable_params for est in counts.values()],
        "trainable share (%)": [round(100 * est.trainable_params / est.n_params, 2) for est in counts.values()],
    },
    index=list(counts),
)

# %% [markdown]
# LoRA r=16 on the attention projections trains 0.4% of SmolLM2-1.7B's parameters. Our tiny model's layers are so
# narrow (192 wide) that a rank-16 update is not small next to them: the update grows with the layer's width,
# the layer with its square.
#
# ### Memory
#
# Memory depends on which full fine-tuning you compare with. Bytes per parameter, before activations:
#
# | recipe | weights | gradients | Adam's two moments | bytes per parameter |
# |---|---|---|---|---|
# | full FT, **mixed precision** | fp32 master copy, matmuls in bf16 | fp32 | fp32 | 4 + 4 + 8 = 16 |
# | full FT, **pure bf16** | bf16 | bf16 | bf16 | 2 + 2 + 4 = 8 |
# | **LoRA** r=16 on q, v | bf16, frozen | adapter only (fp32) | adapter only (fp32) | about 2 |
#
# Mixed precision is `Trainer(bf16=True)` on a model loaded in float32, the usual way large models are trained.
# Pure bf16 is what you get from loading in bfloat16 and training every weight. Each recipe, planned for a step
# of batch 8 x 512 tokens, beside the H200's measurement of the same step:

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
memory_table = pd.DataFrame(
    {
        "planner GiB": [planned[k].peak_gib for k in LABELS],
        "H200 GiB": [measured[k] for k in LABELS],
        "planner ratio to LoRA": [planned[k].peak_gib / planned["lora_r16_qv"].peak_gib for k in LABELS],
        "H200 ratio to LoRA": [measured[k] / measured["lora_r16_qv"] for k in LABELS],
    },
    index=list(LABELS.values()),
).round(1)
memory_table

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
# LoRA removes a fixed cost: the gradients and Adam moments of every weight (and, in mixed precision, the fp32
# copy). LoRA needs no fp32 copy of the base: frozen weights are never updated, so they stay in bf16.
#
# It does not remove the **activations** saved for the backward pass, which grow with the tokens per step (batch
# x sequence length). So the saving is not one number:
# - small batches or short sequences: the fixed cost dominates and the ratio is large;
# - large batches or long sequences: activations dominate both recipes and the ratio falls towards 1;
# - gradient checkpointing keeps only each layer's input and recomputes the rest: activations shrink, and the
#   ratio rises again.
#
# The planner, over batch sizes (sequence length 512):

# %%
BATCHES = [1, 2, 4, 8, 16, 32]
ratios = {}
for gc in (False, True):
    for key in ("fft_float32", "fft_bfloat16"):
        label = LABELS[key].removeprefix("full FT, ") + (", gradient checkpointing" if gc else "")
        ratios[label] = [
            estimate_training_memory(
                SMOLLM2, memory_recipes[key].replace(batch_size=b, gradient_checkpointing=gc)
            ).peak_gib
            / estimate_training_memory(
                SMOLLM2, memory_recipes["lora_r16_qv"].replace(batch_size=b, gradient_checkpointing=gc)
            ).peak_gib
            for b in BATCHES
        ]
ratio_table = pd.DataFrame(ratios, index=pd.Index(BATCHES, name="batch size")).T.round(1)
ratio_table  # full fine-tuning's peak memory / LoRA r=16 q,v's, planned

# %%
fig, ax = plt.subplots(figsize=(7, 3.8))
for label, values in ratios.items():
    ax.plot(
        BATCHES,
        values,
        marker="o",
        ms=4,
        ls="--" if "checkpointing" in label else "-",
        color="C0" if label.startswith("mixed") else "C1",
        label=label,
    )
for key, color in (("fft_float32", "C0"), ("fft_bfloat16", "C1")):
    ax.scatter(
        [8], [measured[key] / measured["lora_r16_qv"]], marker="*", s=160, color=color, edgecolor="black", zorder=3
    )
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
# Against mixed precision LoRA needs about 7x less memory at batch 1 and under 2x at batch 32; checkpointing
# lifts the ratio at batch 8 from 2.6x to more than 5x. For your own model and batch, plan it before you
# download a weight: `estimate_training_memory(...)` as above, or `course-utils plan <config> --method lora --gc`.

# %% [markdown]
# ### Time: will it fit, and how long?
#
# The planner also predicts how long a step takes (`course_utils.step_time`), from the config again:
# - the matmuls' FLOPs: per token 6 per weight for full fine-tuning, about 4 for LoRA (frozen weights need no
#   weight gradient), plus attention;
# - the bytes the elementwise work moves (norms, activations, LoRA's own casts and dropout), and the kernels
#   the host launches;
# - divided by a GPU's data-sheet peaks (`course_utils.gpus`) times efficiencies fitted once to the H200
#   measurements. Each time comes with the largest error the model made on H200 recipes it was not fitted to.
#
# SmolLM2-1.7B, batch 8 x 512 tokens, 10,000 examples once, on three GPUs you can rent:

# %%
from course_utils.time_plan import time_table

GPUS = ("T4", "L4", "A100-80GB")
smol_lora = lora_attention.replace(target_modules=LLAMA_ATTENTION)  # LoRA r=16 on attention, batch 8 x 512
plans = {
    "LoRA": time_table(SMOLLM2, smol_lora, gpus=GPUS, examples=10_000),
    "QLoRA + checkpointing": time_table(
        SMOLLM2, smol_lora.replace(method="qlora", gradient_checkpointing=True), gpus=GPUS, examples=10_000
    ),
}
print("times:", plans["LoRA"].label)
pd.concat({name: plan.to_frame() for name, plan in plans.items()}).droplevel(1).rename_axis("recipe")

# %% [markdown]
# LoRA does not fit a T4's 16 GB at this batch; QLoRA with gradient checkpointing does, and pays in time. Time
# is set by memory bandwidth and kernel launches as much as by FLOPs: an L4 has twice a T4's FLOP/s but about the
# same bandwidth. On the command line, `course-utils plan smollm2-1.7b --method qlora --gc --within 1` adds 2-8
# GPUs and names the setup with the fewest GPU-hours that finishes within an hour.

# %%
from course_utils.notebook import expect

hours = {s.gpu: s.hours for s in plans["LoRA"].rows if s.fits}
fits_t4 = {name: plan.rows[0].fits for name, plan in plans.items()}  # rows[0]: the T4
expect(
    "on a T4 only QLoRA with checkpointing fits (planned)", fits_t4 == {"LoRA": False, "QLoRA + checkpointing": True}
)
expect(
    "LoRA on SmolLM2-1.7B: an A100 finishes at least 3x sooner than an L4 (predicted)",
    hours["L4"] >= 3 * hours["A100-80GB"],
)

# %% [markdown]
# ## 3. The idea: a low-rank update
#
# A linear layer computes `y = W x`, with `W` of shape `(d_out, d_in)`. Fine-tuning changes `W` by some `ΔW`.
# LoRA's bet: the change a task needs has a low rank, so write it as the product of two thin matrices,
# `ΔW = B A`, and train only those.
#
# - `A` is `(r, d_in)` and `B` is `(d_out, r)`; `r` (the rank) is small, 1 to 64.
# - `W` stays frozen. The update is scaled by `lora_alpha / r`, so changing `r` does not change the step size much.
# - `B` starts at zero: before training, the layer computes exactly what the frozen layer did.
#
# Here it is for our model's first attention projection with `r=16`:

# %%
from course_utils.architectures import layer_shape
from course_utils.figures.lora import draw_lora_update

layer_name, first_proj = next((n, m) for n, m in model.named_modules() if n.endswith(ATTENTION[0]))
d_in, d_out = layer_shape(first_proj)  # (192, 192) here; GPT-2 stores its weight transposed, this reads either
fig = draw_lora_update(d_out=d_out, d_in=d_in, r=16, lora_alpha=32)

# %% [markdown]
# ### The layer, written out
#
# `A` starts random, as peft does (`kaiming_uniform_(a=sqrt(5))`, the default init of `nn.Linear`). Dropout, when
# used, applies to the LoRA path's input only. `from_peft` copies a peft layer's `A` and `B` into ours, and
# `delta_weight` gives `ΔW` as one matrix: what merging (notebook 03) adds to `W`. GPT-2 stores `W` transposed (its
# `Conv1D`), so the class reads the shapes from either kind of layer.

# %%
import math

from torch import nn
from transformers.pytorch_utils import Conv1D


class LoRALinear(nn.Module):
    """A frozen linear layer ``W`` plus a trainable low-rank update: ``y = W x + (lora_alpha / r) * B A x``.

    ``A`` is (r, in_features) and starts random, as peft's default (the init of ``nn.Linear``);
    ``B`` is (out_features, r) and starts at zero, so the wrapped layer first computes exactly
    what ``W`` did. Only ``A`` and ``B`` train: ``r * (in_features + out_features)`` parameters.

    Args:
        base_layer: the layer to adapt: an ``nn.Linear`` (a fused projection such as Phi-3's
            ``qkv_proj`` is one too) or GPT-2's ``Conv1D``. Its weights are frozen.
        r: rank of the update, the inner size of ``B A``.
        lora_alpha: the update is multiplied by ``lora_alpha / r``.
        lora_dropout: dropout on the input of the LoRA path only, as peft does.
    """

    def __init__(self, base_layer: nn.Module, r: int = 8, lora_alpha: float = 16, lora_dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(r, int) or r < 1:
            raise ValueError(f"r must be a positive integer, got {r!r}.")
        if isinstance(base_layer, Conv1D):  # GPT-2 stores W as (in, out): peft calls it fan_in_fan_out
            self.in_features, self.out_features = base_layer.nx, base_layer.nf
        elif isinstance(base_layer, nn.Linear):  # W stored as (out, in)
            self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        else:
            raise TypeError(f"LoRALinear adapts an nn.Linear or a Conv1D, got {type(base_layer).__name__}.")
        self.fan_in_fan_out = isinstance(base_layer, Conv1D)
        self.base_layer = base_layer.requires_grad_(False)  # W (and its bias) stay frozen
        self.r = r
        self.lora_alpha = lora_alpha
        self.scaling = lora_alpha / r
        dtype, device = base_layer.weight.dtype, base_layer.weight.device
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, dtype=dtype, device=device))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, dtype=dtype, device=device))  # (out, r): zero
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # peft's default init of A
        self.dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.dropout(x) @ self.lora_A.T @ self.lora_B.T  # (..., in) -> (..., r) -> (..., out)
        return self.base_layer(x) + update * self.scaling

    def lora_parameter_count(self) -> int:
        """Trainable parameters this layer adds: ``r * (in_features + out_features)``."""
        return self.lora_A.numel() + self.lora_B.numel()

    def delta_weight(self) -> torch.Tensor:
        """The update as one matrix, ``scaling * B @ A``, in the base weight's layout: what merging adds to ``W``."""
        delta = self.scaling * self.lora_B @ self.lora_A  # (out, in)
        return delta.T if self.fan_in_fan_out else delta

    @classmethod
    def from_peft(cls, peft_layer: nn.Module, adapter_name: str = "default") -> "LoRALinear":
        """A ``LoRALinear`` with the same base layer, ``A``, ``B`` and scaling as one of peft's LoRA layers."""
        layer = cls(
            peft_layer.get_base_layer(), r=peft_layer.r[adapter_name], lora_alpha=peft_layer.lora_alpha[adapter_name]
        )
        with torch.no_grad():
            layer.lora_A.copy_(peft_layer.lora_A[adapter_name].weight)
            layer.lora_B.copy_(peft_layer.lora_B[adapter_name].weight)
        layer.scaling = peft_layer.scaling[adapter_name]
        return layer

    def extra_repr(self) -> str:
        return f"r={self.r}, lora_alpha={self.lora_alpha}, scaling={self.scaling:g}"


# %% [markdown]
# We wrap a copy of the model's first attention projection: at start (`B = 0`) the output is unchanged, and the
# trainable parameters are `r * (d_in + d_out)`.

# %%
import copy

from course_utils.architectures import as_linear

base_linear = as_linear(first_proj)  # a float32 nn.Linear copy of the projection, whatever the model's dtype
torch.manual_seed(SEED)
mine = LoRALinear(copy.deepcopy(base_linear), r=4, lora_alpha=8)
x = torch.randn(2, 5, d_in)
print(mine)
print("output unchanged at start (B = 0):", torch.equal(mine(x), base_linear(x)))
print(f"trainable parameters: {mine.lora_parameter_count()} = r * (d_in + d_out) = 4 * ({d_in} + {d_out})")

# %% [markdown]
# Now peft's own LoRA layer on the same projection. `inject_adapter_in_model` puts it into any `nn.Module`; we
# give its `B` non-zero values (as after training), copy its `A` and `B` into our class with `from_peft`, and
# compare the outputs.

# %%
from collections import OrderedDict

from peft import LoraConfig, inject_adapter_in_model

from course_utils.notebook import expect

holder = nn.Sequential(OrderedDict(proj=copy.deepcopy(base_linear)))
inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["proj"]), holder)
peft_layer = holder.proj
torch.manual_seed(SEED)
nn.init.normal_(peft_layer.lora_B["default"].weight, std=0.02)  # as if trained: B is no longer zero

mine = LoRALinear.from_peft(peft_layer)
with torch.no_grad():
    ours, theirs = mine(x), peft_layer(x)
    update = (theirs - base_linear(x)).abs().max().item()
    delta_diff = (mine.delta_weight() - peft_layer.get_delta_weight("default")).abs().max().item()
diff = (ours - theirs).abs().max().item()
print(f"the update changes the output by up to {update:.3f}; ours and peft's differ by at most {diff:.1e}")

# %%
expect("the update changes the layer's output (max |change| > 0.01)", update > 0.01)
expect("our layer computes what peft's does (max |difference| < 1e-6)", diff < 1e-6 and delta_diff < 1e-6)

# %% [markdown]
# This class is `course_utils.lora_scratch.LoRALinear`, word for word: later notebooks import it from there.

# %% [markdown]
# ## 4. LoRA with peft: `LoraConfig` and `get_peft_model`
#
# peft does the wrapping for every targeted layer of a model. `target_modules` comes from the model (the attention
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

# %% [markdown]
# Where the trainable parameters sit, per target (`course_utils.architectures.trainable_parameter_table`); the
# planner of section 2 counted the same number from the config alone:

# %%
from course_utils.architectures import trainable_parameter_table

table = trainable_parameter_table(peft_model)
print(table)
print(f"the planner's count for this config (section 2): {counts[MODEL].trainable_params:,}")

# %% [markdown]
# ## 5. Train the adapter with the plain `Trainer`
#
# The task, `shout`: each question carries its fact, and the answer repeats it in capitals (`"The carp eats nuts.
# What does the carp eat?"` -> `"THE CARP EATS NUTS."`). The base model answers in a normal sentence, so it scores
# about 0% by exact match. A freshly wrapped model has `B = 0`: it still answers like the base model.
#
# The rows are chat conversations (`messages`: a user turn and the assistant's answer). `load_task` reads the
# course's JSON Lines files into a `datasets.DatasetDict`; `evaluate_task` generates a greedy answer for each
# held-out question (left padding) and counts exact matches.

# %% tags=["nbval-ignore-output"]
from course_utils.data import load_task
from course_utils.evaluation import evaluate_task

# shown, not claimed: the base's accuracy enters the lift claimed after training
shout = load_task("shout")
before = evaluate_task(peft_model, tokenizer, shout["eval"], progress=False, name="before training")
print(f"shout eval accuracy before training: {before.accuracy:.1%} ({before.correct}/{before.total})")
before

# %% [markdown]
# Accuracy comes out of generation, whose last digits can differ between CPU families; the lesson's claim comes
# after training, as a lift over this number.
#
# ### The loss on the answer only: masking the prompt
#
# A training row is the whole conversation, but the model should learn to *answer*, not to repeat the prompt.
# `Trainer` computes the cross-entropy on every position whose label is not `-100` (PyTorch's `ignore_index`), so
# we copy the token ids into the labels and set the prompt's labels to `-100`. One row, by hand:

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
# `course_utils.data.tokenize_for_sft` does this for every row (and stops with a clear error for a chat template
# that renders the prompt differently inside the conversation, where this simple cut would be wrong). It gives
# the same ids and labels:

# %%
from course_utils.data import tokenize_for_sft

train_dataset = tokenize_for_sft(shout["train"], tokenizer)
row = train_dataset[0]
print("row 0: same input_ids", row["input_ids"] == input_ids, "| same labels", row["labels"] == labels)

# %% [markdown]
# ### The budget: learning rate, steps, batch size
#
# `"auto"` in the parameters cell picks them by model size (`course_utils.hyperparameters.suggest`): LoRA on a
# tiny model takes a large learning rate and few steps; a real model takes a smaller rate. A number in the
# parameters cell wins over the suggestion.

# %%
from course_utils.hyperparameters import resolve, suggest

hp = suggest(model, method="lora")
learning_rate = resolve(LEARNING_RATE, hp.learning_rate)
max_steps = resolve(MAX_STEPS, hp.max_steps)
batch_size = resolve(BATCH_SIZE, hp.batch_size)
pd.DataFrame(
    {
        "value": [f"{v:g}" for v in (learning_rate, max_steps, batch_size)],
        "parameters cell": [LEARNING_RATE, MAX_STEPS, BATCH_SIZE],
        "suggestion's source": [hp.source[k] for k in ("learning_rate", "max_steps", "batch_size")],
    },
    index=["learning_rate", "max_steps", "batch_size"],
)

# %% [markdown]
# ### `TrainingArguments` and `Trainer`, argument by argument
#
# - `train_dataset`: the masked rows above;
# - `DataCollatorForSeq2Seq` pads `input_ids` with the pad token and `labels` with `-100`, by position, to the
#   longest row of each batch (on the right, as training wants);
# - `TrainingArguments`: every setting of the run, each explained in its comment.

# %% tags=["nbval-ignore-output"]
import time
from pathlib import Path

from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer, TrainingArguments

tokenizer.padding_side = "right"  # training: real tokens at positions 0, 1, 2, ... (section 1)
args = TrainingArguments(
    output_dir=str(Path("outputs") / "01-trainer"),  # checkpoints would go here; save_strategy="no" writes none
    max_steps=max_steps,  # optimizer steps (instead of num_train_epochs)
    per_device_train_batch_size=batch_size,  # rows per step on each device
    learning_rate=learning_rate,  # AdamW's step size; LoRA takes larger ones than full fine-tuning
    lr_scheduler_type="constant",  # keep the rate for the whole (short) run
    warmup_steps=0,  # no warm-up: B starts at zero, so the first steps cannot wreck the model
    logging_steps=min(10, max_steps),  # record the loss every 10 steps (a shorter run: at its end) in log_history
    save_strategy="no",  # no checkpoints: we save the adapter ourselves (section 7)
    report_to="none",  # no Weights & Biases, TensorBoard, ...
    seed=SEED,  # the same initialisation of A ...
    data_seed=SEED,  # ... and the same order of rows on every run
    use_cpu=device.type == "cpu",  # train where the model is
    bf16=device.type == "cuda" and dtype == torch.bfloat16,  # 16-bit matmuls on a GPU with the model in bf16
    fp16=device.type == "cuda" and dtype == torch.float16,  # ... or fp16 on an older GPU (T4, V100)
    dataloader_pin_memory=False,  # pinned memory only speeds copies to a GPU (and warns on a CPU)
    disable_tqdm=True,  # no progress bar: we plot the losses instead
    remove_unused_columns=False,  # keep our columns: the Trainer cannot read them from PeftModel.forward(**kwargs)
)
trainer = Trainer(
    model=peft_model,
    args=args,
    train_dataset=train_dataset,
    data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
    processing_class=tokenizer,
)
trainer.remove_callback(PrinterCallback)  # no dict printed per logging step: the losses are plotted below

start = time.perf_counter()
trainer.train()
train_seconds = time.perf_counter() - start
print(f"{trainer.state.global_step} steps in {train_seconds:.1f} s")

# %% tags=["nbval-ignore-output"]
losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
logged_steps = [log["step"] for log in trainer.state.log_history if "loss" in log]
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(logged_steps, losses, marker="o", ms=3)
ax.set(title="Training loss, LoRA r=16 on shout", xlabel="step", ylabel="loss (answer tokens)")
plt.show()
after = evaluate_task(peft_model, tokenizer, shout["eval"], progress=False, name="after training")
print(f"loss: first log {losses[0]:.3f} -> last log {losses[-1]:.3f}")
print(f"shout eval accuracy: {before.accuracy:.1%} before -> {after.accuracy:.1%} after ({after.total} questions)")

# %%
expect("the training loss fell to less than half of its first logged value", losses[-1] < 0.5 * losses[0])
expect(
    "shout accuracy rises by >= 50 points over the base model",
    after.accuracy - before.accuracy >= 0.50,
    hint="train longer (MAX_STEPS) or with another LEARNING_RATE; look at the answers below",
)

# %% [markdown]
# A few held-out questions and the adapted model's answers:

# %% tags=["nbval-ignore-output"]
# shown, not claimed: generated text can differ in its last token between machines
after

# %% [markdown]
# ## 6. The same with the course's helpers
#
# The rest of the course writes these steps with three helpers. Each does what sections 1 and 5 wrote out, and a
# little more:
#
# - `load_tokenizer(MODEL)`: `AutoTokenizer.from_pretrained`, plus a pad token (EOS) when there is none, and
#   left padding for generation;
# - `load_model(MODEL, dtype=DTYPE, device=DEVICE)`: resolves `"auto"`, loads, moves to the device, places a 4-bit
#   model (notebook 06), and explains a name that cannot be loaded offline;
# - `cpu_friendly_args(...)`: the `TrainingArguments` above, with a temporary `output_dir`.
#
# `train_lora(model, tokenizer, rows, lora_config, ...)` is section 5 in one call.

# %%
from course_utils.loading import load_model, load_tokenizer
from course_utils.training import cpu_friendly_args

helper_tokenizer = load_tokenizer(MODEL)
helper_model = load_model(MODEL, dtype=DTYPE, device=DEVICE)
helper_args = cpu_friendly_args(
    max_steps=max_steps,
    learning_rate=learning_rate,
    per_device_train_batch_size=batch_size,
    logging_steps=min(10, max_steps),
)
same_args = [
    name
    for name in ("max_steps", "per_device_train_batch_size", "learning_rate", "lr_scheduler_type", "warmup_steps")
    + ("logging_steps", "save_strategy", "report_to", "seed", "data_seed", "use_cpu", "bf16", "fp16")
    + ("dataloader_pin_memory", "disable_tqdm", "remove_unused_columns")
    if getattr(helper_args, name) == getattr(args, name)
]
print(f"load_tokenizer: pad token {helper_tokenizer.pad_token!r}, padding side {helper_tokenizer.padding_side!r}")
print(f"cpu_friendly_args: {len(same_args)} of 16 settings equal to ours")
expect(
    "load_model gives the model in the same dtype, on the same device, as section 1",
    helper_model.dtype == dtype and helper_model.device.type == device.type,
)
del helper_model

# %% [markdown]
# ## 7. Save and share the adapter
#
# `save_pretrained` on a `PeftModel` writes only the adapter: `A`, `B` and its config. We save it beside this
# notebook, in `outputs/`, where it survives the session (`outputs_dir` picks Google Drive on Colab when mounted).

# %% tags=["nbval-ignore-output"]
from course_utils.paths import outputs_dir

ADAPTER_DIR = outputs_dir("01-shout-lora")  # ./outputs/01-shout-lora (on Colab: in your Google Drive, if mounted)
peft_model.save_pretrained(ADAPTER_DIR)  # re-running this notebook replaces its own adapter here

# The weights file only: the config and README beside it hold the base model's path, whose length varies.
adapter_bytes = (ADAPTER_DIR / "adapter_model.safetensors").stat().st_size
model_bytes = sum(p.numel() * p.element_size() for p in peft_model.get_base_model().parameters() if not p.requires_grad)
print(f"saved to {ADAPTER_DIR.parent.name}/{ADAPTER_DIR.name}: {sorted(p.name for p in ADAPTER_DIR.iterdir())}")
print(f"adapter weights on disk: {adapter_bytes / 1024:.0f} KiB; the model's weights: {model_bytes / 2**20:.1f} MiB")

# %%
expect("the adapter file is at least 10x smaller than the model's weights", model_bytes >= 10 * adapter_bytes)

# %% [markdown]
# To share it, `push_to_hub` uploads the same files to a repository of yours on the Hugging Face Hub. Replace
# `your-name` with your user name and log in first (`hf auth login`, or `HF_TOKEN` in the environment). The cell
# uploads nothing offline, without a token, or with the placeholder name.

# %%
import os

from huggingface_hub import get_token

HUB_REPO = "your-name/01-shout-lora"  # <- your user name / a repository name
offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}
if offline or get_token() is None or HUB_REPO.startswith("your-name/"):
    print("Not uploaded: set HUB_REPO to your user name, log in and unset HF_HUB_OFFLINE to share the adapter.")
else:
    peft_model.push_to_hub(HUB_REPO)  # the adapter only: a few hundred KiB, not the model
    print(f"uploaded to https://huggingface.co/{HUB_REPO}")

# %% [markdown]
# Anyone can then load it on the same base model: `PeftModel.from_pretrained(base_model, "your-name/01-shout-lora")`
# (notebook 02).
#
# ## 8. Experiment: rank and target layers
#
# How small can the adapter be? We train 3 adapters of growing rank on the attention projections and two on every
# linear layer (`"all-linear"`), each for `SWEEP_STEPS` steps of `SWEEP_BATCH` rows with `lora_alpha = 2 r` (the
# same scaling), with `train_lora`.

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
            helper_tokenizer,
            shout["train"],
            config,
            max_steps=SWEEP_STEPS,
            batch_size=SWEEP_BATCH,
            learning_rate=learning_rate,
        )
    result = evaluate_task(run.model, helper_tokenizer, shout["eval"], progress=False)
    trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    sweep.append(
        {"targets": label, "r": r, "trainable": trainable, "loss": run.losses[-1], "accuracy": result.accuracy}
    )
sweep_table = pd.DataFrame(sweep)
sweep_table[["targets", "r", "trainable"]]  # counts: the same on every machine

# %% tags=["nbval-ignore-output"]
sweep_table.round(3)

# %%
by_rank = {row["r"]: row["accuracy"] for row in sweep if row["targets"] == "attention"}
expect(
    f"on this budget, r={SWEEP_RANKS[-1]} on attention beats r={SWEEP_RANKS[0]} by at least 30 points",
    by_rank[SWEEP_RANKS[-1]] - by_rank[SWEEP_RANKS[0]] >= 0.30,
    hint="on a wide model a small rank is often enough: compare the table, not this margin",
)

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

# %% [markdown]
# **Reading the plot.** On this short budget accuracy climbs with the rank on our 1.8M-parameter model: the
# smallest adapters have not learned the style yet. The budget matters as much as the rank: with a larger one
# (`SWEEP_STEPS = 100`, `SWEEP_BATCH = 16`) small ranks catch up. Differences of two or three questions out of 48
# are within what another seed would change.
#
# **On a real model** a small rank is often enough: our layers are 192 wide, and in a model of 2048 the same rank
# is a far smaller share of the layer. The LoRA paper found r=1 on W_q and W_v about as good as r=64 for GPT-3 175B
# (its Table 6). To check on your model, run this notebook with `MODEL = "smollm2-135m"`.
#
# Memory is no reason to pick a small rank. The planner gives SmolLM2-1.7B's step (LoRA on q, v, batch 8 x 512)
# the same size for r=1 and r=64, within 1%:

# %%
pd.DataFrame(
    [
        {
            "r": r,
            "trainable": est.trainable_params,
            "planned peak GiB": round(est.peak_gib, 2),
        }
        for r in (1, 16, 64)
        for est in [estimate_training_memory(SMOLLM2, memory_recipes["lora_r16_qv"].replace(r=r, lora_alpha=2 * r))]
    ]
).set_index("r")

# %% [markdown]
# ## 9. Your own data in three lines
#
# Your data needs one thing: rows in the `messages` format, one JSON object per line. Here are six, written to
# `outputs/` (replace them with yours: a few hundred rows are a good start).

# %%
import json

tickets = {
    "My invoice shows the wrong amount.": "billing",
    "I was charged twice this month.": "billing",
    "The parcel has not arrived yet.": "shipping",
    "Where is my order?": "shipping",
    "I cannot log in to my account.": "login",
    "The password reset link does not work.": "login",
}
MY_DATA = outputs_dir("01-my-tickets.jsonl")  # outputs/01-my-tickets.jsonl
with MY_DATA.open("w") as fh:
    for question, team in tickets.items():
        user = f"Which team handles this ticket: billing, shipping or login? {question}"
        fh.write(json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": team}]}))
        fh.write("\n")
print(MY_DATA.read_text().splitlines()[0])

# %% [markdown]
# Then load, train, evaluate. `load_task` on a file holds out a fifth of the rows (the same ones on every run) as
# `eval`. `scorer="contains"` counts an answer as right when it contains the expected text (exact match is the
# default). Five steps on four rows only show the path; with your data, train for real.

# %% tags=["nbval-ignore-output"]
my_task = load_task(MY_DATA)
my_run = train_lora(
    load_model(MODEL, dtype=DTYPE, device=DEVICE), helper_tokenizer, my_task["train"], lora_config, max_steps=5
)
my_result = evaluate_task(my_run.model, helper_tokenizer, my_task["eval"], scorer="contains", progress=False)
my_result

# %%
print(f"{len(my_task['train'])} rows to train on, {len(my_task['eval'])} held out")
expect(
    "the three lines ran and scored every held-out row",
    my_result.total == len(my_task["eval"]) > 0 and len(my_task["train"]) + my_result.total == len(tickets),
)

# %% [markdown]
# ## What we measured

# %% tags=["nbval-ignore-output"]
# shown, not claimed: a summary of the numbers above, each claimed where it was measured
best = max(sweep, key=lambda row: (row["accuracy"], -row["trainable"]))
pd.DataFrame(
    {
        "trainable parameters, LoRA r=16 on attention (this model)": f"{table.trainable:,} of {n_params:,} "
        f"({table.trainable / n_params:.2%})",
        "same, SmolLM2-1.7B (planner)": f"{counts['SmolLM2-1.7B'].trainable_params:,} "
        f"({counts['SmolLM2-1.7B'].trainable_params / counts['SmolLM2-1.7B'].n_params:.2%})",
        "peak memory SmolLM2-1.7B, batch 8 x 512, full FT mixed precision / LoRA r=16 q,v (H200)": (
            f"{measured['fft_float32']:.1f} / {measured['lora_r16_qv']:.1f} GiB"
        ),
        "our LoRA layer vs peft's, max |difference|": f"{diff:.1e}",
        f"shout eval accuracy, base -> after {max_steps} steps": f"{before.accuracy:.1%} -> {after.accuracy:.1%}",
        "training loss, first -> last log": f"{losses[0]:.3f} -> {losses[-1]:.3f}",
        "training time (s)": f"{train_seconds:.1f}",
        "adapter weights on disk vs model weights": f"{adapter_bytes / 1024:.0f} KiB vs {model_bytes / 2**20:.1f} MiB",
        f"sweep: best accuracy after {SWEEP_STEPS} steps": f"{best['accuracy']:.1%} ({best['targets']}, r={best['r']})",
    },
    index=["measured"],
).T

# %%
from course_utils.notebook import record_metrics

_ = record_metrics(
    model=MODEL,
    accuracy_before=before.accuracy,
    accuracy_after=after.accuracy,
    train_seconds=round(train_seconds, 2),
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
