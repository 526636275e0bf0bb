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
# # 04 · TRL with PEFT: SFTTrainer and DPOTrainer with LoRA
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/peft-course/peft-course/blob/main/notebooks/04_trl.ipynb)
#
# **What you will learn**
# - supervised fine-tuning with TRL's `SFTTrainer`: hand it a LoRA `peft_config` and it wraps the model itself;
#   the loss on the answer only; the config flags a CPU run needs;
# - preference tuning with `DPOTrainer` and LoRA, where `ref_model=None` makes the reference model free: it is the
#   same network with the adapter switched off;
# - DPO's implicit rewards, measured on held-out pairs.
#
# **Time:** about 1 minute on a laptop CPU with the default model (`course-tiny`); a few minutes on a Colab GPU
# with `MODEL = "smollm2-135m"`.
#
# The old tutorial's claims about TRL are checked in [docs/claims.md](../docs/claims.md).

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
# "auto": float32 on CPU; bfloat16 on recent GPUs; float16 on older GPUs (T4, V100) and on Apple's MPS
DTYPE = "auto"
DEVICE = "auto"  # cuda > mps > cpu
# "auto" values follow the model's size (course_utils.hyperparameters); a number overrides
LEARNING_RATE = "auto"  # SFT with LoRA
MAX_STEPS = "auto"  # SFT steps
BATCH_SIZE = "auto"  # SFT batch
DPO_LEARNING_RATE = "auto"  # DPO with LoRA
DPO_STEPS = "auto"
DPO_BATCH_SIZE = "auto"  # preference pairs per step
DPO_BETA = 0.1  # strength of the pull towards the reference model
ACTIVATION_CHECKPOINTING = False  # gradient checkpointing: less activation memory, ~30% more compute; not needed here
SEED = 0

# %% tags=["nbval-ignore-output"]
info = setup(SEED, model=MODEL)
# shown, not claimed: the device and library versions of this machine

# %% [markdown]
# The `"auto"` values come from the model's size: the toy `course-tiny` keeps rates that would wreck a real
# model; a real model gets the rates of TRL's own LoRA and DPO examples.

# %%
import pandas as pd

from course_utils.hyperparameters import resolve, suggest

sft_hp, dpo_hp = suggest(MODEL, "lora"), suggest(MODEL, "dpo")
SFT_LR = resolve(LEARNING_RATE, sft_hp.learning_rate)
SFT_STEPS = resolve(MAX_STEPS, sft_hp.max_steps)
SFT_BATCH = resolve(BATCH_SIZE, sft_hp.batch_size)
DPO_LR = resolve(DPO_LEARNING_RATE, dpo_hp.learning_rate)
DPO_MAX_STEPS = resolve(DPO_STEPS, dpo_hp.max_steps)
DPO_BATCH = resolve(DPO_BATCH_SIZE, dpo_hp.batch_size)
pd.DataFrame(
    {
        "SFT": [SFT_LR, SFT_STEPS, SFT_BATCH, sft_hp.source["learning_rate"]],
        "DPO": [DPO_LR, DPO_MAX_STEPS, DPO_BATCH, dpo_hp.source["learning_rate"]],
    },
    index=["learning rate", "steps", "batch", "where the rate comes from"],
)

# %% [markdown]
# ## 1. SFT with a LoRA `peft_config`
#
# The task: answer tersely, subject and value only. The fact is in the prompt
# (`"The mole is gold. What color is the mole?"` -> `"The mole: gold."`); the base model answers with a full
# sentence, so it scores near 0% by exact match. The adapter has to learn the *form*.

# %% tags=["nbval-ignore-output"]
# shown, not claimed: the start; the lift over it is claimed after training
from course_utils.data import load_task, to_prompt_completion
from course_utils.evaluation import evaluate_task
from course_utils.loading import load_model, load_tokenizer

tokenizer = load_tokenizer(MODEL)
model = load_model(MODEL, dtype=DTYPE, device=DEVICE)
terse = load_task("terse")
sft_before = evaluate_task(model, tokenizer, terse["eval"], progress=False, name="base model")
sft_before

# %% [markdown]
# ### Which tokens carry the loss?
#
# We want the loss on the answer only, not on the prompt. TRL offers two ways:
# - **completion-only loss**: give the dataset as `prompt` / `completion` pairs; `SFTTrainer` masks the prompt.
#   Works with any chat template.
# - **assistant-only loss**: keep `messages` and set `assistant_only_loss=True`. TRL then needs the chat template to
#   mark assistant text with `{% generation %}` markers, which SmolLM2's template (used by `course-tiny`) lacks:

# %%
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

from course_utils.paths import outputs_dir

# ./outputs beside the notebook (Google Drive on Colab); re-running the notebook replaces its own adapters
SFT_DIR = outputs_dir("04-terse-sft")
lora_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
try:  # no peft_config here: SFTTrainer adds LoRA layers to `model` IN PLACE, before this check fails
    SFTTrainer(
        model=model,
        processing_class=tokenizer,
        train_dataset=terse["train"],
        args=SFTConfig(str(SFT_DIR), assistant_only_loss=True, use_cpu=True, bf16=False, report_to="none"),
    )
    print("accepted: this tokenizer's chat template has generation markers")
except ValueError as err:
    print(f"{type(err).__name__}: {str(err).splitlines()[0]}")

# %% [markdown]
# So we convert the conversations to prompt/completion pairs (`course_utils.data.to_prompt_completion`):

# %%
train_pc = to_prompt_completion(terse["train"])
print(train_pc[0])

# %% [markdown]
# ### A config that works on a CPU
#
# TRL's configs set `bf16=True` when you leave it unset. Where no GPU has bf16, the default config fails at once:

# %% tags=["nbval-ignore-output"]
from transformers.utils import is_torch_bf16_gpu_available

try:
    SFTConfig(output_dir=str(SFT_DIR))
    default_config_failed = False
    print("no error: this machine has a GPU with bf16")
except ValueError as err:
    default_config_failed = True
    print(f"{type(err).__name__}: {str(err).splitlines()[0]}")

# %%
from course_utils.notebook import expect

expect(
    "the default SFTConfig fails exactly where no GPU has bf16",
    default_config_failed == (not is_torch_bf16_gpu_available()),
)

# %% [markdown]
# So we set every flag that matters (right on a GPU too): fp32 on CPU, bf16 or fp16 on a GPU; `use_cpu` only
# without an accelerator; activation (gradient) checkpointing decided by us; no pinned memory, reporting or checkpoints;
# `max_length` caps the tokenized rows.
#
# `peft_config=` makes the trainer call `get_peft_model` itself (`"all-linear"`: every linear layer, any
# architecture). `MemoryCallback` adds the peak memory to each log.

# %%
import torch
from transformers import PrinterCallback

from course_utils.memory import MemoryCallback
from course_utils.training import mixed_precision_flags

USE_CPU = not torch.cuda.is_available() and not torch.backends.mps.is_available()
sft_args = SFTConfig(
    output_dir=str(SFT_DIR),
    max_steps=SFT_STEPS,
    per_device_train_batch_size=SFT_BATCH,
    learning_rate=SFT_LR,
    lr_scheduler_type="constant",
    **mixed_precision_flags(DEVICE),  # bf16 on A100 and newer, fp16 on a T4/V100, neither on CPU
    use_cpu=USE_CPU,
    activation_checkpointing=ACTIVATION_CHECKPOINTING,  # TRL's default is True (transformers 5's new name)
    max_length=128,  # was `max_seq_length` in older TRL
    dataloader_pin_memory=False,
    report_to="none",
    save_strategy="no",
    logging_steps=min(10, SFT_STEPS),  # a loss entry even in a run shorter than 10 steps
    disable_tqdm=True,
    seed=SEED,
)
sft_memory = MemoryCallback()
sft_trainer = SFTTrainer(
    model=model,
    args=sft_args,
    train_dataset=train_pc,
    processing_class=tokenizer,
    peft_config=lora_config,
    callbacks=[sft_memory],
)
sft_trainer.remove_callback(PrinterCallback)  # we plot the log instead of printing a dict per log step
print(type(sft_trainer.model).__name__)
sft_trainer.model.print_trainable_parameters()

# %% [markdown]
# The first training row, as the trainer sees it: the prompt carries no loss.

# %%
row = sft_trainer.train_dataset[0]
if "labels" in row:
    n_masked = sum(1 for label in row["labels"] if label == -100)
    answer_ids = [t for t in row["labels"] if t != -100]
else:  # other TRL versions store a completion mask and build the labels in the collator
    n_masked = sum(1 for m in row["completion_mask"] if m == 0)
    answer_ids = [t for t, m in zip(row["input_ids"], row["completion_mask"]) if m]
print(f"{len(row['input_ids'])} tokens, {n_masked} in the prompt (no loss), loss on: {tokenizer.decode(answer_ids)!r}")

# %% tags=["nbval-ignore-output"]
# shown, not claimed: time and memory of this machine
import time

start = time.perf_counter()
sft_trainer.train()
sft_seconds = time.perf_counter() - start
sft_peak = max(p for _, p in sft_memory.steps)
print(
    f"{sft_trainer.state.global_step} steps in {sft_seconds:.1f} s; peak {sft_peak:.0f} MiB ({sft_memory.tracker.what})"
)

# %%
import matplotlib.pyplot as plt

from course_utils.plotting import plot_loss

fig, (ax_loss, ax_mem) = plt.subplots(1, 2, figsize=(11, 3.5))
plot_loss(sft_trainer.state.log_history, title="SFT loss (answer tokens only), LoRA on terse", ax=ax_loss)
sft_memory.plot(ax=ax_mem)
plt.show()

# %% tags=["nbval-ignore-output"]
sft_losses = [r["loss"] for r in sft_trainer.state.log_history if "loss" in r]
sft_model = sft_trainer.model
sft_after = evaluate_task(sft_model, tokenizer, terse["eval"], progress=False, name=f"after {SFT_STEPS} SFT steps")
print(f"loss: first log {sft_losses[0]:.3f} -> last log {sft_losses[-1]:.3f}")
print(f"terse accuracy: {sft_before.accuracy:.1%} -> {sft_after.accuracy:.1%} ({sft_after.correct}/{sft_after.total})")
sft_after

# %%
SFT_LIFT = 0.50  # points of terse accuracy the adapter must add over the base model
expect(
    "the SFT loss fell to less than half of its first logged value",
    sft_losses[-1] < 0.5 * sft_losses[0],
    hint="raise MAX_STEPS or LEARNING_RATE",
)
expect(
    f"terse accuracy rises by >= {100 * SFT_LIFT:.0f} points over the base model after SFT (held-out questions)",
    sft_after.accuracy - sft_before.accuracy >= SFT_LIFT,
    hint="on a real model: MAX_STEPS = 400, or LEARNING_RATE = 5e-4",
)

# %% [markdown]
# The adapter learned a *form*; the fact it needs is in each prompt. That is why a few dozen steps suffice.
# `save_model` writes the adapter (and the tokenizer) where you can load it again with `PeftModel.from_pretrained`:

# %%
sft_trainer.save_model(SFT_DIR)
print(f"{SFT_DIR.parent.name}/{SFT_DIR.name}:", sorted(p.name for p in SFT_DIR.glob("adapter_*")))

# %% [markdown]
# ## 2. DPO with LoRA: the reference model for free
#
# DPO trains on preference pairs: a prompt, a `chosen` and a `rejected` answer. The model being trained (the
# *policy*) is compared with a frozen *reference*. Each answer gets an implicit reward,
# `beta * (log p_policy(answer) - log p_ref(answer))`, and the loss pushes the *margin*
# `reward(chosen) - reward(rejected)` up.
#
# Classic DPO keeps two full models. With LoRA, the reference is the same network with the adapter switched off:

# %%
from course_utils.figures.trl import draw_dpo_with_lora

fig = draw_dpo_with_lora(beta=DPO_BETA)

# %% [markdown]
# Our pairs (`prefs`): the chosen answer is in capitals, the rejected one a normal sentence. How often does the base
# model give the chosen answer the higher log-probability on held-out pairs?

# %%
prefs = load_task("prefs")
print(prefs["train"][0])

# %% tags=["nbval-ignore-output"]
# shown, not claimed: the start; the lift over it is claimed after training
from course_utils.evaluation import preference_accuracy

dpo_base = load_model(MODEL, dtype=DTYPE, device=DEVICE)
pref_before = preference_accuracy(dpo_base, tokenizer, prefs["eval"])
print(f"held-out preference accuracy of the base model: {pref_before:.1%}")

# %% [markdown]
# `ref_model=None` with a `peft_config`: the trainer wraps the model with LoRA and, for the reference pass, runs it
# inside `disable_adapter()`.

# %%
from trl import DPOConfig, DPOTrainer

DPO_DIR = outputs_dir("04-prefs-dpo")


def dpo_args(**overrides):
    args = dict(
        output_dir=str(DPO_DIR),
        max_steps=DPO_MAX_STEPS,
        per_device_train_batch_size=DPO_BATCH,
        learning_rate=DPO_LR,
        lr_scheduler_type="constant",
        beta=DPO_BETA,
        max_length=128,
        **mixed_precision_flags(DEVICE),
        use_cpu=USE_CPU,
        activation_checkpointing=ACTIVATION_CHECKPOINTING,
        dataloader_pin_memory=False,
        report_to="none",
        save_strategy="no",
        logging_steps=2,
        disable_tqdm=True,
        seed=SEED,
    )
    args.update(overrides)
    return DPOConfig(**args)


dpo_lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
dpo_memory = MemoryCallback()
dpo_trainer = DPOTrainer(
    model=dpo_base,
    ref_model=None,
    args=dpo_args(),
    train_dataset=prefs["train"],
    processing_class=tokenizer,
    peft_config=dpo_lora,
    callbacks=[dpo_memory],
)
dpo_trainer.remove_callback(PrinterCallback)
print("policy:", type(dpo_trainer.model).__name__, "| separate reference model:", dpo_trainer.ref_model)


# %% [markdown]
# ### What a separate reference model would cost
#
# A second trainer built the classic way, with `ref_model=` a second copy of the model, and the bytes of the
# distinct parameters each trainer holds:


# %% tags=["nbval-ignore-output"]
def held_bytes(*models):
    """Bytes of the distinct parameter tensors held by the given models (shared tensors counted once)."""
    seen = {}
    for m in models:
        if m is not None:
            for p in m.parameters():
                seen[id(p)] = p.numel() * p.element_size()
    return sum(seen.values())


classic = DPOTrainer(
    model=load_model(MODEL, dtype=DTYPE, device=DEVICE),
    ref_model=load_model(MODEL, dtype=DTYPE, device=DEVICE),
    args=dpo_args(),
    train_dataset=prefs["train"].select(range(8)),
    processing_class=tokenizer,
    peft_config=dpo_lora,
)
shared_bytes = held_bytes(dpo_trainer.model, dpo_trainer.ref_model)
classic_bytes = held_bytes(classic.model, classic.ref_model)
ref_copy_bytes = held_bytes(classic.ref_model)
del classic
pd.DataFrame(
    {"parameters held (MiB)": [shared_bytes / 2**20, classic_bytes / 2**20]},
    index=["ref_model=None", "separate ref_model"],
).round(2)

# %%
expect(
    "a separate ref_model adds exactly one more copy of the base weights; ref_model=None adds none",
    classic_bytes - shared_bytes == ref_copy_bytes and dpo_trainer.ref_model is None,
)

# %% [markdown]
# For the toy that is a few MiB. The same arithmetic for SmolLM2-1.7B (its shipped config, nothing is
# downloaded), with the course's memory planner for the training step: this notebook's `dpo_lora` on a bf16 base,
# 8 pairs of 512 tokens per step (16 sequences: the chosen and the rejected answer). The reference pass runs without
# gradients and keeps no activations, so a separate reference adds its weights.

# %%
from course_utils.planner import Recipe, estimate_training_memory

plan = estimate_training_memory(
    "smollm2-1.7b",
    Recipe(
        method="lora",
        dtype="bfloat16",
        r=dpo_lora.r,
        lora_alpha=dpo_lora.lora_alpha,
        lora_dropout=dpo_lora.lora_dropout,
        target_modules="all-linear",
        batch_size=2 * 8,
        seq_len=512,
    ),
)
ref_gib = plan.n_params * 2 / 2**30  # a bf16 copy of every weight
pd.DataFrame(
    {"planned peak (GiB)": [plan.peak_gib, plan.peak_gib + ref_gib]},
    index=["SmolLM2-1.7B, ref_model=None", "SmolLM2-1.7B, separate bf16 ref_model"],
).round(1)

# %% [markdown]
# ### Train
#
# At step 0 the adapter is zero, the policy *is* the reference, every reward is 0 and the loss is `log 2 = 0.693`.
# Each log row holds the batch's `rewards/chosen`, `rewards/rejected` and `rewards/margins`.

# %% tags=["nbval-ignore-output"]
# shown, not claimed: time and memory of this machine
start = time.perf_counter()
dpo_trainer.train()
dpo_seconds = time.perf_counter() - start
dpo_peak = max(p for _, p in dpo_memory.steps)
print(f"{dpo_trainer.state.global_step} DPO steps in {dpo_seconds:.1f} s; peak {dpo_peak:.0f} MiB")

# %%
logs = [r for r in dpo_trainer.state.log_history if "rewards/margins" in r]
steps = [r["step"] for r in logs]
fig, (ax_r, ax_l) = plt.subplots(1, 2, figsize=(11, 3.5))
for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
    ax_r.plot(steps, [r[key] for r in logs], marker="o", ms=3, label=key.split("/")[1])
ax_r.axhline(0, color="grey", lw=0.8)
ax_r.set(title="DPO implicit rewards (batch means)", xlabel="training step", ylabel="reward (beta x log-prob ratio)")
ax_r.legend()
ax_l.plot(steps, [r["loss"] for r in logs], marker="s", ms=3)
ax_l.axhline(0.6931, color="grey", lw=0.8, ls="--")
ax_l.set(title="DPO loss (log 2 at step 0, dashed)", xlabel="training step", ylabel="loss (nats)")
plt.show()

# %% [markdown]
# The batch means are noisy. The same rewards on the held-out pairs, computed directly: each answer's
# log-probability with the adapter on (policy) and off (reference).

# %% tags=["nbval-ignore-output"]
from course_utils.evaluation import sequence_logprob

dpo_model = dpo_trainer.model


def implicit_rewards(model, pairs, beta):
    """beta * (log p_policy - log p_ref) of each pair's chosen and rejected answer, one row per pair."""
    rows = []
    for pair in pairs:
        answers = {"chosen": pair["chosen"][-1]["content"], "rejected": pair["rejected"][-1]["content"]}
        policy = {k: sequence_logprob(model, tokenizer, pair["prompt"], a) for k, a in answers.items()}
        with model.disable_adapter():  # the reference: the same network, adapter off
            ref = {k: sequence_logprob(model, tokenizer, pair["prompt"], a) for k, a in answers.items()}
        rows.append({k: beta * (policy[k] - ref[k]) for k in answers})
    return pd.DataFrame(rows)


rewards = implicit_rewards(dpo_model, prefs["eval"], DPO_BETA)
rewards["margin"] = rewards["chosen"] - rewards["rejected"]
dpo_final_loss = logs[-1]["loss"]
print(f"last logged DPO loss: {dpo_final_loss:.3f}")
rewards.describe().loc[["mean", "min", "max"]].round(3)

# %%
expect(
    "the DPO loss fell from log 2 = 0.693 to below 0.3",
    dpo_final_loss < 0.3,
    hint="raise DPO_STEPS or DPO_LEARNING_RATE",
)
expect("held-out mean margin grew from 0 to above 2", rewards["margin"].mean() > 2)
expect("held-out mean reward of the rejected answers fell below -2", rewards["rejected"].mean() < -2)
expect(
    "the rejected answers' reward moved more than twice as far as the chosen answers'",
    abs(rewards["rejected"].mean()) > 2 * abs(rewards["chosen"].mean()),
)

# %% [markdown]
# **Reading it.** The margin grew, and most of it came from the rejected answers: their reward moved more than
# twice as far as the chosen answers'. The loss only asks for a larger margin; pushing the rejected answer down is
# one way to get it, so watch `rewards/chosen` as well as the margin.
#
# The measure that counts: on held-out pairs, does the policy now prefer the chosen answer?

# %% tags=["nbval-ignore-output"]
pref_after = preference_accuracy(dpo_model, tokenizer, prefs["eval"])
with dpo_model.disable_adapter():  # the reference again
    pref_ref = preference_accuracy(dpo_model, tokenizer, prefs["eval"])
print(f"held-out preference accuracy: {pref_before:.1%} -> {pref_after:.1%} (adapter off again: {pref_ref:.1%})")

# %%
DPO_LIFT = 0.50  # points of held-out preference accuracy DPO must add over the base model
expect(
    f"held-out preference accuracy rises by >= {100 * DPO_LIFT:.0f} points over the base model after DPO",
    pref_after - pref_before >= DPO_LIFT,
    hint="on a real model: DPO_STEPS = 300, or DPO_LEARNING_RATE = 5e-5",
)
expect("with the adapter disabled it is the base model's again", pref_ref == pref_before)

# %%
dpo_trainer.save_model(DPO_DIR)
print(f"{DPO_DIR.parent.name}/{DPO_DIR.name}:", sorted(p.name for p in DPO_DIR.glob("adapter_*")))

# %% [markdown]
# And the generations? DPO only compares two given answers; it never asks the model to *write* one. Look, but
# don't score DPO by this (in practice one runs SFT first, then DPO):

# %% tags=["nbval-ignore-output"]
# shown, not claimed: generated text; DPO is measured on held-out pairs above
shout_eval = load_task("shout", "eval")
evaluate_task(dpo_model, tokenizer, shout_eval, progress=False, name="after DPO, answers in capitals?")

# %% [markdown]
# **On a real model.** The toy uses a learning rate of 1e-3 so that 30 steps show an effect. With
# `MODEL = "smollm2-135m"` the `"auto"` rate is 5e-6 (TRL's DPO example with LoRA; `DPOConfig`'s own default is
# 1e-6), with more steps. What carries over is the mechanism above.

# %% [markdown]
# ## What we measured

# %% tags=["nbval-ignore-output"]
# shown, not claimed: the numbers the claims above check, with this machine's time and memory
from course_utils.notebook import record_metrics

summary = pd.DataFrame(
    [
        ("SFT terse accuracy", f"{sft_before.accuracy:.1%} -> {sft_after.accuracy:.1%}", f"{SFT_STEPS} steps"),
        ("SFT loss, first -> last log", f"{sft_losses[0]:.3f} -> {sft_losses[-1]:.3f}", ""),
        ("DPO held-out preference accuracy", f"{pref_before:.1%} -> {pref_after:.1%}", f"{DPO_MAX_STEPS} steps"),
        (
            "DPO held-out rewards: chosen / rejected",
            f"{rewards['chosen'].mean():+.3f} / {rewards['rejected'].mean():+.3f}",
            f"beta {DPO_BETA}",
        ),
        (
            "parameters held, ref_model=None vs separate",
            f"{shared_bytes / 2**20:.2f} vs {classic_bytes / 2**20:.2f} MiB",
            "",
        ),
        ("time, peak memory: SFT", f"{sft_seconds:.1f} s, {sft_peak:.0f} MiB", sft_memory.tracker.what),
        ("time, peak memory: DPO", f"{dpo_seconds:.1f} s, {dpo_peak:.0f} MiB", ""),
    ],
    columns=["quantity", "measured", "note"],
).set_index("quantity")
_ = record_metrics(
    model=MODEL,
    accuracy_before=sft_before.accuracy,
    accuracy_after=sft_after.accuracy,
    sft_seconds=round(sft_seconds, 2),
    sft_peak_mem_MiB=round(sft_peak, 1),
    preference_accuracy_before=pref_before,
    preference_accuracy_after=pref_after,
    dpo_seconds=round(dpo_seconds, 2),
    dpo_peak_mem_MiB=round(dpo_peak, 1),
    reference_copy_MiB=round(ref_copy_bytes / 2**20, 2),
)
summary

# %% [markdown]
# ## Exercises
#
# ### Exercise 1: the CPU flag
# Which `SFTConfig` argument makes the default config work on a machine without a GPU? Answer with a dict of keyword
# arguments, e.g. `{"some_flag": value}`.

# %%
from course_utils.checks.trl import check_cpu_flag, check_dpo_reward, check_reference_bytes

answer = None  # e.g. {"flag": value}
check_cpu_flag(answer)

# %% [markdown]
# #### Solution (skip if you want to try first)

# %%
answer = {"bf16": False}  # {"use_cpu": True} works as well
check_cpu_flag(answer)

# %% [markdown]
# ### Exercise 2: the sign of the implicit reward
# After training, the policy gives a chosen answer a log-probability of -10.0; the reference (adapter off) gives it
# -12.0. With `beta=0.1`, what does DPO log as `rewards/chosen` for it?

# %%
answer = None  # a number
check_dpo_reward(answer, policy_logp=-10.0, ref_logp=-12.0, beta=0.1)

# %% [markdown]
# #### Solution (skip if you want to try first)

# %%
answer = 0.1 * (-10.0 - (-12.0))  # beta * (policy - reference): positive, the answer became more likely
check_dpo_reward(answer, policy_logp=-10.0, ref_logp=-12.0, beta=0.1)

# %% [markdown]
# ### Exercise 3: what `ref_model=None` saves
# How many bytes would a separate float32 reference copy of this notebook's model take? Work it out from the number
# of parameters and their dtype.

# %%
reference = load_model(MODEL, dtype="float32", device="cpu")
answer = None  # bytes
check_reference_bytes(answer, reference)

# %% [markdown]
# #### Solution (skip if you want to try first)

# %%
answer = sum(p.numel() * p.element_size() for p in reference.parameters())
check_reference_bytes(answer, reference)

# %% [markdown]
# **Next:** notebook 05 trains only a handful of input vectors (prompt tuning) and compares it with LoRA, prefix
# tuning and IA3.
