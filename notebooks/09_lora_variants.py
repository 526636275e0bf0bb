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
# # 09 · LoRA's variants and adapter combinations, measured on one budget
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/peft-course/peft-course/blob/main/notebooks/09_lora_variants.ipynb)
#
# `LoraConfig` has a dozen switches: `use_rslora`, `use_dora`, `init_lora_weights="pissa"`, `"olora"`, `"eva"`,
# LoftQ for a 4-bit base, and the LoRA+ optimizer beside it. Each is a knob on the same update `W + s · B A`. This
# notebook trains every variant on **one task, one step budget and one seed protocol**, reports the spread over
# seeds so that noise is not read as a ranking, and shows the trap each variant hides in code. Then it combines
# two adapters five ways with `add_weighted_adapter`, and evaluates an adapter with lm-evaluation-harness.
#
# **You will learn to**
# - switch each variant on with peft's own calls, and read what it costs: trainable parameters, time, memory,
#   inference before and after merging;
# - tell a difference between variants from seed noise (mean ± spread over 3 seeds);
# - convert PiSSA/OLoRA adapters back to plain LoRA before they share a base; merge DoRA before serving; combine
#   rsLoRA adapters without a wrong scaling;
# - combine adapters with `cat`, `svd`, `ties`, `dare_ties`, `magnitude_prune`, and measure what each keeps;
# - debug adapter state with `get_model_status` / `get_layer_status`;
# - run the course's task in lm-evaluation-harness, offline, and check it agrees with the course's evaluation.
#
# **Time:** about a minute on 2 CPU cores with the default `course-tiny` model: the budget is deliberately
# small (15 steps of 8 examples per run, 21 runs). On a GPU with a SmolLM2 model, budget 10-20 minutes.

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
DTYPE = "auto"  # float32 on CPU, bfloat16 on recent GPUs, float16 on older GPUs (T4, V100) and on Apple's MPS
DEVICE = "auto"  # cuda > mps > cpu
LEARNING_RATE = "auto"  # "auto": 2.5x the model's usual LoRA rate (course_utils.hyperparameters), for a short run
MAX_STEPS = "auto"  # "auto": a third of the model's usual LoRA steps (15 on course-tiny): a small budget, on purpose
BATCH_SIZE = "auto"  # "auto": half the usual batch (8 on course-tiny)
SEEDS = (0, 1, 2)  # each seed fixes the adapter's random start AND the order of the batches
TASK, OTHER_TASK = "shout", "terse"  # the variants train on TASK; section 7 combines TASK and OTHER_TASK adapters
RANK, ALPHA = 8, 16
SEED = 0

# %% tags=["nbval-ignore-output"]
info = setup(SEED, model=MODEL)
# shown, not claimed: this machine's device and library versions

# %% [markdown]
# ## 1. The idea: four knobs on `W + s · B A`
#
# Plain LoRA adds `s · B A` to a frozen weight `W`, with `s = lora_alpha / r` and `B` starting at zero. The
# variants change one thing each:
# - **the scaling** (rsLoRA): `s = lora_alpha / sqrt(r)`, so a high rank does not shrink the update;
# - **a length per row** (DoRA): each row of `W + s·BA` is normalised and multiplied by a trainable magnitude;
# - **the start** (PiSSA, OLoRA, EVA): `B A` starts from `W`'s top singular vectors (PiSSA), a QR of `W` (OLoRA), or
#   the directions the layer's *inputs* vary most along (EVA); PiSSA and OLoRA subtract that start from `W`;
# - **the quantized start** (LoftQ): with a 4-bit base, `B A` starts by cancelling the quantization error.
#
# LoRA+ changes the optimizer instead: `B` learns faster than `A`.

# %%
from course_utils.figures.variants import draw_variant_knobs

fig = draw_variant_knobs(lora_alpha=ALPHA)

# %% [markdown]
# ## 2. One budget, one seed protocol
#
# Every variant gets the same batches in the same order for the same number of steps; the seed fixes the order
# and the adapter's random start. `seeded_batches` builds them (loss on the answer only, as in notebook 01) and
# `train_steps` is a plain PyTorch loop: forward, backward, AdamW step. A `Trainer` would do the same with more
# machinery; 21 short runs make its start-up cost visible.
#
# The budget is small on purpose: 15 steps of 8 examples, a sixth of what notebook 01 trains, so that 21 runs fit
# in under a minute on a CPU. Exact-match accuracy is then far from its ceiling and the seeds disagree: that
# is the point of reporting the spread. The **held-out loss** (the model's loss on the answers of the 48 eval
# conversations, teacher-forced) moves long before whole answers come out right, and it varies far less between
# seeds: it is what the claims below check.

# %%
import copy

import pandas as pd
import torch

from course_utils.data import load_task
from course_utils.evaluation import evaluate_task
from course_utils.hyperparameters import resolve, suggest
from course_utils.loading import load_model, load_tokenizer, resolve_device, resolve_dtype
from course_utils.variants import seeded_batches, short_budget, train_steps

pd.options.display.float_format = "{:.3g}".format
device = resolve_device(DEVICE)
dtype = resolve_dtype(DTYPE, device)
tokenizer = load_tokenizer(MODEL)
base = load_model(MODEL, dtype=dtype, device=device)
short = short_budget(suggest(base, method="lora"))  # a third of the usual steps, half the batch, 2.5x the rate
lr = resolve(LEARNING_RATE, short.learning_rate)
steps = resolve(MAX_STEPS, short.max_steps)
batch_size = resolve(BATCH_SIZE, short.batch_size)
train_ds, eval_ds = load_task(TASK, "train"), load_task(TASK, "eval")
batches = {seed: seeded_batches(train_ds, tokenizer, steps=steps, batch_size=batch_size, seed=seed) for seed in SEEDS}
eval_batch = seeded_batches(eval_ds, tokenizer, steps=1, batch_size=len(eval_ds), seed=0)[0]  # all 48, one batch


def held_out_loss(model):
    """Mean loss on the answers of every eval conversation (teacher-forced: no generation; lower is better)."""
    with torch.no_grad():
        return model(**{k: v.to(device) for k, v in eval_batch.items()}).loss.item()


print(f"{TASK}: {len(train_ds)} train / {len(eval_ds)} eval conversations; {len(SEEDS)} seeds")
print(f"budget per run: {steps} steps x {batch_size} examples = {steps * batch_size} examples seen")

# %% tags=["nbval-ignore-output"]
acc_base = evaluate_task(base, tokenizer, eval_ds, progress=False).accuracy
loss_base = held_out_loss(base)
print(
    f"{TASK} accuracy of the base model, no adapter: {acc_base:.1%}; held-out loss {loss_base:.3f}; learning rate {lr:g}"
)

# %%
from course_utils.notebook import expect

expect(
    f"the base model answers at most 10% of {TASK} questions in the task's form",
    acc_base <= 0.10,
    hint="a model that already does the task leaves no room for a lift: pick another TASK",
)

# %% [markdown]
# ## 3. Each variant in peft's own calls
#
# Every variant is one keyword on `LoraConfig` (LoRA+ is an optimizer). A DoRA run in full, with the library's
# calls:

# %% tags=["nbval-ignore-output"]
from peft import LoraConfig, get_peft_model

torch.manual_seed(0)  # seed 0's random start of A
config = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], use_dora=True)
dora = get_peft_model(copy.deepcopy(base), config)  # a copy: the base stays clean for the other variants
losses = train_steps(dora, batches[0], learning_rate=lr)
dora.print_trainable_parameters()
print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
# shown, not claimed: the same run is one cell of the table in section 4, where its claims are checked

# %% [markdown]
# The other variants differ only in that keyword. EVA needs one more call (a pass over some batches to find
# each layer's input directions), and LoRA+ needs its optimizer:
#
# ```python
# LoraConfig(..., use_rslora=True)               # rsLoRA
# LoraConfig(..., init_lora_weights="pissa")     # PiSSA (also "pissa_niter_4", a faster randomized SVD)
# LoraConfig(..., init_lora_weights="olora")     # OLoRA
# LoraConfig(..., init_lora_weights="eva", eva_config=EvaConfig())
# initialize_lora_eva_weights(model, dataloader)   # EVA, then train
# create_loraplus_optimizer(model, optimizer_cls=torch.optim.AdamW, lr=lr, loraplus_lr_ratio=4)  # LoRA+
# ```
#
# `course_utils.variants.variant_options(name)` holds these keywords by name; the loop below uses it.

# %%
from peft import EvaConfig, initialize_lora_eva_weights
from peft.optimizers import create_loraplus_optimizer

from course_utils.memory import MemoryTracker
from course_utils.variants import forward_flops, forward_seconds, mean_spread, variant_options

VARIANT_NAMES = ["LoRA", "rsLoRA", "DoRA", "PiSSA", "OLoRA", "EVA", "LoRA+"]
LORAPLUS_RATIO = 4  # B's learning rate / A's (the paper suggests up to 16 with a smaller base rate)
step_input = {"input_ids": batches[0][0]["input_ids"][:1, -1:].to(device)}  # one token: a decoding step


def make_variant(name, seed):
    """The base wrapped with variant `name`, its seed's random start, and its optimizer (None: AdamW)."""
    torch.manual_seed(seed)
    options = {"init_lora_weights": "eva", "eva_config": EvaConfig()} if name == "EVA" else variant_options(name)
    cfg = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], **options)
    model = get_peft_model(copy.deepcopy(base), cfg, low_cpu_mem_usage=name == "EVA")
    if name == "EVA":  # EVA's start: the top directions of each layer's inputs over a few batches
        inputs = [{k: v.to(device) for k, v in b.items() if k != "labels"} for b in batches[seed][:4]]
        initialize_lora_eva_weights(model, dataloader=inputs, show_progress_bar=False)
    optimizer = None
    if name == "LoRA+":
        optimizer = create_loraplus_optimizer(
            model, optimizer_cls=torch.optim.AdamW, lr=lr, loraplus_lr_ratio=LORAPLUS_RATIO
        )
    return model, optimizer


def inference_cost(model):
    """FLOPs and fastest time of one decoding step, before and after merging (on a copy)."""
    merged = copy.deepcopy(model).merge_and_unload()
    return {
        "step GFLOP unmerged": forward_flops(model, step_input) / 1e9,
        "step GFLOP merged": forward_flops(merged, step_input) / 1e9,
        "step ms unmerged": 1e3 * forward_seconds(model, step_input, repeats=20),
        "step ms merged": 1e3 * forward_seconds(merged, step_input, repeats=20),
    }


# %% [markdown]
# ## 4. The variants side by side
#
# Each variant trains once per seed; the table gives accuracy as **mean ± standard deviation over the seeds**,
# then trainable parameters, training seconds, the memory the run added (peak resident memory of this process, so
# on a CPU it includes the allocator's noise), and the cost of one decoding step before and after merging.
# Timings here come from a shared CPU: compare them within the table, not with another machine.

# %% tags=["nbval-ignore-output"]
runs, loss_ratio = {}, {}  # (variant, seed) -> accuracy; held-out loss / the base's
costs, models_seed0 = {}, {}
tracker = MemoryTracker("cpu" if device.type == "cpu" else "auto")
for seed in SEEDS:
    for name in VARIANT_NAMES:
        model, optimizer = make_variant(name, seed)
        with tracker.phase(f"{name} seed {seed}") as record:
            train_steps(model, batches[seed], learning_rate=lr, optimizer=optimizer)
        runs[name, seed] = evaluate_task(model, tokenizer, eval_ds, progress=False).accuracy
        loss_ratio[name, seed] = held_out_loss(model) / loss_base
        costs.setdefault(name, []).append((record.seconds, (record.peak_bytes - record.start_bytes) / 2**20))
        if seed == SEEDS[0]:
            models_seed0[name] = model
        if (name, seed) == ("rsLoRA", SEEDS[-1]):
            rs_other_seed = model  # section 5 combines it with seed 0's
tracker.close()

rows = {}
for name in VARIANT_NAMES:
    model = models_seed0[name]
    rows[name] = {
        "accuracy % (mean ± std)": mean_spread([runs[name, s] for s in SEEDS], scale=100),
        "min %": 100 * min(runs[name, s] for s in SEEDS),
        "held-out loss / base's": mean_spread([loss_ratio[name, s] for s in SEEDS], digits=2),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train s": sum(c[0] for c in costs[name]) / len(SEEDS),
        "peak +MiB": max(c[1] for c in costs[name]),
        **inference_cost(model),
    }
variant_table = pd.DataFrame(rows).T
variant_table

# %% [markdown]
# Read the table with the spread in mind: a variant whose mean is higher than LoRA's by less than the two standard
# deviations is **not** shown to be better by this budget. What holds in every seed is the drop of the held-out
# loss (a ratio of 0.5 halves the base model's loss on the answers):

# %%
worst = {name: max(loss_ratio[name, s] for s in SEEDS) for name in VARIANT_NAMES}
expect(
    f"every variant cuts the held-out {TASK} loss by at least a third of the base model's, in every seed",
    max(worst.values()) <= 2 / 3,
    hint="the budget is small: raise MAX_STEPS (e.g. 60) or LEARNING_RATE on another model",
)
counts = variant_table["trainable"].astype(int)
dora_extra = sum(m.out_features for n, m in base.named_modules() if n.endswith(("q_proj", "v_proj")))
expect(
    "DoRA trains exactly one magnitude per output row of each adapted layer more than LoRA",
    counts["DoRA"] - counts["LoRA"] == dora_extra,
)
expect(
    "rsLoRA, PiSSA, OLoRA, EVA and LoRA+ train exactly as many parameters as LoRA",
    all(counts[n] == counts["LoRA"] for n in ("rsLoRA", "PiSSA", "OLoRA", "EVA", "LoRA+")),
)
print("trainable parameters:", {name: int(n) for name, n in counts.items()})

# %% [markdown]
# ## 5. The traps, in code
#
# ### DoRA costs more per token until it is merged
#
# Before merging, a DoRA layer rebuilds `B A` and the norm of every row of `W + s·BA` in **every forward pass**,
# whatever the number of tokens. During generation a step processes one token, so this fixed cost dominates. The
# FLOP count in the table above is exact (counted, not timed); merging folds the magnitude into `W` and the cost
# is gone.

# %%
dora_ratio = variant_table.loc["DoRA", "step GFLOP unmerged"] / variant_table.loc["DoRA", "step GFLOP merged"]
lora_ratio = variant_table.loc["LoRA", "step GFLOP unmerged"] / variant_table.loc["LoRA", "step GFLOP merged"]
expect("an unmerged DoRA decoding step costs at least twice the FLOPs of the merged model", dora_ratio >= 2)
expect("an unmerged plain LoRA step costs less than 1.5x the merged model", lora_ratio < 1.5)
with torch.no_grad():
    dora_out = models_seed0["DoRA"](**step_input).logits
    merged_out = copy.deepcopy(models_seed0["DoRA"]).merge_and_unload()(**step_input).logits
expect("the merged DoRA model gives the unmerged one's logits within 1e-4", (dora_out - merged_out).abs().max() < 1e-4)

# %% [markdown]
# ### rsLoRA's scaling, and what happens to it when adapters are combined
#
# rsLoRA's scaling is `lora_alpha / sqrt(r)`. peft stores it per layer (`layer.scaling[adapter]`); check it:

# %%
import math

from course_utils.variants import delta_weights, lora_scaling

q_proj = models_seed0["rsLoRA"].base_model.model.model.layers[0].self_attn.q_proj
print(f"rsLoRA scaling {q_proj.scaling['default']:.4f}; alpha/sqrt(r) = {ALPHA / math.sqrt(RANK):.4f}")
expect(
    "peft's rsLoRA scaling is lora_alpha / sqrt(r)", math.isclose(q_proj.scaling["default"], ALPHA / math.sqrt(RANK))
)
expect("plain LoRA's is lora_alpha / r", math.isclose(lora_scaling(ALPHA, RANK), ALPHA / RANK))

# %% [markdown]
# `add_weighted_adapter` folds each source's scaling into the combined `A`, then builds the new adapter's config by
# copying the **first** source's config with `lora_alpha = r`. Plain LoRA gets scaling 1, as intended. An rsLoRA
# source passes `use_rslora=True` on, so the combined adapter gets `r / sqrt(r) = sqrt(r)` and its update is
# `sqrt(r)` times too large. Check it on two rsLoRA adapters combined with `cat`, whose update must equal the sum:

# %%
from course_utils.variants import kept_of_update


def cat_of_two(first, second, *, drop_rslora=False):
    """Two trained adapters (two seeds of a variant) on one base, combined with `cat`; returns the model."""
    pair = get_peft_model(copy.deepcopy(base), copy.deepcopy(first.peft_config["default"]), adapter_name="a")
    pair.add_adapter("b", copy.deepcopy(second.peft_config["default"]))
    for name, source in (("a", first), ("b", second)):
        weights = {k.replace(".default.", f".{name}."): v for k, v in source.state_dict().items() if "lora_" in k}
        pair.load_state_dict(weights, strict=False)
    if drop_rslora:  # the fix: the combined adapter already holds each scaling; it must not scale again
        pair.peft_config["a"].use_rslora = False
    pair.add_weighted_adapter(["a", "b"], [1.0, 1.0], "ab", combination_type="cat")
    return pair


rs_ratio = {}
for fixed in (False, True):
    pair = cat_of_two(models_seed0["rsLoRA"], rs_other_seed, drop_rslora=fixed)
    a, b, ab = delta_weights(pair, "a"), delta_weights(pair, "b"), delta_weights(pair, "ab")
    rs_ratio[fixed] = kept_of_update(ab, {k: a[k] + b[k] for k in a})
    scaling = pair.base_model.model.model.layers[0].self_attn.q_proj.scaling["ab"]
    print(
        f"{'with the fix' if fixed else 'as is'}: combined scaling {scaling:.3g}, update / (a + b) = {rs_ratio[fixed]:.3f}"
    )
expect("combining rsLoRA adapters as is scales the update by sqrt(2r) = 4", abs(rs_ratio[False] - 4) < 1e-3)
expect("with use_rslora off on the first source, cat's update is exactly a + b", abs(rs_ratio[True] - 1) < 1e-4)

# %% [markdown]
# ### PiSSA and OLoRA change the base: convert before sharing it
#
# PiSSA moves `W`'s top singular part into `B A` and leaves the residual `W - B₀A₀` in the base (OLoRA does the
# same with a QR decomposition, and converts the same way). A saved PiSSA
# adapter only works on that residual base, and loading it with `PeftModel.from_pretrained` **rewrites the base
# weights you load it on** (it redoes the SVD). Any other adapter on the same base then runs on a wrong `W`.
#
# The fix is peft's conversion: save the adapter's *initial* state once, then save with
# `path_initial_model_for_weight_conversion`. The result is a plain LoRA adapter of rank `2r` whose `ΔW` is the
# whole change from the original `W`: it loads on the untouched base.

# %% tags=["nbval-ignore-output"]
# shown, not claimed: the digits differ between CPU kernels; the claims in the next cell have margins
from peft import PeftModel

from course_utils.paths import outputs_dir

PISSA_INIT, PISSA_RAW, PISSA_LORA = (
    outputs_dir("09-pissa-init"),
    outputs_dir("09-pissa"),
    outputs_dir("09-pissa-as-lora"),
)
start, _ = make_variant("PiSSA", 0)  # PiSSA's start is an SVD: the same as the trained model's start
start.peft_config["default"].init_lora_weights = True  # save the start as a plain adapter (peft's recipe)
start.save_pretrained(PISSA_INIT)  # re-running the notebook replaces its own adapters
pissa = models_seed0["PiSSA"]  # trained in section 4
pissa.save_pretrained(PISSA_RAW)
pissa.save_pretrained(PISSA_LORA, path_initial_model_for_weight_conversion=str(PISSA_INIT))
probe = {k: v.to(device) for k, v in batches[0][0].items() if k != "labels"}
with torch.no_grad():
    pissa_logits = pissa(**probe).logits

w_before = base.model.layers[0].self_attn.q_proj.weight.detach().clone()
raw = PeftModel.from_pretrained(copy.deepcopy(base), PISSA_RAW)
base_shift = (raw.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight - w_before).abs().max().item()
converted = PeftModel.from_pretrained(copy.deepcopy(base), PISSA_LORA)
conv_shift = (
    (converted.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight - w_before).abs().max().item()
)
with torch.no_grad():
    conv_gap = (converted(**probe).logits - pissa_logits).abs().max().item()
print(
    f"loading the raw PiSSA adapter moved the base weights by up to {base_shift:.3g}; the converted one by {conv_shift:.3g}"
)
print(f"converted adapter: rank {converted.peft_config['default'].r}, max |Δlogit| vs the PiSSA model {conv_gap:.2e}")

# %%
expect("loading a raw PiSSA adapter rewrites the base weights (max |ΔW| > 1e-3)", base_shift > 1e-3)
expect("the converted adapter leaves the base untouched", conv_shift == 0.0)
expect("the converted plain-LoRA adapter reproduces the PiSSA model within 1e-3 (max |Δlogit|)", conv_gap < 1e-3)
expect("the converted adapter has rank 2r", converted.peft_config["default"].r == 2 * RANK)

# %% [markdown]
# ### LoftQ: only for a base that really is 4-bit
#
# QLoRA (notebook 06) trains `B A` on a 4-bit base `Q(W)`, starting from `B = 0`, so it starts from the
# quantized model. LoftQ starts `B A` at the rank-r SVD of the quantization error `W - Q(W)`, so it starts closer
# to the full-precision model. In peft 0.21 both LoftQ routes (`init_lora_weights="loftq"`,
# `replace_lora_weights_loftq`) compute on CUDA only; `course_utils.variants.loftq_init_` does the same one-shot
# step on any device. On a full-precision base LoftQ's start would be wrong: it only makes sense where the
# base is loaded in 4-bit.

# %% tags=["nbval-ignore-output"]
from course_utils.platform_support import bitsandbytes_available
from course_utils.quantization import bnb_4bit_config, prevent_cpu_repack
from course_utils.variants import loftq_init_

HAS_BNB, bnb_reason = bitsandbytes_available()
loftq_rows = {}
if HAS_BNB:

    def make_4bit(name, seed):
        """A 4-bit base with LoRA on q, v; LoftQ's start when name == "LoftQ"."""
        quantized = load_model(MODEL, device=device, quantization_config=bnb_4bit_config(device))
        prevent_cpu_repack(quantized)  # bitsandbytes' CPU repacking would break training (notebook 06)
        torch.manual_seed(seed)
        cfg = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
        model = get_peft_model(quantized, cfg)
        if name == "LoftQ":
            loftq_init_(model, base)
        return model

    def start_error(model):
        """Per adapted layer: |W - (Q(W) + s·BA)| / |W - Q(W)| (1.0: the adapter corrects nothing)."""
        import bitsandbytes as bnb

        out = []
        for name, layer in model.named_modules():
            if hasattr(layer, "base_layer") and isinstance(layer.base_layer, bnb.nn.Linear4bit):
                w = base.get_submodule(name.split("base_model.model.", 1)[1]).weight.float()
                q = bnb.functional.dequantize_4bit(layer.base_layer.weight.data, layer.base_layer.weight.quant_state)
                out.append(((w - q - layer.get_delta_weight("default")).norm() / (w - q).norm()).item())
        return out

    err = {}
    for name in ("QLoRA", "LoftQ"):
        model = make_4bit(name, SEEDS[0])
        err[name] = start_error(model)
        train_steps(model, batches[SEEDS[0]], learning_rate=lr)  # one seed here; the benchmark runs them all
        loftq_rows[name] = {
            f"accuracy %, seed {SEEDS[0]}": 100 * evaluate_task(model, tokenizer, eval_ds, progress=False).accuracy,
            "start error, mean over layers": sum(err[name]) / len(err[name]),
            "start error, best layer": min(err[name]),
        }
    display(pd.DataFrame(loftq_rows).T)
else:
    print(f"Skipped: LoftQ needs a 4-bit base, and bitsandbytes is not usable here ({bnb_reason}).")

# %%
if HAS_BNB:
    expect(
        "LoftQ's start is closer to the full-precision weights than QLoRA's in every adapted layer",
        all(lq < ql for lq, ql in zip(err["LoftQ"], err["QLoRA"])),
    )
    expect(
        "QLoRA's zero start corrects nothing (error ratio 1 in every layer)",
        all(abs(e - 1) < 1e-6 for e in err["QLoRA"]),
    )

# %% [markdown]
# On `course-tiny` a rank-8 correction removes only about a tenth of the 4-bit error: quantization noise is spread
# over all 192 directions of a layer, and 8 of them hold little of it. One seed of training cannot rank the two
# starts; `benchmarks/lora_variants.py` trains both with every seed. On a large model the error is more
# concentrated and LoftQ's published gains come from 2-bit and 3-bit bases; at 4 bits check it with a short run of
# both starts, as above, before paying for it.
#
# ### LoRA+ is an optimizer, and a trainer can ignore it
#
# `create_loraplus_optimizer` returns an ordinary optimizer whose parameter groups give `B` a higher rate. A
# `Trainer` uses it only when you pass it: `Trainer(..., optimizers=(optimizer, None))`. Built from
# `TrainingArguments` alone, a trainer creates its own AdamW and LoRA+ silently disappears. Check the groups:

# %%
_, loraplus_opt = make_variant("LoRA+", 0)
group_lrs = sorted({g["lr"] for g in loraplus_opt.param_groups if g["params"]})
print("learning rates of the optimizer's groups:", [f"{x:g}" for x in group_lrs])
expect(
    f"LoRA+ gives B a learning rate {LORAPLUS_RATIO}x A's", math.isclose(group_lrs[-1], LORAPLUS_RATIO * group_lrs[0])
)

# %% [markdown]
# ### When each variant is worth it on a real model
#
# - **rsLoRA**: when you raise the rank (r >= 64); at r = 8 it only multiplies the scaling by `sqrt(r)/1`, which acts
#   like a higher learning rate. Check: two short runs at your rank, with and without.
# - **DoRA**: when LoRA underfits at the rank you can afford; merge it before serving. Check its memory with
#   `estimate_training_memory(config, Recipe(use_dora=True))`: the planner counts its extra activations.
# - **PiSSA / OLoRA**: when a short budget must move fast; always convert before sharing the base. Check: a short run
#   of each start against LoRA's, with seeds.
# - **EVA**: the same bet as PiSSA with the data's directions, and the base stays untouched; costs one pass over a few
#   batches.
# - **LoftQ**: only with a 4-bit (or lower) base; check the start error per layer as above.
# - **LoRA+**: nearly free; check that your trainer uses the optimizer you built.

# %% [markdown]
# ## 6. Debugging adapter state: `get_model_status` and `get_layer_status`
#
# Section 7 puts several adapters on one base. Two mistakes are common there, and peft's status calls show both.
# First: `add_weighted_adapter` **does not activate** the adapter it creates.

# %%
second_task_ds = load_task(OTHER_TASK, "train")
other_batches = seeded_batches(second_task_ds, tokenizer, steps=steps, batch_size=batch_size, seed=0)
torch.manual_seed(0)
combo = get_peft_model(
    copy.deepcopy(base),
    LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]),
    adapter_name=TASK,
)
combo.load_state_dict(
    {k.replace(".default.", f".{TASK}."): v for k, v in models_seed0["LoRA"].state_dict().items() if "lora_" in k},
    strict=False,
)
combo.add_adapter(OTHER_TASK, combo.peft_config[TASK])
combo.set_adapter(OTHER_TASK)  # makes OTHER_TASK active and trainable
train_steps(combo, other_batches, learning_rate=lr)
combo.add_weighted_adapter([TASK, OTHER_TASK], [1.0, 1.0], "cat", combination_type="cat")
status = combo.get_model_status()
print("active:", status.active_adapters, "| available:", status.available_adapters)

# %%
expect(
    "after add_weighted_adapter the active adapter is still the last one set, not 'cat'",
    status.active_adapters == [OTHER_TASK],
)
combo.set_adapter("cat")
expect("set_adapter('cat') activates it", combo.get_model_status().active_adapters == ["cat"])

# %% [markdown]
# Second: a merged adapter cannot be switched off by `set_adapter`, and a layer-by-layer view shows where it is
# merged. `merge_adapter()` folds the active adapter into the weights (reversibly, with `unmerge_adapter()`):

# %%
combo.merge_adapter()
layers = combo.get_layer_status()
print(f"{len(layers)} adapted layers; first: {layers[0].name} merged={layers[0].merged_adapters}")
expect("get_model_status names the merged adapter", combo.get_model_status().merged_adapters == ["cat"])
expect("every layer reports it merged", all(layer.merged_adapters == ["cat"] for layer in layers))
combo.unmerge_adapter()
expect(
    "after unmerge_adapter() no layer is merged", not any(layer.merged_adapters for layer in combo.get_layer_status())
)

# %% [markdown]
# ## 7. Combining two task adapters, five ways
#
# `add_weighted_adapter` builds one adapter from several. `cat` stacks the `A`s and `B`s (rank `r₁ + r₂`): its
# update is exactly the weighted sum. `svd` takes that sum and truncates it to rank `r` by SVD. `ties`,
# `dare_ties` and `magnitude_prune` work on the task vectors (each adapter's `A` and `B`): they keep a `density`
# fraction of the entries (the largest, or a random subset rescaled) and, for ties, resolve sign conflicts. "Kept"
# below is `<ΔW_combined, ΔW_source> / |ΔW_source|²` summed over layers: 1.0 means the whole source update survives.

# %% tags=["nbval-ignore-output"]
from course_utils.variants import kept_of_update

other_eval = load_task(OTHER_TASK, "eval")
deltas = {name: delta_weights(combo, name) for name in (TASK, OTHER_TASK)}
COMBINATIONS = {
    "cat": {},
    "svd": {},
    "ties": {"density": 0.5},
    "dare_ties": {"density": 0.5},
    "magnitude_prune": {"density": 0.5},
}
combo_rows = {}
for name in (TASK, OTHER_TASK):
    combo.set_adapter(name, inference_mode=True)
    combo_rows[f"{name} alone"] = {
        f"{TASK} %": 100 * evaluate_task(combo, tokenizer, eval_ds, progress=False).accuracy,
        f"{OTHER_TASK} %": 100 * evaluate_task(combo, tokenizer, other_eval, progress=False).accuracy,
    }
for kind, options in COMBINATIONS.items():
    name = kind if kind == "cat" else f"mix-{kind}"
    if name not in combo.peft_config:
        torch.manual_seed(0)  # dare_ties drops entries at random
        combo.add_weighted_adapter([TASK, OTHER_TASK], [1.0, 1.0], name, combination_type=kind, **options)
    combo.set_adapter(name, inference_mode=True)
    combined = delta_weights(combo, name)
    combo_rows[kind] = {
        f"{TASK} %": 100 * evaluate_task(combo, tokenizer, eval_ds, progress=False).accuracy,
        f"{OTHER_TASK} %": 100 * evaluate_task(combo, tokenizer, other_eval, progress=False).accuracy,
        f"kept of {TASK}": kept_of_update(combined, deltas[TASK]),
        f"kept of {OTHER_TASK}": kept_of_update(combined, deltas[OTHER_TASK]),
        "rank": combo.peft_config[name].r,
    }
cat_delta = delta_weights(combo, "cat")
cat_error = max((cat_delta[k] - deltas[TASK][k] - deltas[OTHER_TASK][k]).abs().max().item() for k in cat_delta)
print(f"cat: max |ΔW_cat - (ΔW_{TASK} + ΔW_{OTHER_TASK})| = {cat_error:.1e}")
combo_table = pd.DataFrame(combo_rows).T
combo_table

# %%
expect("cat's update equals the sum of the two updates within 1e-6", cat_error < 1e-6)
expect(
    "magnitude_prune at density 0.5 keeps less of each update than cat",
    all(
        combo_table.loc["magnitude_prune", c] < combo_table.loc["cat", c]
        for c in (f"kept of {TASK}", f"kept of {OTHER_TASK}")
    ),
)

# %% [markdown]
# Keeping both updates is not keeping both skills. `shout` and `terse` answer the **same questions** in two forms
# (`THE CARP EATS NUTS.` and `The carp: nuts.`), so their updates pull the same outputs two ways: `cat` keeps
# almost all of each (a "kept" a little off 1 means the two updates overlap) and answers neither form. `ties`, which resolves sign conflicts entry by entry, keeps less but leans to one task.
# Combination works for skills that do not compete for the same outputs; for competing ones, switch adapters
# (notebook 02) instead.
#
# `cat` is exact but its rank is the sum of the ranks, so it costs what both adapters cost. `svd` keeps the rank at
# `r` and loses what does not fit. The pruning methods were designed for *fully* fine-tuned task vectors; here they
# prune `A` and `B` separately, so what they keep of `ΔW = B A` is not the density.
#
# ## 8. Evaluation the field's way: lm-evaluation-harness
#
# lm-evaluation-harness (`pip install lm-eval`) is how papers and leaderboards score models. A task is a YAML
# file; `course_utils.harness.write_harness_tasks` writes the course's tasks as harness tasks over the shipped JSON
# Lines (`generate_until`, greedy, exact match after stripping white space), and the harness runs them offline. The
# `hf` model takes the adapter folder with `peft=`.

# %% tags=["nbval-ignore-output"]
import importlib.util

from course_utils.harness import harness_answers, write_harness_tasks
from course_utils.loading import resolve_model_path

HAS_LM_EVAL = importlib.util.find_spec("lm_eval") is not None
LORA_DIR = outputs_dir("09-shout-lora")
models_seed0["LoRA"].save_pretrained(LORA_DIR)  # re-running the notebook replaces its own adapter
if HAS_LM_EVAL:
    import logging

    import lm_eval
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    task_dir = write_harness_tasks(outputs_dir("09-harness-tasks"), tasks=(TASK,), max_gen_toks=32)
    harness = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={resolve_model_path(MODEL)},peft={LORA_DIR},dtype={str(dtype).removeprefix('torch.')}",
        tasks=[f"course_{TASK}"],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        apply_chat_template=True,  # the model was trained on its chat template
        device=str(device),
        batch_size=16,
        log_samples=True,
    )
    harness_rows = harness_answers(harness, f"course_{TASK}")
    ours = evaluate_task(
        models_seed0["LoRA"], tokenizer, eval_ds, progress=False, max_new_tokens=32, n_examples=len(eval_ds)
    )
    agree = sum(a == row["answer"] for (a, _), row in zip(harness_rows, ours.examples))
    harness_acc = harness["results"][f"course_{TASK}"]["exact_match,strip"]
    print(
        f"harness exact match {harness_acc:.1%}; evaluate_task {ours.accuracy:.1%}; same answer on {agree}/{len(ours.examples)}"
    )
else:
    print("Skipped: lm-evaluation-harness is not installed here (pip install lm-eval).")

# %%
if HAS_LM_EVAL:
    expect("the harness and evaluate_task give the same exact-match accuracy", harness_acc == ours.accuracy)
    expect("and the same answer to every question", agree == len(ours.examples) == len(harness_rows))

# %% [markdown]
# Two details make them agree. Both score the answer after stripping white space at its ends, and both let the
# model stop at its end-of-turn token. And both generate at most 32 new tokens: the model's
# `generation_config.json` sets `max_new_tokens=32`, which transformers lets win over the harness's `max_gen_toks`
# (it warns "Both `max_new_tokens` and `max_length` seem to have been set"), so the task says 32 too.
#
# The same call runs the harness's public tasks on your adapter, on your machine (they download their data):
# `lm_eval --model hf --model_args pretrained=<base>,peft=<adapter> --tasks hellaswag,arc_easy --apply_chat_template`.
#
# ## What we measured
#
# On `course-tiny`, 15 steps of 8 `shout` examples per run at lr 7.5e-3, 3 seeds, 48 eval questions (one run on a
# shared 2-core CPU; accuracy in % as mean ± std over seeds, worst seed; held-out loss over the base model's, mean ±
# std; the claims above hold with margins):
#
# | variant | accuracy | worst seed | held-out loss / base's | trainable | decoding step, unmerged / merged FLOPs |
# |---|---|---|---|---|---|
# | LoRA | 13 ± 3 | 10 | 0.42 ± 0.00 | 21,504 | 1.01x |
# | rsLoRA | 12 ± 11 | 4 | 0.44 ± 0.03 | 21,504 | 1.01x |
# | DoRA | 7 ± 8 | 2 | 0.43 ± 0.02 | 22,656 | 3.3x |
# | PiSSA | 7 ± 4 | 2 | 0.43 ± 0.01 | 21,504 | 1.01x |
# | OLoRA | 12 ± 5 | 6 | 0.41 ± 0.01 | 21,504 | 1.01x |
# | EVA | 14 ± 2 | 12 | 0.38 ± 0.01 | 21,504 | 1.01x |
# | LoRA+ | 6 ± 4 | 2 | 0.46 ± 0.01 | 21,504 | 1.01x |
#
# What we conclude, and what we do not:
# - every variant cuts the held-out loss to less than half of the base model's in every seed; on exact-match
#   accuracy, far from its ceiling at this budget, the spread between seeds (up to 11 points) is as large as the gaps
#   between variants, so **accuracy does not rank them here**. The held-out loss varies by a few hundredths between
#   seeds: on it, EVA's start ends lowest and the two variants that take larger steps at the same
#   learning rate (rsLoRA's scaling is sqrt(8) = 2.8 times LoRA's at r = 8; LoRA+ moves B 4 times faster) highest.
#   That is one budget and one learning rate, not a verdict: tune the rate per variant before you rank them;
# - DoRA trains one extra parameter per output row and, unmerged, costs over three times the FLOPs of a decoding
#   step; merged, it costs what LoRA costs, with the same outputs;
# - rsLoRA's scaling is `alpha/sqrt(r)`, and `add_weighted_adapter` passes it on to the combination, scaling the
#   update by `sqrt(r₁ + r₂)` unless you turn it off on the first source;
# - a raw PiSSA adapter rewrites the base it is loaded on; the converted one (rank 2r) leaves it untouched and
#   reproduces the model;
# - LoftQ starts closer to the full-precision weights than QLoRA in every layer, by about a tenth at rank 8;
# - `cat` is exact and keeps both updates, yet two styles of answer to the same questions do not combine: no
#   method answered both tasks;
# - lm-evaluation-harness agrees with the course's evaluation on every question.
#
# The full tables (with training time, peak memory, inference times, QLoRA and LoftQ over all seeds, and the
# combinations) come from `python benchmarks/lora_variants.py`; `--steps 50 --lr 5e-3` gives a larger budget.
#
# **Try it**
# - Set `MAX_STEPS = 60`: does a ranking by accuracy appear once the variants get nearer their ceiling?
# - Set `RANK = 64` and compare LoRA with rsLoRA: which one's accuracy changes with the rank?
# - Weight the combination `[1.0, 0.5]`: what does `kept` report for each task?
# - Set `OTHER_TASK = "topic"` (its questions differ from shout's) and `MAX_STEPS = 150`: do two skills that do not
#   compete combine?
#
# **Next:** notebook 06 trains on a 4-bit base (QLoRA); notebook 03 merges and validates an adapter before it ships.
