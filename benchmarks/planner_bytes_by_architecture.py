"""The planner's weight, gradient and optimizer-state terms vs exact byte counts, per architecture (CPU).

For each tiny model of `course_utils.tiny_models` and each recipe (full fine-tuning in float32,
LoRA r=8 all-linear in float32 and bfloat16), builds the model, runs one real training step with
torch's AdamW on the CPU and counts the bytes of the parameters, of their ``.grad`` and of AdamW's
``exp_avg`` / ``exp_avg_sq`` (torch's 4-byte ``step`` per tensor is left out: on a GPU it stays on
the CPU). Prints planner vs measured per term; exits 1 on any difference. About a second per
architecture.

    python benchmarks/planner_bytes_by_architecture.py [--arch gpt2 falcon]
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from course_utils.planner import Recipe, estimate_training_memory  # noqa: E402
from course_utils.tiny_models import TINY_ARCHITECTURES, tiny_config, tiny_model  # noqa: E402

RECIPES = {"full fp32": ("full", "float32"), "LoRA fp32": ("lora", "float32"), "LoRA bf16": ("lora", "bfloat16")}


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def measure(arch: str, method: str, dtype: str) -> dict[str, int]:
    """Exact bytes of weights, gradients and AdamW state after one step of ``method`` on ``arch``."""
    from peft import LoraConfig, get_peft_model

    model = copy.deepcopy(tiny_model(arch)).to(getattr(torch, dtype))
    if method == "lora":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # GPT-2's Conv1D: peft sets fan_in_fan_out itself
            model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    params = list({id(p): p for p in model.parameters()}.values())
    trainable = [p for p in params if p.requires_grad]
    ids = torch.randint(4, 770, (2, 16), generator=torch.Generator().manual_seed(0))
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    opt.step()
    state = [v for s in opt.state.values() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq")]
    return {
        "weights": _bytes(params),
        "grads": _bytes(p.grad for p in trainable),
        "optimizer state": _bytes(state),
        "trainable": sum(p.numel() for p in trainable),
    }


def planned(arch: str, method: str, dtype: str) -> dict[str, int]:
    est = estimate_training_memory(tiny_config(arch), Recipe(method=method, dtype=dtype, r=8, autocast=False))
    d = est.details
    return {
        "weights": sum(v for k, v in d.items() if k.startswith("weights")),
        "grads": d["grads"],
        "optimizer state": d["optimizer state"],
        "trainable": est.trainable_params,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="*", default=list(TINY_ARCHITECTURES))
    args = parser.parse_args(argv)
    terms = ("trainable", "weights", "grads", "optimizer state")
    print(f"{'architecture':<12} {'recipe':<10} " + " ".join(f"{t + ' plan/measured':>30}" for t in terms))
    bad = 0
    for arch in args.arch:
        for label, (method, dtype) in RECIPES.items():
            plan, real = planned(arch, method, dtype), measure(arch, method, dtype)
            cells = []
            for t in terms:
                same = plan[t] == real[t]
                bad += not same
                cells.append(f"{plan[t]:>13,} / {real[t]:>13,}{'' if same else ' !'}")
            print(f"{arch:<12} {label:<10} " + " ".join(f"{c:>30}" for c in cells))
    print("all terms exact" if not bad else f"{bad} term(s) differ")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
