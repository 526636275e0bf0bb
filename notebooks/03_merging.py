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
# # 03 · Merging a LoRA adapter, with precision checks
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/peft-course/peft-course/blob/main/notebooks/03_merging.ipynb)
#
# A LoRA adapter adds `scaling · B @ A` to some weight matrices. `merge_and_unload()` folds that delta into
# the base weights, so inference needs no adapter code and has no extra latency. The seed tutorial says to
# "maintain consistent precision (e.g., float16)" and to "validate the merged model": here we **measure**
# what each precision does and validate with numbers.
#
# **You will learn to**
# - merge in float32, float16 and bfloat16 and measure the drift (max/mean |Δlogit|, KL, top-1 agreement, accuracy);
# - capture the adapter model's outputs *before* merging and validate the merged model against them;
# - save the merged model (safetensors) without overwriting anything, reload it and validate the round trip;
# - handle out-of-memory during a merge (the seed's `try/except RuntimeError`, done properly);
# - recognise three pitfalls by their symptoms: merging into a 4-bit base, merging twice, the wrong tokenizer.
#
# **Time:** about 1-2 minutes on a CPU with the default `course-tiny` model; a few minutes on a Colab GPU with a SmolLM2 model.

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
DTYPE = "auto"        # dtype of the model we train the adapter on ("auto": float32 on CPU, bf16 on GPU)
DEVICE = "auto"
MAX_STEPS = 100       # LoRA training steps (all-linear, r=8)
SEED = 0
N_VALIDATE = 16       # eval conversations the merge validation runs on

# %% tags=["nbval-ignore-output"]
info = setup(SEED, model=MODEL)

# %% [markdown]
# ## 1. Train a small adapter to merge
#
# `setup()` has already quieted bitsandbytes' logger, so importing peft (which imports bitsandbytes) stays silent.
# We train LoRA r=8 on every linear layer for the `shout` task (answers in CAPITALS) and save the adapter.

# %%
import tempfile
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from peft import LoraConfig, PeftModel

from course_utils.data import load_task
from course_utils.evaluation import evaluate_task
from course_utils.loading import load_model, load_tokenizer, resolve_device, resolve_dtype, resolve_model_path
from course_utils.merging import (OutputExistsError, QuantizedMergeError, dequantize_for_merge,
                                  load_adapter_checked, safe_merge, save_adapter, save_merged)
from course_utils.training import train_lora
from course_utils.validation import (VocabularyMismatchError, SameModelError, capture_reference,
                                     compare_models, compare_to_reference, tolerance_for)

device = resolve_device(DEVICE)
train_dtype = resolve_dtype(DTYPE, device)
tokenizer = load_tokenizer(MODEL)
train_ds, eval_ds = load_task("shout", "train"), load_task("shout", "eval")
val_ds = eval_ds.select(range(N_VALIDATE))
OUT = Path(tempfile.mkdtemp(prefix="nb03-"))  # fresh folder: nothing of yours is overwritten
print(f"{len(train_ds)} train / {len(eval_ds)} eval conversations; validating merges on {len(val_ds)}")

# %% tags=["nbval-ignore-output"]
base = load_model(MODEL, dtype=train_dtype, device=device)
acc_base = evaluate_task(base, tokenizer, eval_ds, progress=False).accuracy
lora_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
run = train_lora(base, tokenizer, train_ds, lora_config, max_steps=MAX_STEPS, logging_steps=50)
adapter_dir = save_adapter(run.model, OUT / "adapter", tokenizer=tokenizer)
print(f"trained in {run.seconds:.1f} s; adapter saved")

# %%
acc_adapter = evaluate_task(run.model, tokenizer, eval_ds, progress=False).accuracy
print(f"final training loss {run.losses[-1]:.3g}")
print(f"shout accuracy: base {acc_base:.1%} -> with adapter {acc_adapter:.1%}")
del run, base


# %% [markdown]
# ## 2. What the seed's "consistent precision" snippet does today
#
# The seed loads the base in float16 and passes `torch_dtype=torch.float16` to `PeftModel.from_pretrained`.
# peft 0.21 silently ignores that argument, and by default (`autocast_adapter_dtype=True`) it keeps the
# LoRA weights in **float32** whatever the base dtype. What decides the merge precision is the dtype you load
# the **base** in (`dtype=`, the new name of `torch_dtype=` in transformers 5): the float32 delta is rounded
# into the base's dtype when merged.

# %%
def lora_dtypes(model):
    return sorted({str(p.dtype).replace("torch.", "") for n, p in model.named_parameters() if "lora_" in n})

def base_dtypes(model):
    return sorted({str(p.dtype).replace("torch.", "") for n, p in model.named_parameters() if "lora_" not in n})

seed_style = PeftModel.from_pretrained(load_model(MODEL, dtype="float16", device=device), str(adapter_dir),
                                       torch_dtype=torch.float16)          # the seed's call: no error ...
print("seed's call   -> base", base_dtypes(seed_style), "| LoRA weights", lora_dtypes(seed_style), "(argument ignored)")
today = load_adapter_checked(load_model(MODEL, dtype="float16", device=device), adapter_dir)
print("today's call  -> base", base_dtypes(today), "| LoRA weights", lora_dtypes(today))
del seed_style, today

# %% [markdown]
# ## 3. Merge in float32, float16 and bfloat16, and measure the drift
#
# For each dtype: load the base in that dtype, attach the adapter, **capture the adapter model's outputs
# before merging** (`capture_reference`: next-token logits of every token and greedy generations, kept on the
# CPU), merge with `safe_merge`, and compare (`compare_to_reference`). Two references:
# - the adapter model *in the same dtype*, judged with that dtype's tolerance (is the merge itself honest?);
# - the float32 adapter model, judged with the strict float32 tolerance (how far is it from what you trained?).
#
# Note: bf16/fp16 matmuls on a CPU are slow (no AVX-512/AMX here), so we time the evaluation too.

# %%
fp32_model = load_adapter_checked(load_model(MODEL, dtype="float32", device=device), adapter_dir)
ref_fp32 = capture_reference(fp32_model, val_ds, tokenizer)
with fp32_model.disable_adapter():
    ref_base_fp32 = capture_reference(fp32_model, val_ds, tokenizer)
del fp32_model
print(f"captured {len(ref_fp32.inputs.sequences)} sequences, {ref_fp32.inputs.n_tokens} tokens, "
      f"vocab {ref_fp32.vocab_size}: {ref_fp32.nbytes / 2**20:.1f} MiB of float32 logits")

# %% tags=["nbval-ignore-output"]
drift, reports, merged_models = {}, {}, {}
for dt in (torch.float32, torch.float16, torch.bfloat16):
    name = str(dt).replace("torch.", "")
    peft_model = load_adapter_checked(load_model(MODEL, dtype=dt, device=device), adapter_dir)
    ref_same = capture_reference(peft_model, val_ds, tokenizer)   # BEFORE merging
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merged, info = safe_merge(peft_model, verbose=False)
    same = compare_to_reference(merged, ref_same, title=f"{name} merged vs {name} adapter")
    strict = compare_to_reference(merged, ref_fp32, tolerance=torch.float32, title=f"{name} merged vs float32 adapter")
    t0 = time.perf_counter()
    acc = evaluate_task(merged, tokenizer, eval_ds, progress=False).accuracy
    eval_s = time.perf_counter() - t0
    drift[name] = {"max_abs": same["max_abs_logit_diff"].value, "mean_abs": same["mean_abs_logit_diff"].value,
                   "mean_kl": same["mean_kl"].value, "top1": same["top1_agreement"].value,
                   "passes_own": same.passed, "max_abs_vs_fp32": strict["max_abs_logit_diff"].value,
                   "top1_vs_fp32": strict["top1_agreement"].value, "passes_strict": strict.passed,
                   "accuracy": acc, "eval_s": eval_s, "merge_s": info.seconds,
                   "warning": str(caught[0].message).split(":")[0] if caught else None}
    reports[name] = same
    merged_models[name] = merged
for name, d in drift.items():
    print(f"{name:>9}: evaluation of {len(eval_ds)} rows took {d['eval_s']:.1f} s, merge {d['merge_s']:.3f} s")

# %% tags=["nbval-ignore-output"]
reports["bfloat16"]   # the full report of one merge (values, limits, verdicts)


# %% [markdown]
# The table below is the one to read (values rounded to 2 significant digits; the verdicts are what matters):

# %%
def g2(x):
    if x < 1e-9:
        return "<1e-9"   # rounding noise: the exact digits depend on the CPU
    return f"{x:.1e}" if x < 0.01 else f"{x:.2g}"

print(f"{'merged in':>9} | {'max|Δ|':>7} {'mean|Δ|':>7} {'mean KL':>7} {'top-1':>6} {'own tol':>7} | "
      f"{'max|Δ| vs fp32':>14} {'strict':>6} | accuracy")
for name, d in drift.items():
    print(f"{name:>9} | {g2(d['max_abs']):>7} {g2(d['mean_abs']):>7} {g2(d['mean_kl']):>7} {d['top1']:>6.1%} "
          f"{'pass' if d['passes_own'] else 'FAIL':>7} | {g2(d['max_abs_vs_fp32']):>14} "
          f"{'pass' if d['passes_strict'] else 'FAIL':>6} | {d['accuracy']:.1%}")
for name, d in drift.items():
    if d["warning"]:
        print(f"safe_merge warned for {name}: {d['warning']} (the delta is rounded to {name})")

# %%
names = list(drift)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
axes[0].bar(names, [max(drift[n]["mean_abs"], 1e-9) for n in names], color="#4c72b0", label="mean |Δlogit|")
axes[0].scatter(names, [drift[n]["max_abs"] for n in names], color="#cf222e", zorder=3, label="max |Δlogit|")
axes[0].set(yscale="log", ylabel="|Δlogit| (logit units, log scale)", xlabel="dtype of base and merge",
            title="Merged vs adapter model: logit drift")
axes[0].legend()
axes[1].bar(names, [max(drift[n]["mean_kl"], 1e-16) for n in names], color="#55a868")
axes[1].set(yscale="log", ylabel="mean KL per token (nats, log scale)", xlabel="dtype of base and merge",
            title="Merged vs adapter model: KL divergence")
fig.tight_layout()
plt.show()

# %% [markdown]
# ### Compare with the H200 reference (SmolLM2-1.7B shape)
#
# The course ships the same measurement on an NVIDIA H200 with a SmolLM2-1.7B-shaped model
# (`data/reference/h200_smollm2-1.7b.json`, "merge_drift"; random weights, so its logits are flatter and
# top-1 flips more easily than on a trained model).

# %%
import json

from course_utils.planner import REFERENCE_PATH

ref_drift = json.loads(Path(REFERENCE_PATH).read_text())["merge_drift"]["by_base_dtype"]
print(f"{'dtype':>9} | {'H200 max|Δ|':>11} {'H200 mean|Δ|':>12} {'H200 top-1':>10} | {'here max|Δ|':>11} {'here top-1':>10}")
for name in drift:
    r = ref_drift[name]
    print(f"{name:>9} | {g2(r['max_abs_adapter_vs_merged']):>11} {g2(r['mean_abs']):>12} {r['top1_agree']:>10.1%} | "
          f"{g2(drift[name]['max_abs']):>11} {drift[name]['top1']:>10.1%}")

# %% [markdown]
# **Rule of thumb.** A float32 merge is exact up to summation order (max |Δlogit| ~1e-5 here and on the H200).
# A float16 merge rounds each merged weight to 11 significant bits and a bfloat16 merge to 8 bits: on the
# H200, bfloat16 moved the logits by up to 0.21 and flipped 11% of the (flat, random-model) top-1 tokens.
# So: **merge in float32 (on the CPU if the GPU is too small) or in the dtype you will serve in, and
# validate against the adapter model in that dtype**; "consistent precision" matters less than *which*
# precision, and a merged bf16 model is only as good as its validation says.

# %% [markdown]
# ## 4. Save the merged model, reload it, validate the round trip
#
# `check_round_trip` saves with `save_merged` (safetensors; refuses to overwrite), reloads with
# `AutoModelForCausalLM.from_pretrained` in the same dtype, and compares the copy with the original.

# %%
from course_utils.validation import check_round_trip

merged32 = merged_models["float32"]
round_trip = check_round_trip(merged32, OUT / "merged-fp32", val_ds, tokenizer)
print("round trip:", "PASS" if round_trip.passed else "FAIL " + ", ".join(round_trip.failed),
      "| max |Δlogit| == 0:", round_trip["max_abs_logit_diff"].value == 0.0)
print("files:", sorted(p.name for p in (OUT / "merged-fp32").iterdir()))


# %%
def folder_mib(path):
    return sum(p.stat().st_size for p in Path(path).rglob("*.safetensors")) / 2**20

base_path = Path(resolve_model_path(MODEL))
sizes = {"adapter (LoRA r=8)": folder_mib(adapter_dir), "merged model (float32)": folder_mib(OUT / "merged-fp32")}
if base_path.is_dir():
    sizes["base model (as shipped)"] = folder_mib(base_path)
for what, mib in sizes.items():
    print(f"{what:<24} {mib:8.2f} MiB")
print(f"the adapter is {sizes['adapter (LoRA r=8)'] / sizes['merged model (float32)']:.1%} of the merged model")

# %% [markdown]
# Saving again into the same folder is refused, with the reason and what to do (nothing is touched):

# %%
try:
    save_merged(merged32, OUT / "merged-fp32", tokenizer=tokenizer)
except OutputExistsError as err:
    print(type(err).__name__ + ":", str(err).replace(str(OUT), "OUT").splitlines()[0])

# %% [markdown]
# ## 5. The seed's `try/except RuntimeError`, done properly
#
# The seed wraps `merge_and_unload()` in `try/except RuntimeError` with "implement fallback strategy" left
# as a comment. A CUDA out-of-memory error is `torch.OutOfMemoryError` (a `RuntimeError` subclass), and
# catching *every* RuntimeError would also hide real bugs. `safe_merge` catches only the OOM and then
# finishes the merge layer by layer (delta computed on the CPU in float32, added in row chunks), and
# reports what it did. We can't run out of memory on purpose here, so we make `merge_and_unload` raise the
# error a full GPU would raise, and check that the fallback result still validates.

# %% tags=["nbval-ignore-output"]
peft_model = load_adapter_checked(load_model(MODEL, dtype="float32", device=device), adapter_dir)

def out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

peft_model.merge_and_unload = out_of_memory   # what a too-small GPU would do
merged_fb, info = safe_merge(peft_model)
fallback_report = compare_to_reference(merged_fb, ref_fp32, title="layer-by-layer fallback vs float32 adapter")
print("fell back:", info.fell_back, "| strategy:", info.strategy)
print("validation:", "PASS" if fallback_report.passed else "FAIL " + ", ".join(fallback_report.failed))
del merged_fb, peft_model

# %% [markdown]
# ## 6. Pitfalls, shown
#
# ### 6a. Merging into a 4-bit quantized base
#
# QLoRA-style: the base is loaded in 4-bit NF4 (bitsandbytes runs on the CPU too; there the compute dtype is
# float32). Merging adds the delta to the *dequantized* weight and then **re-quantizes** the sum: every
# weight is rounded again to one of 16 levels per block (and the block's scale changes), so what is stored
# is the delta plus fresh rounding noise; a delta smaller than one 4-bit step (typical for real models
# trained at lr 1e-4) is mostly rounded away. `safe_merge` refuses with an explanation;
# `merge_with_retention` (course_utils.merging) does the merge anyway and measures what reached the
# stored weights, and `effect_retained` how much of the adapter's effect on the logits survived.

# %%
from course_utils.merging import effect_retained, merge_with_retention
from course_utils.quantization import bnb_4bit_config

q_model = load_adapter_checked(load_model(MODEL, device=device, quantization_config=bnb_4bit_config(device)), adapter_dir)
ref_q = capture_reference(q_model, val_ds, tokenizer)          # adapter on the 4-bit base
with q_model.disable_adapter():
    ref_q_base = capture_reference(q_model, val_ds, tokenizer) # the 4-bit base alone
acc_q_adapter = evaluate_task(q_model, tokenizer, eval_ds, progress=False).accuracy
try:
    safe_merge(q_model)
except QuantizedMergeError as err:
    print(type(err).__name__ + ":", str(err).splitlines()[0][:160] + " ...")

# %%
merged_q, kept = merge_with_retention(q_model)              # merge INTO the 4-bit weights
into_4bit = compare_to_reference(merged_q, ref_q, title="merged into 4-bit vs adapter on 4-bit base")
acc_into_4bit = evaluate_task(merged_q, tokenizer, eval_ds, progress=False).accuracy
kept_into_4bit = effect_retained(ref_q_base, ref_q, capture_reference(merged_q, val_ds, tokenizer))
del merged_q, q_model

q_model = load_adapter_checked(load_model(MODEL, device=device, quantization_config=bnb_4bit_config(device)), adapter_dir)
deq_dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
merged_deq, info = dequantize_for_merge(q_model, dtype=deq_dtype, verbose=False)   # the right way
dequant = compare_to_reference(merged_deq, ref_q, title="dequantize, then merge vs adapter on 4-bit base")
acc_dequant = evaluate_task(merged_deq, tokenizer, eval_ds, progress=False).accuracy
kept_dequant = effect_retained(ref_q_base, ref_q, capture_reference(merged_deq, val_ds, tokenizer))
del merged_deq, q_model

print(f"merge into 4-bit weights: the stored change differs from the LoRA delta by {kept.rel_error:.0%} "
      f"(relative error); {kept.changed_fraction:.0%} of all stored weights changed, not just by the delta")
print(f"{'path':<36} {'verdict':>8} {'mean KL':>8} {'adapter effect kept':>20} {'accuracy':>9}")
print(f"{'adapter on 4-bit base':<36} {'(ref)':>8} {'-':>8} {'100%':>20} {acc_q_adapter:>9.1%}")
print(f"{'merged into 4-bit':<36} {'PASS' if into_4bit.passed else 'FAIL':>8} {g2(into_4bit['mean_kl'].value):>8} "
      f"{kept_into_4bit:>20.0%} {acc_into_4bit:>9.1%}")
print(f"{'dequantized to ' + str(deq_dtype).replace('torch.', '') + ', then merged':<36} "
      f"{'PASS' if dequant.passed else 'FAIL':>8} {g2(dequant['mean_kl'].value):>8} {kept_dequant:>20.0%} {acc_dequant:>9.1%}")

# %% [markdown]
# Read the columns, not just the accuracy: on 48 short answers a damaged merge can score the same or even
# higher by luck, while the weights and the logits show how far the merged model is from the adapter model
# you trained and evaluated (our tiny model's adapter was trained at a high learning rate, so its delta is
# large next to a 4-bit step and much of it survives; with a real model and lr 1e-4 far less does). Dequantize first (or reload the base
# unquantized) and merge there: `dequantize_for_merge` keeps the adapter's full effect.
#
# ### 6b. Merging the same adapter twice
#
# A classic: the merged model is saved, later the adapter is loaded onto *that* model and merged again. Every
# adapted weight becomes `W + 2ΔW`. Nothing errors; validation against the adapter model catches it.

# %%
merged_again = load_model(str(OUT / "merged-fp32"), dtype="float32", device=device)  # already holds W + ΔW
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    twice_model = load_adapter_checked(merged_again, adapter_dir)
for w in [w for w in caught if "was trained on" in str(w.message)]:   # load_adapter_checked noticed
    print("warning:", str(w.message).replace(str(OUT), "OUT").replace(resolve_model_path(MODEL), MODEL).split(". ")[0] + ".")
twice, _ = safe_merge(twice_model, verbose=False)
twice_report = compare_to_reference(twice, ref_fp32, title="merged twice vs float32 adapter")
print("merged twice:", "PASS" if twice_report.passed else "FAIL (" + ", ".join(twice_report.failed[:4]) + ", ...)")
print(f"top-1 agreement {twice_report['top1_agreement'].value:.1%}; "
      f"adapter effect kept {effect_retained(ref_base_fp32, ref_fp32, capture_reference(twice, val_ds, tokenizer)):.0%} "
      "(100% = the adapter model, 0% = the base, below 0: farther from the adapter than the base is)")
del twice, twice_model, merged_again

# %% [markdown]
# ### 6c. Validating with the wrong tokenizer, or against the merged model itself
#
# Logits can only be compared position by position when both models read the same token ids. Here the
# "other" tokenizer is ours with two tokens added (what happens when a training script adds special tokens and
# the deployment loads the original one). And `merge_and_unload()` merges *in place*: comparing the PeftModel
# with what it returned compares a model with itself.

# %%
other_tokenizer = load_tokenizer(MODEL)
other_tokenizer.add_tokens(["<|tool|>", "<|endtool|>"])
peft_model = load_adapter_checked(load_model(MODEL, dtype="float32", device=device), adapter_dir)
try:
    compare_models(peft_model, merged32, val_ds, tokenizer, candidate_tokenizer=other_tokenizer)
except VocabularyMismatchError as err:
    print(type(err).__name__ + ":", str(err).splitlines()[0][:200])
merged_inplace = peft_model.merge_and_unload()
try:
    compare_models(peft_model, merged_inplace, val_ds, tokenizer)
except SameModelError as err:
    print(type(err).__name__ + ":", str(err)[:150] + " ...")
del peft_model, merged_inplace

# %% [markdown]
# ## What we measured

# %%
from IPython.display import Markdown, display

rows = [("shout accuracy: base -> with adapter", f"{acc_base:.1%} -> {acc_adapter:.1%}")]
for name, d in drift.items():
    rows.append((f"{name} merge: own tolerance / strict float32 / accuracy",
                 f"{'pass' if d['passes_own'] else 'FAIL'} / {'pass' if d['passes_strict'] else 'FAIL'} / {d['accuracy']:.1%}"))
rows += [
    ("saved + reloaded float32 merged model", "PASS" if round_trip.passed else "FAIL"),
    ("OOM fallback (layer by layer) validates", "PASS" if fallback_report.passed else "FAIL"),
    ("merge into 4-bit: stored-delta error / effect kept / verdict",
     f"{kept.rel_error:.0%} / {kept_into_4bit:.0%} / {'PASS' if into_4bit.passed else 'FAIL'}"),
    ("dequantize, then merge: effect kept / verdict", f"{kept_dequant:.0%} / {'PASS' if dequant.passed else 'FAIL'}"),
    ("adapter merged twice: verdict", "PASS" if twice_report.passed else "FAIL"),
]
display(Markdown("| measurement | result |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)))

# %% tags=["nbval-ignore-output"]
from course_utils.notebook import record_metrics

record_metrics(accuracy_before=acc_base, accuracy_after=acc_adapter,
               **{f"accuracy_merged_{n}": d["accuracy"] for n, d in drift.items()},
               **{f"max_abs_logit_diff_{n}": d["max_abs"] for n, d in drift.items()},
               delta_rel_error_4bit=kept.rel_error, effect_kept_4bit=kept_into_4bit, effect_kept_dequant=kept_dequant)
print("metrics recorded")

# %% [markdown]
# ## Exercises
#
# **1.** Which base dtype's merge passes the *strict* float32 check against the float32 adapter model?
# Answer with a dtype (e.g. `torch.bfloat16`). Look at the drift table.

# %%
from course_utils.checks.merging import check_double_merge_scale, check_strict_dtype

answer = None   # your answer: torch.float32, torch.float16 or torch.bfloat16
check_strict_dtype(answer)

# %% [markdown]
# ### Solution (skip if you want to try first)

# %%
answer = [name for name, d in drift.items() if d["passes_strict"]][0]
print(answer)
check_strict_dtype(answer)

# %% [markdown]
# **2.** After merging the same adapter twice (section 6b), by what factor is the adapter's delta applied to
# each adapted weight?

# %%
answer = None   # a number
check_double_merge_scale(answer)

# %% [markdown]
# ### Solution (skip if you want to try first)

# %%
answer = 2
check_double_merge_scale(answer)
