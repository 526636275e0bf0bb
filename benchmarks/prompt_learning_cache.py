"""The KV-cache trap of prompt-learning models, measured: ``evaluate_task`` defaults vs the uncached reference.

Trains prompt tuning, prefix tuning and p-tuning on the ``terse`` task (the default model,
course-tiny), then evaluates each three ways on the eval split:

- ``default``: ``evaluate_task(model, tokenizer, eval)`` with default arguments (what a learner writes);
- ``reference``: a plain ``model.generate(..., use_cache=False)`` loop in left-padded batches of 16, written
  without course_utils; ``one by one``: the same without padding (prompt learning is sensitive to it);
- ``cache on``: ``evaluate_task(..., use_cache=True)``, the trap the default now avoids.

Exits 1 if the default differs from the uncached reference for any method. About 65 s for all
three on 2 near-idle CPU cores with the defaults (prompt tuning: 20 random virtual tokens, lr 0.3,
200 steps, as notebooks/05_prompt_tuning.py trains it).

    python benchmarks/prompt_learning_cache.py                # all three methods
    python benchmarks/prompt_learning_cache.py --steps 100 --methods "prompt tuning"
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from course_utils.data import load_task, split_prompt
from course_utils.evaluation import evaluate_task
from course_utils.loading import load_model, load_tokenizer
from course_utils.training import train_lora

METHODS = ("prompt tuning", "prefix tuning", "p-tuning")
LR = {"prompt tuning": 3e-1, "prefix tuning": 3e-2, "p-tuning": 1e-2}


def make_config(method: str, num_virtual_tokens: int):
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig

    if method == "prompt tuning":
        return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens)
    if method == "prefix tuning":
        return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens)
    return PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens, encoder_hidden_size=64)


@torch.no_grad()
def uncached_reference_accuracy(model, tokenizer, dataset, max_new_tokens: int, batch_size: int) -> float:
    """Exact-match accuracy from plain ``generate(use_cache=False)``, in left-padded batches of ``batch_size``.

    ``batch_size=16`` batches like ``evaluate_task`` (so only the cache can make them differ); ``1`` has no
    padding at all, which moves a prompt-learning model's positions away from its left-padded training batches.
    """
    model.eval()
    tokenizer.padding_side = "left"
    pairs = [split_prompt(m) for m in dataset["messages"]]
    correct = 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        enc = tokenizer.apply_chat_template(
            [p for p, _ in chunk],
            add_generation_prompt=True,
            tokenize=True,
            padding=True,
            return_dict=True,
            return_tensors="pt",
        ).to(model.device)
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        answers = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        correct += sum(a.strip() == e.strip() for a, (_, e) in zip(answers, chunk))
    return correct / len(pairs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="course-tiny")
    parser.add_argument("--task", default="terse")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=20, help="virtual tokens")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args(argv)

    tokenizer = load_tokenizer(args.model)
    task = load_task(args.task)
    longest = max(
        len(tokenizer(split_prompt(m)[1], add_special_tokens=False)["input_ids"]) for m in task["eval"]["messages"]
    )
    print(f"{args.task}, {args.steps} steps, {args.tokens} virtual tokens, model {args.model}")
    print(
        f"{'method':<14} {'lr':>6} {'train s':>8} {'default':>8} {'reference':>10} {'one by one':>10} {'cache on':>9}"
    )
    mismatch = False
    for method in args.methods:
        torch.manual_seed(0)
        run = train_lora(
            load_model(args.model),
            tokenizer,
            task["train"],
            make_config(method, args.tokens),
            max_steps=args.steps,
            learning_rate=LR[method],
        )
        default = evaluate_task(run.model, tokenizer, task["eval"], progress=False).accuracy
        reference = uncached_reference_accuracy(run.model, tokenizer, task["eval"], longest + 4, batch_size=16)
        unpadded = uncached_reference_accuracy(run.model, tokenizer, task["eval"], longest + 4, batch_size=1)
        with warnings.catch_warnings():  # the cached run is the trap, asked for on purpose
            warnings.simplefilter("ignore")
            cached = evaluate_task(run.model, tokenizer, task["eval"], progress=False, use_cache=True).accuracy
        mismatch |= default != reference
        print(
            f"{method:<14} {LR[method]:>6.0e} {run.seconds:>8.1f} {default:>8.1%} {reference:>10.1%} {unpadded:>10.1%} "
            f"{cached:>9.1%}" + ("  <-- default differs from the reference" if default != reference else ""),
            flush=True,
        )
    return 1 if mismatch else 0


if __name__ == "__main__":
    start = time.perf_counter()
    code = main()
    print(f"({time.perf_counter() - start:.0f} s)")
    sys.exit(code)
