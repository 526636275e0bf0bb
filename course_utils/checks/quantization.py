"""Exercise checks for notebook 06 (QLoRA and 8-bit with bitsandbytes).

>>> bool(check_nf4_bytes(8_654_852))
True
>>> bool(check_gc_tradeoff("a"))
True
"""

from __future__ import annotations

from typing import Any

from course_utils.checks import CheckResult
from course_utils.quantization import nf4_weight_bytes

__all__ = ["GC_CHOICES", "check_gc_tradeoff", "check_nf4_bytes"]


def check_nf4_bytes(answer: Any, out_features: int = 2048, in_features: int = 8192) -> CheckResult:
    """Bytes of an NF4 weight matrix with double quantization (blocks of 64, nested blocks of 256).

    Accepts the exact count with or without the ~1 KB of code tables (within 0.1%).

    >>> check_nf4_bytes(2048 * 8192 // 2).passed
    False
    """
    name = f"bytes of a {out_features} x {in_features} NF4 weight (double quant)"
    n = out_features * in_features
    expected = nf4_weight_bytes(out_features, in_features)
    if answer is None:
        return CheckResult(
            name,
            False,
            "No answer yet: replace the `None` with a number of bytes.",
            ["Start with the packed weights: two 4-bit values per byte."],
        )
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return CheckResult(name, False, f"Expected a number of bytes, got {type(answer).__name__} {answer!r}.")
    if abs(value - expected) <= 1e-3 * expected:
        return CheckResult(
            name,
            True,
            f"Correct: {int(value):,} bytes = {value / n * 8:.3f} bits per weight "
            f"({value / 2**20:.2f} MiB vs {2 * n / 2**20:.0f} MiB in bfloat16).",
        )
    hints: list[str] = []
    if abs(value - n / 2) <= 1e-3 * n:
        hints.append("That is the packed weights only: add the absmax constants (one per block of 64 weights).")
    elif abs(value - nf4_weight_bytes(out_features, in_features, double_quant=False)) <= 1e-3 * n:
        hints.append(
            "That counts each absmax as float32: with double quantization it is one uint8 per block, "
            "plus one float32 per 256 blocks."
        )
    elif abs(value - n * 4) <= 1e-3 * n or abs(value - n * 4.125) <= 1e-2 * n:
        hints.append("That looks like bits, not bytes: divide by 8.")
    elif abs(value - n) <= 1e-2 * n:
        hints.append("One byte per weight is int8 (LLM.int8): 4-bit packs two weights per byte.")
    hints.append("packed = n / 2; absmax = n / 64 (uint8) + 4 * n / (64 * 256) (float32) + 4 (offset).")
    direction = "too high" if value > expected else "too low"
    return CheckResult(name, False, f"You answered {value:,.0f}, which is {direction}.", hints)


GC_CHOICES = {
    "a": "less activation memory, paid for with extra compute: each layer's forward pass runs again during backward",
    "b": "fewer trainable parameters, paid for with lower accuracy",
    "c": "smaller weights, paid for with quantization error",
    "d": "a smaller optimizer state, paid for with slower convergence",
}


def check_gc_tradeoff(answer: Any) -> CheckResult:
    """What does gradient checkpointing trade? ``answer`` is a letter from :data:`GC_CHOICES`.

    >>> check_gc_tradeoff("c").passed
    False
    """
    name = "what gradient checkpointing trades"
    if answer is None:
        return CheckResult(
            name,
            False,
            "No answer yet: replace the `None` with a letter a-d.",
            ["Compare qlora4_r16_all and qlora4_r16_all_gc in the reference: peak memory AND step time."],
        )
    key = str(answer).strip().lower().rstrip(")")
    if key not in GC_CHOICES:
        return CheckResult(name, False, f"{answer!r} is not one of the choices {sorted(GC_CHOICES)}.")
    if key == "a":
        return CheckResult(
            name,
            True,
            "Correct: it keeps only each layer's input and recomputes the rest in "
            "backward. On the H200, QLoRA went from 22.7 to 4.6 GiB and its step from 0.25 to 0.49 s.",
        )
    why = {
        "b": "The trainable parameters are the same with and without it (18.1M in both reference rows).",
        "c": "The weights are the same; quantization is what bitsandbytes does.",
        "d": "The optimizer state only depends on the trainable parameters, which don't change.",
    }[key]
    return CheckResult(name, False, why, ["Which part of the planner's breakdown shrinks when you switch it on?"])
