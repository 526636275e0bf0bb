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
# A LoRA adapter adds `scaling · B @ A` to some weight matrices. `merge_and_unload()` folds that update into the
# base weights: inference needs no adapter code and has no extra latency. The merged weights are stored in the
# base model's dtype, which can change the outputs: we **measure** by how much, in each precision, and validate
# the merged model before it ships.
#
# The old tutorial's claims about merging (one
# consistent precision, `try/except RuntimeError`) are checked in [docs/claims.md](../docs/claims.md).
#
# **You will learn to**
# - merge with peft's own calls (`PeftModel.from_pretrained`, `merge_and_unload()`, `save_pretrained`) and compare
#   the merged model's logits with the adapter model's in plain torch (max |Δlogit|, KL, top-1);
# - see why a merge drifts by dtype, and measure it in float32, float16 and bfloat16;
# - capture the adapter model's outputs *before* merging and validate the merged model against them;
# - save the merged model, reload it and validate the round trip;
# - survive an out-of-memory error during a merge;
# - recognise three pitfalls by their symptoms: merging into a 4-bit base, merging twice, the wrong tokenizer.
#
# **Time:** about 1 minute on a CPU with the default `course-tiny` model; a few minutes on a Colab GPU with a
# SmolLM2 model.

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
MAX_STEPS = "auto"  # LoRA training steps
BATCH_SIZE = "auto"
SEED = 0
N_VALIDATE = 16  # eval conversations the merge validation runs on

# %% tags=["nbval-ignore-output"]
info = setup(SEED, model=MODEL)
# shown, not claimed: this machine's device and library versions

# %% [markdown]
# ## 1. Train a small adapter to merge
#
# LoRA r=8 on every linear layer, for the `shout` task (answers in CAPITALS), trained with `train_lora` (notebook
# 01's loop in one call) and saved with peft's `save_pretrained`. Everything this notebook writes goes under
# `outputs/` beside the notebook (in Google Drive on Colab, when it is mounted: `outputs_dir`).

# %%
import shutil
from pathlib import Path

from course_utils.data import load_task
from course_utils.loading import load_tokenizer, resolve_device, resolve_dtype
from course_utils.paths import outputs_dir

device = resolve_device(DEVICE)
train_dtype = resolve_dtype(DTYPE, device)
tokenizer = load_tokenizer(MODEL)
train_ds, eval_ds = load_task("shout", "train"), load_task("shout", "eval")
val_ds = eval_ds.select(range(N_VALIDATE))
ADAPTER_DIR = outputs_dir("03-shout-lora")
MERGED_DIR = outputs_dir("03-shout-merged")  # section 2, peft's own calls
CHECKED_DIR = outputs_dir("03-shout-merged-checked")  # section 5, the course's helpers
for folder in (ADAPTER_DIR, MERGED_DIR, CHECKED_DIR):
    shutil.rmtree(folder, ignore_errors=True)  # re-running the notebook replaces its own adapter and merged models
print(f"{len(train_ds)} train / {len(eval_ds)} eval conversations; validating merges on {len(val_ds)}")

# %% tags=["nbval-ignore-output"]
import pandas as pd
from peft import LoraConfig

from course_utils.evaluation import evaluate_task
from course_utils.hyperparameters import resolve, suggest
from course_utils.loading import load_model
from course_utils.training import train_lora

pd.options.display.float_format = "{:.3g}".format  # 3 significant digits in every table below
pd.options.display.max_colwidth = 100  # long row labels in full
base = load_model(MODEL, dtype=train_dtype, device=device)
acc_base = evaluate_task(base, tokenizer, eval_ds, progress=False).accuracy
hp = suggest(base, method="lora")
lora_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
run = train_lora(
    base,
    tokenizer,
    train_ds,
    lora_config,
    learning_rate=resolve(LEARNING_RATE, hp.learning_rate),
    max_steps=resolve(MAX_STEPS, hp.max_steps),
    batch_size=resolve(BATCH_SIZE, hp.batch_size),
    logging_steps=50,
)
run.model.save_pretrained(ADAPTER_DIR)  # adapter_config.json + adapter_model.safetensors
acc_adapter = evaluate_task(run.model, tokenizer, eval_ds, progress=False).accuracy
train_seconds, last_loss = run.seconds, run.losses[-1]
del run, base
pd.Series(
    {
        "shout accuracy, base (%)": 100 * acc_base,
        "shout accuracy, with the adapter (%)": 100 * acc_adapter,
        "last training loss": last_loss,
        "training seconds": train_seconds,
    }
)

# %%
from course_utils.notebook import expect

expect(
    "the adapter lifts shout accuracy by at least 50 points over the base model",
    acc_adapter - acc_base >= 0.5,
    hint="train longer (MAX_STEPS) or with a higher LEARNING_RATE",
)


# %% [markdown]
# ## 2. The plain merge, in peft's own calls
#
# The whole lesson in the dozen lines you would write without this course: attach the adapter with
# `PeftModel.from_pretrained`, run it once and keep its logits, `merge_and_unload()`, run the merged model on the
# same tokens, compare, `save_pretrained`.
#
# The comparison is plain torch: the largest |Δlogit| over every real (non-padding) token and vocabulary entry;
# the KL divergence of the merged model's next-token distribution from the adapter model's (in float64, so
# float32's own rounding in the log-softmax does not swamp the difference); how often both pick the same top-1
# token.

# %% tags=["nbval-ignore-output"]
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from course_utils.loading import resolve_model_path

base_path = resolve_model_path(MODEL)  # course-tiny is a local folder; a hub id works the same way
plain_base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32).to(device)
plain_peft = PeftModel.from_pretrained(plain_base, str(ADAPTER_DIR))  # base + adapter, not merged
texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in val_ds["messages"]]
batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
real = batch["attention_mask"].bool()  # compare real tokens, not padding

with torch.no_grad():
    logits_adapter = plain_peft(**batch).logits[real].float().cpu()  # BEFORE merging (see below why)
plain_merged = plain_peft.merge_and_unload()  # W <- W + scaling * B @ A
with torch.no_grad():
    logits_merged = plain_merged(**batch).logits[real].float().cpu()
plain_merged.save_pretrained(MERGED_DIR)  # config.json + model.safetensors
tokenizer.save_pretrained(MERGED_DIR)

log_p = logits_adapter.double().log_softmax(-1)  # adapter model
log_q = logits_merged.double().log_softmax(-1)  # merged model
kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # KL(adapter || merged) per token
max_abs = (logits_adapter - logits_merged).abs().max().item()
top1 = (logits_adapter.argmax(-1) == logits_merged.argmax(-1)).float().mean().item()
print(f"{len(kl)} tokens: max |Δlogit| {max_abs:.2e}, mean KL {kl.mean().item():.2e} nats, top-1 agreement {top1:.1%}")

# %% [markdown]
# The digits above depend on the CPU's summation order. The claims below check bounds that hold on any machine: a
# float32 merge changes the logits by less than 1e-4 and the distribution by less than 1e-8 nats (mean KL), and
# the top-1 token agrees on at least 99% of positions.

# %%
expect("float32 merge matches the adapter model within 1e-4 (max |Δlogit|)", max_abs < 1e-4)
expect("mean KL(adapter || merged) is below 1e-8 nats", kl.mean().item() < 1e-8)
expect("the top-1 token agrees on at least 99% of positions", top1 >= 0.99)
print("merge_and_unload() returned the base model object itself (merged in place):", plain_merged is plain_base)
print("LoRA modules left in the merged model:", sum("lora_" in n for n, _ in plain_merged.named_modules()))
print(f"saved to outputs/{MERGED_DIR.name}:", sorted(p.name for p in MERGED_DIR.iterdir()))
del plain_base, plain_peft, plain_merged, logits_adapter, logits_merged

# %% [markdown]
# Two facts from these lines shape everything that follows:
# - **`merge_and_unload()` merges in place.** The merged model *is* the base model object the adapter was
#   attached to, so the adapter model no longer exists after the merge: capture its outputs *before*.
# - **A threshold like 1e-4 is a float32 threshold.** A 16-bit merge rounds every merged weight (section 4), so
#   what counts as "matches" depends on the dtype.
#
# ## 3. The helpers the rest of the notebook uses, and why
#
# The rest of the notebook uses these helpers from `course_utils` (`course_utils/merging.py`,
# `course_utils/validation.py`) in place of the calls above. Each one is the same library call plus what a real
# merge needs:
#
# | you wrote above | the rest of the notebook uses | what it adds |
# |---|---|---|
# | `PeftModel.from_pretrained(base, folder)` | `load_adapter_checked(base, folder)` | checks that the adapter's module names and shapes fit this base before loading; a damaged `adapter_config.json` or a truncated `.safetensors` file gets one error that names the file and the fix |
# | `logits_adapter = peft_model(**batch).logits` before merging | `ref = capture_reference(peft_model, val_ds, tokenizer)` | the same "before" snapshot, kept on the CPU in float32 (real tokens only) plus greedy generations, so you can merge in place without a second copy of the model on the GPU |
# | `peft_model.merge_and_unload()` | `merged, info = safe_merge(peft_model)` | on a CUDA out-of-memory error it finishes the merge layer by layer instead of stopping half-way (section 6); refuses a 4-bit base, where the merge would round the update away (section 7a); warns when a float32 update is rounded into a 16-bit base |
# | the max \|Δlogit\|, KL and top-1 lines | `report = compare_to_reference(merged, ref)` | the same metrics plus perplexity and greedy-text match, each judged against a tolerance for the dtype (float32 is held to summation-order noise, bfloat16 to its 8-bit rounding) |
# | `merged.save_pretrained(folder)` | `save_merged(merged, folder, tokenizer=tokenizer)`, `round_trip(...)` | refuses to overwrite a folder and writes to a temporary folder first; `round_trip` also reloads and compares |

# %% [markdown]
# ## 4. Why a merge drifts by dtype, measured in float32, float16 and bfloat16
#
# A merge stores `W + ΔW` in the base model's dtype: every sum is rounded to the nearest number that dtype can
# store. Near a weight `w` those numbers are evenly spaced, `2^(e−m)` apart for `2^e ≤ |w| < 2^(e+1)`, with `m`
# mantissa bits: 7 in bfloat16, 10 in float16, 23 in float32. A part of `ΔW` smaller than half the spacing is
# rounded away.

# %%
from course_utils.figures.merging import draw_merge_rounding

fig = draw_merge_rounding(w=0.75, delta=0.0015)

# %% [markdown]
# peft keeps the LoRA weights in float32 whatever the base dtype (`autocast_adapter_dtype=True`), so what decides
# the merge precision is the dtype you load the **base** in. For each dtype: load the base in it, attach the
# adapter, **capture the adapter model's outputs before merging** (`capture_reference`), merge with `safe_merge`,
# and compare (`compare_to_reference`) with two references:
#
# - the adapter model *in the same dtype*, judged with that dtype's tolerance (is the merge itself honest?);
# - the float32 adapter model, judged with the strict float32 tolerance (how far is it from what you trained?).

# %%
import warnings

from course_utils.merging import load_adapter_checked, safe_merge
from course_utils.validation import capture_reference, compare_to_reference

fp32_model = load_adapter_checked(load_model(MODEL, dtype="float32", device=device), ADAPTER_DIR)
ref_fp32 = capture_reference(fp32_model, val_ds, tokenizer)
with fp32_model.disable_adapter():
    ref_base_fp32 = capture_reference(fp32_model, val_ds, tokenizer)
del fp32_model
print(
    f"captured {len(ref_fp32.inputs.sequences)} sequences, {ref_fp32.inputs.n_tokens} tokens, "
    f"vocab {ref_fp32.vocab_size}: {ref_fp32.nbytes / 2**20:.1f} MiB of float32 logits"
)


# %% tags=["nbval-ignore-output"]
def dtype_names(model, lora):
    return "/".join(
        sorted({str(p.dtype).replace("torch.", "") for n, p in model.named_parameters() if ("lora_" in n) == lora})
    )


drift, reports, merged_models = {}, {}, {}
for dt in (torch.float32, torch.float16, torch.bfloat16):
    name = str(dt).replace("torch.", "")
    peft_model = load_adapter_checked(load_model(MODEL, dtype=dt, device=device), ADAPTER_DIR)
    lora_dtype, base_dtype = dtype_names(peft_model, lora=True), dtype_names(peft_model, lora=False)
    ref_same = capture_reference(peft_model, val_ds, tokenizer)  # BEFORE merging
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merged, info = safe_merge(peft_model, verbose=False)
    same = compare_to_reference(merged, ref_same, title=f"{name} merged vs {name} adapter")
    strict = compare_to_reference(merged, ref_fp32, tolerance=torch.float32, title=f"{name} merged vs float32 adapter")
    drift[name] = {
        "base weights": base_dtype,
        "LoRA weights": lora_dtype,
        "max |Δlogit|": same["max_abs_logit_diff"].value,
        "mean |Δlogit|": same["mean_abs_logit_diff"].value,
        "mean KL": same["mean_kl"].value,
        "top-1": same["top1_agreement"].value,
        "own tolerance": same.passed,
        "max |Δlogit| vs fp32 adapter": strict["max_abs_logit_diff"].value,
        "strict fp32": strict.passed,
        "accuracy": evaluate_task(merged, tokenizer, eval_ds, progress=False).accuracy,
        "warning": str(caught[0].message).split(":")[0] if caught else None,
    }
    reports[name] = same
    merged_models[name] = merged
pd.DataFrame.from_dict(drift, orient="index").drop(columns="warning")

# %% tags=["nbval-ignore-output"]
reports["bfloat16"]  # the full report of one merge (values, limits, verdicts)

# %%
for name, d in drift.items():
    if d["warning"]:
        print(f"safe_merge warned for {name}: {d['warning']} (the update is rounded to {name})")
expect(
    "peft keeps the LoRA weights in float32 on every base dtype",
    all(d["LoRA weights"] == "float32" for d in drift.values()),
)
expect("every merge passes the tolerance of its own dtype", all(d["own tolerance"] for d in drift.values()))
expect(
    "only the float32 merge passes the strict float32 check",
    [n for n, d in drift.items() if d["strict fp32"]] == ["float32"],
)
expect("float32 merge: max |Δlogit| below 1e-4", drift["float32"]["max |Δlogit|"] < 1e-4)
expect(
    "drift grows float32 < float16 < bfloat16 (mean |Δlogit|)",
    drift["float32"]["mean |Δlogit|"] < drift["float16"]["mean |Δlogit|"] < drift["bfloat16"]["mean |Δlogit|"],
)
expect(
    "every merged model's accuracy is within 10 points of the adapter model's",
    all(abs(d["accuracy"] - acc_adapter) <= 0.10 for d in drift.values()),
)

# %% [markdown]
# ### Compare with the H200 reference (SmolLM2-1.7B shape)
#
# The course ships the same measurement on an NVIDIA H200 with a SmolLM2-1.7B-shaped model
# (`data/reference/h200_smollm2-1.7b.json`, "merge_drift": LoRA r=16 on every linear layer with lora_B ~ N(0,
# 0.02), 2 × 128 random tokens; random weights, so its logits are flatter and top-1 flips more easily than on a
# trained model).

# %% tags=["nbval-ignore-output"]
import json

from course_utils.planner import REFERENCE_PATH

ref_drift = json.loads(Path(REFERENCE_PATH).read_text())["merge_drift"]["by_base_dtype"]
pd.DataFrame.from_dict(
    {
        name: {
            "H200 max |Δlogit|": ref_drift[name]["max_abs_adapter_vs_merged"],
            "H200 top-1": ref_drift[name]["top1_agree"],
            "here max |Δlogit|": drift[name]["max |Δlogit|"],
            "here top-1": drift[name]["top-1"],
        }
        for name in drift
    },
    orient="index",
)

# %%
for name in ("float32", "float16", "bfloat16"):
    expect(
        f"{name}: max |Δlogit| here is within 10x of the H200's (either way)",
        ref_drift[name]["max_abs_adapter_vs_merged"] / 10
        <= drift[name]["max |Δlogit|"]
        <= 10 * ref_drift[name]["max_abs_adapter_vs_merged"],
    )

# %% [markdown]
# **Rule of thumb.** A float32 merge is exact up to summation order (below 1e-4 here, checked above). float16 keeps
# 11 significant bits of each merged weight and bfloat16 8, so the drift grows in that order, here and on the
# H200. The drift grows with depth and width, so a 4-layer model is the gentle case: run this notebook with
# `MODEL="smollm2-135m"` (or your model) to see yours.
#
# So: **merge in float32 (on the CPU if the GPU is too small) or in the dtype you will serve in, and validate
# against the adapter model in that dtype.** Which precision matters more than keeping one precision throughout,
# and a merged bfloat16 model is only as good as its validation says.

# %% [markdown]
# ## 5. Save the merged model, reload it, validate the round trip
#
# `round_trip` saves with `save_merged` (safetensors; refuses to overwrite), reloads with
# `AutoModelForCausalLM.from_pretrained` in the same dtype, and compares the copy with the original: the section 2
# steps after `save_pretrained`, as one call.

# %%
from course_utils.merging import round_trip

merged32 = merged_models["float32"]
reloaded = round_trip(merged32, CHECKED_DIR, val_ds, tokenizer)
expect("the reloaded float32 model passes validation", reloaded.passed)
expect(
    "its logits are bit-identical to the original's (max |Δlogit| == 0)", reloaded["max_abs_logit_diff"].value == 0.0
)
print(f"files in outputs/{CHECKED_DIR.name}:", sorted(p.name for p in CHECKED_DIR.iterdir()))


# %%
def folder_mib(path):
    return sum(p.stat().st_size for p in Path(path).rglob("*.safetensors")) / 2**20


sizes = {"adapter (LoRA r=8)": folder_mib(ADAPTER_DIR), "merged model (float32)": folder_mib(CHECKED_DIR)}
if Path(base_path).is_dir():
    sizes["base model (as shipped)"] = folder_mib(base_path)
print(f"the adapter is {sizes['adapter (LoRA r=8)'] / sizes['merged model (float32)']:.1%} of the merged model")
pd.Series(sizes, name="MiB").round(2).to_frame()

# %% [markdown]
# Saving again into the same folder is refused, with the reason and what to do (nothing is touched):

# %%
from course_utils.merging import OutputExistsError, save_merged

try:
    save_merged(merged32, CHECKED_DIR, tokenizer=tokenizer)
except OutputExistsError as err:
    print(type(err).__name__ + ":", str(err).replace(str(CHECKED_DIR), f"outputs/{CHECKED_DIR.name}").splitlines()[0])

# %% [markdown]
# ## 6. Out of memory during a merge
#
# `merge_and_unload()` needs room for each layer's update on the GPU; on a full GPU it raises
# `torch.OutOfMemoryError`. That is a subclass of `RuntimeError`, but so are shape mismatches and other real bugs:
# catch the out-of-memory error only. `safe_merge` does, then finishes the merge layer by layer (update computed
# on the CPU in float32, added in row chunks) and reports what it did.

# %%
print("torch.OutOfMemoryError is a RuntimeError:", issubclass(torch.OutOfMemoryError, RuntimeError))

# %% [markdown]
# We can't run out of memory on purpose here, so we make `merge_and_unload` raise the error a full GPU would raise,
# and check that the fallback's result still validates.

# %% tags=["nbval-ignore-output"]
peft_model = load_adapter_checked(load_model(MODEL, dtype="float32", device=device), ADAPTER_DIR)


def out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")


peft_model.merge_and_unload = out_of_memory  # what a too-small GPU would do
merged_fb, info = safe_merge(peft_model)
fallback_report = compare_to_reference(merged_fb, ref_fp32, title="layer-by-layer fallback vs float32 adapter")
print("fell back:", info.fell_back, "| strategy:", info.strategy)
del merged_fb, peft_model

# %%
expect("safe_merge fell back to the layer-by-layer merge", info.fell_back)
expect("the fallback's merged model passes the float32 check against the adapter model", fallback_report.passed)

# %% [markdown]
# ## 7. Pitfalls, shown
#
# ### 7a. Merging into a 4-bit quantized base
#
# QLoRA-style, the base is loaded in 4-bit NF4. Merging adds the update to the *dequantized* weight and then
# **re-quantizes** the sum: every weight is rounded again to one of 16 levels per block. What is stored is the
# update plus fresh rounding noise, and an update smaller than one 4-bit step is mostly rounded away.
#
# `safe_merge` refuses with an explanation; `merge_with_retention` merges anyway and measures what reached the
# stored weights; `effect_retained` measures how much of the adapter's effect on the logits survived. This needs
# bitsandbytes, which has no macOS build: there the section is skipped.

# %%
from course_utils.architectures import bitsandbytes_support
from course_utils.merging import QuantizedMergeError, effect_retained, merge_with_retention, quantization_of
from course_utils.platform_support import bitsandbytes_available
from course_utils.quantization import bnb_4bit_config

HAS_BITSANDBYTES, why = bitsandbytes_available()
if not HAS_BITSANDBYTES:
    print(why)
else:
    q_model = load_adapter_checked(
        load_model(MODEL, device=device, quantization_config=bnb_4bit_config(device)), ADAPTER_DIR
    )
    ref_q = capture_reference(q_model, val_ds, tokenizer)  # adapter on the 4-bit base
    with q_model.disable_adapter():
        ref_q_base = capture_reference(q_model, val_ds, tokenizer)  # the 4-bit base alone
    if quantization_of(q_model) is None:  # nothing was quantized (Falcon): safe_merge would merge and consume q_model
        print(bitsandbytes_support(q_model.get_base_model()))
    else:
        try:
            safe_merge(q_model)
        except QuantizedMergeError as err:
            print(type(err).__name__ + ":", str(err).splitlines()[0][:160] + " ...")

# %% tags=["nbval-ignore-output"]
from IPython.display import display

from course_utils.merging import dequantize_for_merge

if HAS_BITSANDBYTES:
    acc_q_adapter = evaluate_task(q_model, tokenizer, eval_ds, progress=False).accuracy
    merged_q, kept = merge_with_retention(q_model)  # merge INTO the 4-bit weights
    into_4bit = compare_to_reference(merged_q, ref_q, title="merged into 4-bit vs adapter on 4-bit base")
    acc_into_4bit = evaluate_task(merged_q, tokenizer, eval_ds, progress=False).accuracy
    kept_into_4bit = effect_retained(ref_q_base, ref_q, capture_reference(merged_q, val_ds, tokenizer))
    del merged_q, q_model

    q_model = load_adapter_checked(
        load_model(MODEL, device=device, quantization_config=bnb_4bit_config(device)), ADAPTER_DIR
    )
    deq_dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    merged_deq, info = dequantize_for_merge(q_model, dtype=deq_dtype, verbose=False)  # the right way
    dequant = compare_to_reference(merged_deq, ref_q, title="dequantize, then merge vs adapter on 4-bit base")
    acc_dequant = evaluate_task(merged_deq, tokenizer, eval_ds, progress=False).accuracy
    kept_dequant = effect_retained(ref_q_base, ref_q, capture_reference(merged_deq, val_ds, tokenizer))
    del merged_deq, q_model
    print(
        f"merged into 4-bit weights: the stored change differs from the LoRA update by {kept.rel_error:.0%} "
        f"(relative error); {kept.changed_fraction:.0%} of all stored weights changed"
    )
    display(
        pd.DataFrame.from_dict(
            {
                "adapter on the 4-bit base": {
                    "verdict": "(reference)",
                    "mean KL": 0.0,
                    "effect kept": 1.0,
                    "accuracy": acc_q_adapter,
                },
                "merged into 4-bit": {
                    "verdict": "PASS" if into_4bit.passed else "FAIL",
                    "mean KL": into_4bit["mean_kl"].value,
                    "effect kept": kept_into_4bit,
                    "accuracy": acc_into_4bit,
                },
                f"dequantized to {str(deq_dtype).replace('torch.', '')}, then merged": {
                    "verdict": "PASS" if dequant.passed else "FAIL",
                    "mean KL": dequant["mean_kl"].value,
                    "effect kept": kept_dequant,
                    "accuracy": acc_dequant,
                },
            },
            orient="index",
        )
    )

# %%
if HAS_BITSANDBYTES:
    expect(
        "merged into the 4-bit weights: the stored change is at least 10% off the LoRA update", kept.rel_error >= 0.10
    )
    expect("merged into the 4-bit weights: validation against the adapter model fails", not into_4bit.passed)
    expect("dequantized, then merged: validation passes", dequant.passed)
    expect("dequantized, then merged: at least 95% of the adapter's effect is kept", kept_dequant >= 0.95)

# %% [markdown]
# Read the columns, not just the accuracy: on 48 short answers a damaged merge can score the same or even higher by
# luck, while the weights and the logits show how far the merged model is from the adapter model you trained.
#
# Our tiny model's adapter was trained at a high learning rate, so its update is large next to a 4-bit step and
# much of it survives. A real model trained at lr 1e-4 has a far smaller update next to the step: run this notebook
# with `MODEL="smollm2-135m"` and read the "effect kept" column. Dequantize first (or reload the base unquantized)
# and merge there: `dequantize_for_merge` keeps the adapter's full effect.
#
# ### 7b. Merging the same adapter twice
#
# A classic: the merged model is saved, later the adapter is loaded onto *that* model and merged again. Every
# adapted weight becomes `W + 2ΔW`. Nothing errors; validation against the adapter model catches it.

# %%
merged_again = load_model(str(MERGED_DIR), dtype="float32", device=device)  # section 2's merge: already W + ΔW
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    twice_model = load_adapter_checked(merged_again, ADAPTER_DIR)
for w in [w for w in caught if "was trained on" in str(w.message)]:  # load_adapter_checked noticed
    message = str(w.message).replace(str(base_path), MODEL)
    for folder in (ADAPTER_DIR, MERGED_DIR):  # paths relative to the notebook, as everywhere else
        message = message.replace(str(folder), f"outputs/{folder.name}")
    print("warning:", message.split(". ")[0] + ".")
twice, _ = safe_merge(twice_model, verbose=False)

# %% tags=["nbval-ignore-output"]
twice_report = compare_to_reference(twice, ref_fp32, title="merged twice vs float32 adapter")
twice_kept = effect_retained(ref_base_fp32, ref_fp32, capture_reference(twice, val_ds, tokenizer))
print("merged twice:", "PASS" if twice_report.passed else "FAIL (" + ", ".join(twice_report.failed) + ")")
print(
    f"top-1 agreement {twice_report['top1_agreement'].value:.1%}; adapter effect kept {twice_kept:.0%} "
    "(100% = the adapter model, 0% = the base, below 0: farther from the adapter than the base is)"
)
del twice, twice_model, merged_again

# %%
expect("the adapter merged twice fails validation against the adapter model", not twice_report.passed)
expect("its mean KL is over the float32 limit", "mean_kl" in twice_report.failed)
expect("it keeps less than half of the adapter's effect", twice_kept < 0.5)

# %% [markdown]
# ### 7c. Validating with the wrong tokenizer, or against the merged model itself
#
# Logits can only be compared position by position when both models read the same token ids. Here the "other"
# tokenizer is ours with two tokens added (what happens when a training script adds special tokens and the
# deployment loads the original one). And `merge_and_unload()` merges *in place*: comparing the PeftModel with what
# it returned compares a model with itself (section 2 showed they are one object).

# %%
from course_utils.validation import SameModelError, VocabularyMismatchError, compare_models

other_tokenizer = load_tokenizer(MODEL)
other_tokenizer.add_tokens(["<|tool|>", "<|endtool|>"])
peft_model = load_adapter_checked(load_model(MODEL, dtype="float32", device=device), ADAPTER_DIR)
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
#
# On the default model in this notebook (accuracies and drift digits vary a little between CPU families):

# %% tags=["nbval-ignore-output"]
# shown, not claimed: a summary of the numbers claimed above
summary = {"shout accuracy: base -> with adapter": f"{acc_base:.1%} -> {acc_adapter:.1%}"}
for name, d in drift.items():
    summary[f"{name} merge: own tolerance / strict float32 / accuracy"] = (
        f"{'pass' if d['own tolerance'] else 'FAIL'} / {'pass' if d['strict fp32'] else 'FAIL'} / {d['accuracy']:.1%}"
    )
summary["plain merge (section 2): max |Δlogit| / mean KL / top-1"] = (
    f"{max_abs:.1e} / {kl.mean().item():.1e} / {top1:.0%}"
)
summary["saved + reloaded float32 merged model"] = "PASS" if reloaded.passed else "FAIL"
summary["out-of-memory fallback (layer by layer) validates"] = "PASS" if fallback_report.passed else "FAIL"
if HAS_BITSANDBYTES:
    summary["merge into 4-bit: stored-update error / effect kept / verdict"] = (
        f"{kept.rel_error:.0%} / {kept_into_4bit:.0%} / {'PASS' if into_4bit.passed else 'FAIL'}"
    )
    summary["dequantize, then merge: effect kept / verdict"] = (
        f"{kept_dequant:.0%} / {'PASS' if dequant.passed else 'FAIL'}"
    )
summary["adapter merged twice: effect kept / verdict"] = (
    f"{twice_kept:.0%} / {'PASS' if twice_report.passed else 'FAIL'}"
)
pd.Series(summary, name="result").to_frame()

# %%
from course_utils.notebook import record_metrics

_ = record_metrics(
    accuracy_before=acc_base,
    accuracy_after=acc_adapter,
    **{f"accuracy_merged_{n}": d["accuracy"] for n, d in drift.items()},
    **{f"max_abs_logit_diff_{n}": d["max |Δlogit|"] for n, d in drift.items()},
    **(
        {
            "delta_rel_error_4bit": kept.rel_error,
            "effect_kept_4bit": kept_into_4bit,
            "effect_kept_dequant": kept_dequant,
        }
        if HAS_BITSANDBYTES
        else {}
    ),
)

# %% [markdown]
# ## Exercises
#
# **1.** Which base dtype's merge passes the *strict* float32 check against the float32 adapter model? Answer with a
# dtype (e.g. `torch.bfloat16`). Look at the drift table in section 4.

# %%
from course_utils.checks.merging import check_double_merge_scale, check_strict_dtype

answer = None  # your answer: torch.float32, torch.float16 or torch.bfloat16
check_strict_dtype(answer)

# %% [markdown]
# ### Solution (skip if you want to try first)

# %%
answer = next(name for name, d in drift.items() if d["strict fp32"])
print(answer)
check_strict_dtype(answer)

# %% [markdown]
# **2.** After merging the same adapter twice (section 7b), by what factor is the adapter's update applied to each
# adapted weight?

# %%
answer = None  # a number
check_double_merge_scale(answer)

# %% [markdown]
# ### Solution (skip if you want to try first)

# %%
answer = 2
check_double_merge_scale(answer)
