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
# # 02 · Loading, switching and combining adapters
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/peft-course/peft-course/blob/main/notebooks/02_adapters.ipynb)
#
# One base model, many small adapters: this is what makes LoRA practical. You keep one copy of the model in memory
# and switch the adapter per request.
#
# **What you will learn**
# - load a base model and adapters from disk (`PeftModel.from_pretrained`, `load_adapter`);
# - switch adapters (`set_adapter`, and why `inference_mode=True` matters), run the base model without unloading
#   anything (`disable_adapter()`), and get the untouched base back (`unload()`);
# - read an accuracy matrix (adapters × tasks) as lifts over the base model;
# - measure how much faster a switch is than a reload;
# - combine adapters with `add_weighted_adapter`, and check what each combination keeps of the exact sum.
#
# **Time:** about 1 minute on a laptop CPU with the default model (`course-tiny`); a few minutes on a Colab GPU.

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
LEARNING_RATE = "auto"  # "auto": chosen for the model's size by course_utils.hyperparameters
MAX_STEPS = 150  # steps per adapter; "auto" suggests 45 on course-tiny, too few for its topic adapter
BATCH_SIZE = 8  # rows per step; "auto" suggests 16, but 150 steps of 8 taught topic in 3 seeds of 3, in half the time
SEED = 0
RANKS = {"shout": 8, "topic": 8}  # one rank for both, so section 7 can combine them in every way peft offers

# %% tags=["nbval-ignore-output"]
info = setup(SEED, model=MODEL)
# shown, not claimed: this machine's device and library versions

# %% [markdown]
# ## 1. The idea: one frozen base, many adapters
#
# An adapted layer computes `W x + (α/r) B A x`: the frozen base weight `W` plus a small low-rank update `B A`.
# Nothing stops several pairs `B`, `A` from sitting beside the same `W`. Only the **active** adapter is added;
# switching picks another pair and leaves `W` alone, so no weights are copied or read from disk.

# %%
from course_utils.figures.adapters import draw_adapters

fig = draw_adapters(["shout", "topic", "terse"], active="shout")
# %% [markdown]
# ## 2. Two adapters to play with
#
# The notebook trains the two adapters it needs: `shout` (answer in CAPITALS) and `topic` (name the topic of a
# sentence: `kind`, `color`, `home` or `food`). `train_lora` is notebook 01's training loop in one call, and
# `"auto"` hyperparameters are chosen for the model's size (`course_utils.hyperparameters`). Each adapter is saved
# under `outputs/` beside the notebook (in Google Drive on Colab, when it is mounted: `outputs_dir`).

# %%
import contextlib
import io

from peft import LoraConfig

from course_utils.architectures import attention_projection_names
from course_utils.data import load_task
from course_utils.hyperparameters import resolve, suggest
from course_utils.loading import load_model, load_tokenizer
from course_utils.paths import outputs_dir
from course_utils.training import train_lora

tokenizer = load_tokenizer(MODEL)
TASKS = {name: load_task(name) for name in RANKS}
ADAPTER_DIRS = {name: outputs_dir(f"02-{name}-lora") for name in RANKS}  # re-running replaces these adapters
runs = {}
for name, r in RANKS.items():
    base = load_model(MODEL, dtype=DTYPE, device=DEVICE)
    hp = suggest(base, method="lora")
    attention = attention_projection_names(base)
    targets = [n for n in attention if n[0] in "qv"] or attention  # q_proj, v_proj in Llama-style models
    config = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.05, target_modules=targets, task_type="CAUSAL_LM")
    with contextlib.redirect_stdout(io.StringIO()):  # keep the Trainer's per-log prints out of the notebook
        runs[name] = train_lora(
            base,
            tokenizer,
            TASKS[name]["train"],
            config,
            learning_rate=resolve(LEARNING_RATE, hp.learning_rate),
            max_steps=resolve(MAX_STEPS, hp.max_steps),
            batch_size=resolve(BATCH_SIZE, hp.batch_size),
        )
    runs[name].model.save_pretrained(ADAPTER_DIRS[name])
    size = (ADAPTER_DIRS[name] / "adapter_model.safetensors").stat().st_size  # the weights (A and B) only
    print(f"{name}: r={r} on {targets}, {size / 1024:.0f} KiB of weights saved to outputs/{ADAPTER_DIRS[name].name}")
del base

# %% tags=["nbval-ignore-output"]
# shown, not claimed: losses and seconds vary between machines; section 5 checks what the training achieved
import pandas as pd

pd.options.display.float_format = "{:.3g}".format  # 3 significant digits in every table below
pd.options.display.max_colwidth = 100  # long row labels in full

pd.DataFrame.from_dict(
    {
        name: {
            "learning rate": run.trainer.args.learning_rate,
            "steps": run.trainer.args.max_steps,
            "batch size": run.trainer.args.per_device_train_batch_size,
            "last loss": round(run.losses[-1], 3),
            "seconds": round(run.seconds, 1),
        }
        for name, run in runs.items()
    },
    orient="index",
)

# %% [markdown]
# ## 3. Load the base model and the adapters from disk
#
# `PeftModel.from_pretrained(base, folder)` wraps the base model and loads one adapter (we name it). Further
# adapters go in with `load_adapter(folder, adapter_name=...)`: they are loaded, **not** activated. The method
# names are singular: `load_adapter`, `set_adapter`, `delete_adapter`. The old tutorial's claims about these calls
# are checked in [docs/claims.md](../docs/claims.md).

# %%
import torch
from peft import PeftModel

del runs  # the trained models: from here on, everything comes from disk
base_model = load_model(MODEL, dtype=DTYPE, device=DEVICE)
model = PeftModel.from_pretrained(base_model, ADAPTER_DIRS["shout"], adapter_name="shout")
model.load_adapter(ADAPTER_DIRS["topic"], adapter_name="topic")
print("loaded adapters:", list(model.peft_config))
print("active adapter:", model.active_adapter)

# %% [markdown]
# transformers models have adapter methods of their own (`load_adapter`, `set_adapter`, `disable_adapters`, ...).
# With the peft release we use (0.21) most of them refuse to run, so this course uses the `PeftModel` API
# throughout. A fresh copy of the base model shows it; we keep that copy to compare logits with below.

# %%
fresh_base = load_model(MODEL, dtype=DTYPE, device=DEVICE)
try:
    fresh_base.set_adapter("shout")
except ValueError as err:
    print(f"transformers' set_adapter: ValueError: {str(err).splitlines()[0]}")


# %% [markdown]
# ## 4. Switching adapters, and the trainability trap
#
# `set_adapter(name)` activates an adapter, and **also marks it trainable** (peft assumes you switch to train it).
# For serving, pass `inference_mode=True`: the adapter is used but its weights stay frozen.


# %%
def n_trainable(m):
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


steps = [("PeftModel.from_pretrained(...)", model.active_adapter, n_trainable(model))]
model.set_adapter("topic")
steps.append(("set_adapter('topic')", model.active_adapter, n_trainable(model)))
model.set_adapter("topic", inference_mode=True)
steps.append(("set_adapter('topic', inference_mode=True)", model.active_adapter, n_trainable(model)))
pd.DataFrame(steps, columns=["after", "active adapter", "trainable parameters"])

# %% [markdown]
# Each adapter answers in its own way; inside `with model.disable_adapter():` every adapter is off, and the base
# model answers.

# %% tags=["nbval-ignore-output"]
# shown, not claimed: generated text; section 5 measures each adapter on its task
from course_utils.evaluation import generate_answers

question = TASKS["shout"]["eval"][0]["messages"][:-1]  # the conversation without its reference answer
answers = {}
for name in RANKS:
    model.set_adapter(name, inference_mode=True)
    answers[name] = generate_answers(model, tokenizer, [question], progress=False)[0]
with model.disable_adapter():  # every adapter off inside the block, back on after it
    answers["base"] = generate_answers(model, tokenizer, [question], progress=False)[0]
print(question[-1]["content"])
pd.Series(answers, name="answer").to_frame()

# %% [markdown]
# `disable_adapter()` gives the base model's outputs: we compare its logits with the fresh copy's, and check that
# the adapter does move them.

# %% tags=["nbval-ignore-output"]
inputs = tokenizer.apply_chat_template(
    [question], add_generation_prompt=True, return_dict=True, return_tensors="pt"
).to(fresh_base.device)
with torch.no_grad():
    fresh_base_logits = fresh_base(**inputs).logits
    with model.disable_adapter():
        disabled_logits = model(**inputs).logits
    adapted_logits = model(**inputs).logits
disabled_diff = (disabled_logits - fresh_base_logits).abs().max().item()
adapter_shift = (adapted_logits - fresh_base_logits).abs().max().item()
print(f"max |logit difference| from the fresh base: disable_adapter() {disabled_diff:.1e}, adapter {adapter_shift:.2f}")

# %%
from course_utils.notebook import expect

expect("disable_adapter() gives the base model's logits (max |difference| below 1e-5)", disabled_diff < 1e-5)
expect(f"the adapter {model.active_adapter!r} moves the logits (max |difference| above 1)", adapter_shift > 1)

# %% [markdown]
# A second trap of the same kind: leaving the `disable_adapter()` block switches the adapter back on **and marks it
# trainable**, even after `set_adapter(..., inference_mode=True)` (peft 0.21). Harmless for inference; before you
# train or count parameters, set the adapter again with `inference_mode=True`.

# %%
print(f"trainable after the disable_adapter() blocks above: {n_trainable(model):,}")
model.set_adapter(model.active_adapter, inference_mode=True)
print(f"after set_adapter(model.active_adapter, inference_mode=True): {n_trainable(model):,}")

# %% [markdown]
# ## 5. Which adapter does what: an accuracy matrix
#
# Each row is a model (the base, then each adapter), each column a task's held-out split, scored by exact match.
# What an adapter adds is its **lift**: its accuracy minus the base model's on the same questions.

# %%
from course_utils.evaluation import evaluate_task


def accuracies(m):
    return {task: evaluate_task(m, tokenizer, TASKS[task]["eval"], progress=False).accuracy for task in TASKS}


matrix = {}
with model.disable_adapter():
    matrix["base"] = accuracies(model)
for name in RANKS:
    model.set_adapter(name, inference_mode=True)
    matrix[name] = accuracies(model)

# %% tags=["nbval-ignore-output"]
accuracy = 100 * pd.DataFrame(matrix).T  # rows: base and adapters, columns: tasks, in %
lift = accuracy - accuracy.loc["base"]  # points over the base model, task by task
pd.concat({"accuracy (%)": accuracy, "lift over the base (points)": lift}, axis=1).round(1)

# %%
LIFT = 50  # points
expect(
    f"each adapter lifts its own task by >= {LIFT} points over the base model",
    all(lift.loc[name, name] >= LIFT for name in RANKS),
    hint="train longer (MAX_STEPS) or with a higher LEARNING_RATE",
)
expect(
    "each adapter lifts its own task more than the other task",
    all(lift.loc[name, name] > lift.loc[name, other] for name in RANKS for other in RANKS if other != name),
    hint="an adapter that helps every task learned the answer format, not the task: check the training data",
)
expect(
    "the base model scores <= 20% on every task",
    all(acc <= 20 for acc in accuracy.loc["base"]),
    hint="this base already does the tasks: the lifts above are what the adapters add on top",
)

# %% [markdown]
# Each adapter is a specialist: it lifts its own task and not the other. On a real model the base may already do
# part of a task, and an adapter may carry over to a related one: run the notebook with `MODEL = "smollm2-135m"` to
# see its matrix.
#
# ## 6. Try it: an adapter switcher
#
# `course_utils.widgets.adapter_switcher` shows a dropdown (every adapter, plus the base model with adapters
# disabled) and a prompt box; change either and the answer updates. Where widgets are not rendered (a static HTML
# export) the cell still shows a table of every adapter's answer.

# %% tags=["nbval-ignore-output"]
# shown, not claimed: an interactive widget and generated text
from course_utils.widgets import adapter_switcher

switcher = adapter_switcher(model, tokenizer, question[-1]["content"])
switcher

# %% [markdown]
# ## 7. A switch costs almost nothing
#
# Switching changes which `B`, `A` the LoRA layers use; reloading reads the base model and the adapter from disk
# again. Both are timed below (best of a few runs). Timings vary between machines; the ratio is what the claim
# checks. A switch touches every adapted layer, so it grows with the model, and so does a reload.

# %% tags=["nbval-ignore-output"]
import time


def best_ms(fn, repeat=5):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return min(times)


def switch():
    model.set_adapter("shout" if model.active_adapter == "topic" else "topic", inference_mode=True)


def reload():
    PeftModel.from_pretrained(load_model(MODEL, dtype=DTYPE, device=DEVICE), ADAPTER_DIRS["topic"])


switch_ms, reload_ms = best_ms(switch), best_ms(reload, repeat=2)
pd.Series({"set_adapter (ms)": switch_ms, "reload base + adapter (ms)": reload_ms, "ratio": reload_ms / switch_ms})

# %%
expect("switching adapters is at least 5x faster than reloading the model", reload_ms >= 5 * switch_ms)

# %% [markdown]
# ## 8. Combining adapters with `add_weighted_adapter`
#
# `add_weighted_adapter(adapters, weights, adapter_name, combination_type=...)` builds a new adapter from loaded
# ones. Write `ΔW_i = (α_i/r_i) B_i A_i` for adapter `i`'s update of one layer and `w_i` for its weight. The exact
# combination is `Σ w_i ΔW_i`.
#
# The combination types differ in how much of it they keep (peft 0.21, `peft/tuners/lora/model.py`):
# - `"cat"` stacks the `A`s (each times `w_i α_i/r_i`) and the `B`s: rank `Σ r_i`, scaling 1, the exact sum;
# - `"svd"` computes the exact sum and keeps its `svd_rank` largest singular directions;
# - `"linear"` (and `"ties"`, `"dare_linear"`, ...) combines the `A`s and the `B`s **separately**, each with
#   `c_i = √(w_i α_i/r_i)`: equal ranks only, and the product `(Σ c_i B_i)(Σ c_j A_j)` has cross terms `B_i A_j`.
#
# First one layer's update by hand, next to peft's `get_delta_weight`:

# %%
from peft.tuners.lora import LoraLayer


def product(x, B, A):  # GPT-2's Conv1D layers store W transposed (fan_in_fan_out): peft transposes ΔW to match
    return (B @ A).T if x.fan_in_fan_out else B @ A


layer = next(m for m in model.modules() if isinstance(m, LoraLayer))
by_hand = layer.scaling["shout"] * product(layer, layer.lora_B["shout"].weight, layer.lora_A["shout"].weight)
print("scaling α/r:", layer.scaling["shout"], "| ΔW shape:", tuple(by_hand.shape))
print("ΔW by hand equals get_delta_weight('shout'):", torch.allclose(by_hand, layer.get_delta_weight("shout")))


def delta(m, name):
    """Every adapted layer's ΔW for adapter `name`, flattened into one vector."""
    return torch.cat([x.get_delta_weight(name).flatten() for x in m.modules() if isinstance(x, LoraLayer)])


# %% [markdown]
# Now every combination type, with unequal weights on purpose (a weight applied twice, or forgotten, would show):

# %%
WEIGHTS = {"shout": 1.0, "topic": 0.5}
COMBINATIONS = {
    "cat": {"combination_type": "cat"},
    f"svd_r{sum(RANKS.values())}": {"combination_type": "svd", "svd_rank": sum(RANKS.values())},
    f"svd_r{max(RANKS.values())}": {"combination_type": "svd", "svd_rank": max(RANKS.values())},
    "linear": {"combination_type": "linear"},
    "ties": {"combination_type": "ties", "density": 0.5},
    "dare_linear": {"combination_type": "dare_linear", "density": 0.5},
}
for name, kwargs in COMBINATIONS.items():
    model.add_weighted_adapter(list(WEIGHTS), list(WEIGHTS.values()), adapter_name=name, **kwargs)
print("ranks:", {name: model.peft_config[name].r for name in model.peft_config})
try:  # "cat" made a rank-16 adapter: it cannot be combined linearly with a rank-8 one
    model.add_weighted_adapter(["cat", "topic"], [1.0, 1.0], adapter_name="nope", combination_type="linear")
except ValueError as err:
    print(f"linear with ranks 16 and 8: ValueError: {str(err).splitlines()[0]}")

# %% [markdown]
# What each keeps of the exact sum `Σ w_i ΔW_i`, as a relative error over all adapted layers
# (`‖ΔW_combined − Σ w_i ΔW_i‖ / ‖Σ w_i ΔW_i‖`). For the lower-rank SVD, the best any rank-8 adapter can do is
# the share of the singular values it must drop (Eckart-Young); for `linear`, the formula above with its cross
# terms.

# %% tags=["nbval-ignore-output"]
layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
exact = sum(w * delta(model, name) for name, w in WEIGHTS.items())
error = {name: ((delta(model, name) - exact).norm() / exact.norm()).item() for name in COMBINATIONS}

low_rank = max(RANKS.values())
dropped = sum(
    (torch.linalg.svdvals(sum(w * x.get_delta_weight(n) for n, w in WEIGHTS.items()))[low_rank:] ** 2).sum()
    for x in layers
)
svd_best = (dropped.sqrt() / exact.norm()).item()  # the smallest error any rank-8 adapter can have

c = {name: (w * layers[0].scaling[name]) ** 0.5 for name, w in WEIGHTS.items()}  # √(w_i α_i/r_i)
with_cross_terms = torch.cat(
    [
        product(
            x, sum(c[n] * x.lora_B[n].weight for n in WEIGHTS), sum(c[n] * x.lora_A[n].weight for n in WEIGHTS)
        ).flatten()
        for x in layers
    ]
)
linear_vs_formula = ((delta(model, "linear") - with_cross_terms).norm() / with_cross_terms.norm()).item()

print(f"rank-{low_rank} best possible error (dropped singular values): {svd_best:.3f}")
print(f"linear vs (Σ c_i B_i)(Σ c_j A_j): {linear_vs_formula:.1e}")
pd.DataFrame({"rank": {n: model.peft_config[n].r for n in COMBINATIONS}, "relative error vs the exact sum": error})

# %%
svd_full, svd_low = list(COMBINATIONS)[1:3]
expect("cat reproduces the exact weighted sum Σ w_i ΔW_i within 1e-5 (relative)", error["cat"] < 1e-5)
expect(f"{svd_full} (the sum of the ranks) reproduces it within 1e-4", error[svd_full] < 1e-4)
expect(
    f"{svd_low} is the best rank-{low_rank} adapter: its error is the dropped share within 1e-3",
    abs(error[svd_low] - svd_best) < 1e-3,
)
expect("linear computes (Σ c_i B_i)(Σ c_j A_j), cross terms included, within 1e-5", linear_vs_formula < 1e-5)
expect(
    "linear, ties and dare_linear miss the exact sum by more than 10%",
    all(error[n] > 0.1 for n in ("linear", "ties", "dare_linear")),
)

# %% [markdown]
# So `cat` is exact and costs rank; `svd` is exact at full rank and otherwise the best at its rank; `linear`,
# `ties` and `dare_*` average the factors, not the updates. They were designed for adapters that share an
# initialization of `A` (then the cross terms are wanted), not for independently trained ones.
#
# An exact sum of updates is not a sum of skills: both updates act on every question. The combined adapter on both
# tasks:

# %% tags=["nbval-ignore-output"]
# shown, not claimed: how much of each skill survives a sum depends on the model and the tasks
model.set_adapter("cat", inference_mode=True)
matrix["cat"] = accuracies(model)
(100 * pd.DataFrame(matrix).T).round(1)

# %% [markdown]
# Try other weights (e.g. `{"shout": 1.0, "topic": 1.0}`) to see the balance shift. Remove what you no longer need
# with `delete_adapter` (you cannot delete the active adapter: switch first).

# %%
model.set_adapter("shout", inference_mode=True)
for name in COMBINATIONS:
    model.delete_adapter(name)
print("adapters now:", list(model.peft_config), "| active:", model.active_adapter)

# %% [markdown]
# ## 9. Back to the base model: `unload()`
#
# `unload()` removes every LoRA layer and returns the base model **without** merging anything into it (merging is
# notebook 03's `merge_and_unload`). The result is the untouched base: its logits equal the fresh copy's.

# %%
restored = model.unload()
with torch.no_grad():
    unload_diff = (restored(**inputs).logits - fresh_base_logits).abs().max().item()
print(f"unload() returned a {type(restored).__name__}")
print("LoRA layers left:", sum("lora_" in n for n, _ in restored.named_modules()))
expect("unload() gives the base model's logits (max |difference| below 1e-5)", unload_diff < 1e-5)

# %% [markdown]
# ## What we measured

# %% tags=["nbval-ignore-output"]
# shown, not claimed: a summary of the numbers claimed above
pd.Series(
    {
        **{f"lift of {n} on its task (points)": lift.loc[n, n] for n in RANKS},
        "base accuracy, best task (%)": accuracy.loc["base"].max(),
        "max |Δlogit|, disable_adapter() / unload() vs fresh base": f"{disabled_diff:.1e} / {unload_diff:.1e}",
        "set_adapter / reload (ms)": f"{switch_ms:.2f} / {reload_ms:.0f}",
        **{f"{n}: relative error vs exact sum": f"{e:.1e}" for n, e in error.items()},
    },
    name="measured",
).to_frame()

# %%
from course_utils.notebook import record_metrics

_ = record_metrics(
    model=MODEL,
    accuracy_matrix=matrix,
    switch_ms=round(switch_ms, 3),
    reload_ms=round(reload_ms, 1),
    combination_error=error,
)

# %% [markdown]
# ## Exercises
#
# We load the two adapters again into a fresh model for the exercises.

# %%
from course_utils.checks.adapters import check_active_adapter, check_base_outputs, check_diagonal

ex_model = PeftModel.from_pretrained(
    load_model(MODEL, dtype=DTYPE, device=DEVICE), ADAPTER_DIRS["shout"], adapter_name="shout"
)
_ = ex_model.load_adapter(ADAPTER_DIRS["topic"], adapter_name="topic")
ex_model.set_adapter("topic", inference_mode=True)
_ = ex_model.load_adapter(ADAPTER_DIRS["shout"], adapter_name="shout_copy")  # returns a load report

# %% [markdown]
# ### Exercise 1: which adapter is active?
# After the cell above (`from_pretrained` with `shout`, `load_adapter` topic, `set_adapter("topic")`,
# `load_adapter` shout_copy), which adapter answers? Predict first, then check.

# %%
answer = None  # an adapter name, e.g. "shout"
check_active_adapter(answer, ex_model)

# %% [markdown]
# #### Solution (skip if you want to try first)

# %%
answer = "topic"  # load_adapter loads; only set_adapter activates
check_active_adapter(answer, ex_model)


# %% [markdown]
# ### Exercise 2: base-model outputs without unloading
# Complete `base_logits` so it returns the base model's logits from `ex_model`, and leaves the active adapter as
# it was (no `unload`, no `delete_adapter`).


# %%
def base_logits(peft_model, inputs):
    return None  # your code: return the logits of the base model


check_base_outputs(base_logits, ex_model, inputs, fresh_base_logits)


# %% [markdown]
# #### Solution (skip if you want to try first)


# %%
def base_logits(peft_model, inputs):
    with peft_model.disable_adapter():
        return peft_model(**inputs).logits


check_base_outputs(base_logits, ex_model, inputs, fresh_base_logits)

# %% [markdown]
# ### Exercise 3: the diagonal
# From `matrix` (section 5), give each adapter's accuracy on the task it was trained for, as a dict
# `{task: accuracy}`.

# %%
answer = None  # e.g. {"shout": ..., "topic": ...}
check_diagonal(answer, matrix)

# %% [markdown]
# #### Solution (skip if you want to try first)

# %%
answer = {task: matrix[task][task] for task in RANKS}
check_diagonal(answer, matrix)

# %% [markdown]
# **Next:** notebook 03 merges an adapter into the base model, and checks the merged model before you ship it.
