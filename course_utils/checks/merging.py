"""Exercise checks for notebook 03 (merging with precision checks).

>>> bool(check_strict_dtype("float32"))
True
>>> bool(check_double_merge_scale(2))
True
"""

from __future__ import annotations

from typing import Any

from course_utils.checks import CheckResult, check_close

__all__ = ["check_double_merge_scale", "check_strict_dtype"]

_DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "torch.float32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "torch.float16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "torch.bfloat16": "bfloat16",
}


def _dtype_name(answer: Any) -> str | None:
    text = str(answer).strip().lower()
    return _DTYPE_NAMES.get(text)


def check_strict_dtype(answer: Any) -> CheckResult:
    """Which base dtype's merge passes the strict float32 tolerance against the float32 adapter model?

    ``answer`` is a dtype (``torch.float32``) or its name (``"float32"``, ``"bf16"``, ...).

    >>> check_strict_dtype("bf16").passed
    False
    """
    name = "dtype whose merge passes the strict check"
    if answer is None:
        return CheckResult(
            name,
            False,
            "No answer yet: replace the `None` with a dtype, e.g. torch.float16.",
            ["Look at the drift table: which row has max |Δlogit| below 1e-3 against the float32 adapter?"],
        )
    dt = _dtype_name(answer)
    if dt is None:
        return CheckResult(
            name,
            False,
            f"{answer!r} is not a dtype this notebook merged in.",
            ["Answer one of torch.float32, torch.float16, torch.bfloat16 (or their names)."],
        )
    if dt == "float32":
        return CheckResult(
            name,
            True,
            "Correct: only a float32 merge reproduces the adapter model to "
            "summation-order noise (max |Δlogit| ~1e-5); 16-bit merges round every merged weight.",
        )
    bits = {"float16": 11, "bfloat16": 8}[dt]
    return CheckResult(
        name,
        False,
        f"A {dt} merge rounds every merged weight to {bits} significant bits, so it "
        "passes the (looser) tolerance of its own dtype but not the strict float32 one.",
        [
            "Compare the `vs fp32 adapter` column of the drift table with the float32 limit (1e-3).",
            "tolerance_for(torch.float32) shows the strict limits.",
        ],
    )


def check_double_merge_scale(answer: Any) -> CheckResult:
    """By what factor is the adapter's delta applied when the same adapter is merged twice?

    >>> check_double_merge_scale(1).passed
    False
    """
    result = check_close(
        "delta scale after merging twice",
        answer,
        2.0,
        "merge_and_unload adds scaling * B @ A to the base weight; the second merge adds it again.",
        "So the merged weight is W + ΔW + ΔW.",
        rel=1e-6,
    )
    if result.passed:
        result.message = (
            "Correct: W + 2ΔW. The validation report catches it because the logits move "
            "as far again past the adapter model."
        )
    return result
