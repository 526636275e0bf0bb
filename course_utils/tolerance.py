"""How close a merged (or reloaded) model must stay to its reference: one :class:`Tolerance` per dtype.

An honest merge in float32 reproduces the adapter model almost exactly; in bfloat16 or float16 the
rounding moves every logit a little. :data:`DEFAULT_TOLERANCES` holds measured limits for each
dtype and :func:`tolerance_for` picks the one for the least precise dtype of a comparison.
``course_utils.validation`` judges its metrics against them.

>>> import torch
>>> DEFAULT_TOLERANCES[torch.bfloat16].mean_kl
0.005
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["DEFAULT_TOLERANCES", "Tolerance", "tolerance_for"]


@dataclass(frozen=True)
class Tolerance:
    """Limits that an honest merge stays within, for one dtype.

    ``None`` means "report, don't judge". Relative limits divide by the reference model's logit
    scale (the standard deviation of its logits over the vocabulary, averaged over tokens), so
    they mean the same thing for a flat random model and for a sharp trained one.

    Args:
        name: label shown in reports (usually the dtype).
        max_abs_logit: largest allowed ``max |Δlogit|``; a single outlier, so only judged in float32.
        rel_mean_abs_logit: largest allowed ``mean |Δlogit| / logit scale``.
        rel_max_abs_logit: largest allowed ``max |Δlogit| / logit scale``.
        mean_kl: largest allowed mean per-token KL(reference || candidate), in nats.
        max_kl: largest allowed per-token KL, in nats.
        top1_agreement: smallest allowed fraction of positions with the same argmax token.
        generation_match: smallest allowed fraction of prompts whose greedy generations match exactly.
        rel_perplexity: largest allowed ``|ppl_candidate / ppl_reference - 1|``.
        max_abs_logprob: largest allowed ``|Δ log-prob|`` of a greedily generated token, between a model and
            the same model served by an engine (``validation.compare_served``).
        reason: why these numbers (shown in reports).

    >>> Tolerance(name="mine", mean_kl=1e-4).mean_kl
    0.0001
    """

    name: str = "custom"
    max_abs_logit: float | None = None
    rel_mean_abs_logit: float | None = None
    rel_max_abs_logit: float | None = None
    mean_kl: float | None = None
    max_kl: float | None = None
    top1_agreement: float | None = None
    generation_match: float | None = None
    rel_perplexity: float | None = None
    max_abs_logprob: float | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        for key in (
            "max_abs_logit",
            "rel_mean_abs_logit",
            "rel_max_abs_logit",
            "mean_kl",
            "max_kl",
            "rel_perplexity",
            "max_abs_logprob",
        ):
            value = getattr(self, key)
            if value is not None and not value >= 0:
                raise ValueError(f"Tolerance.{key} must be >= 0 or None, got {value!r}.")
        for key in ("top1_agreement", "generation_match"):
            value = getattr(self, key)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"Tolerance.{key} is a fraction in [0, 1], got {value!r}.")

    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain dict."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# How these were chosen (issue 4; numbers in the tolerance reasons). Honest merges: all-linear
# r=16 LoRA with lora_B ~ N(0, 0.02), adapter model vs merged model in the same dtype, measured on
# course-tiny (CPU), on a SmolLM2-1.7B-shaped random model (H200, 24 layers) and on a 2-layer
# SmolLM2-shaped copy (CPU). Wrong merges: one layer's delta off by 1-10%, every delta off by 10%
# (lora_alpha slip), the adapter merged twice, another adapter merged. Rounding noise grows with
# depth, so each limit sits ~3x above the deepest honest merge measured (SmolLM2-1.7B shape) and,
# where the dtype allows, well below the wrong merges. Judged: the metrics that average the
# rounding noise (mean |Δlogit| relative to the logit scale, mean KL, perplexity); the single
# worst token (max |Δ|, max KL) and greedy text are judged only where rounding can't move them.
DEFAULT_TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float32: Tolerance(
        name="float32",
        max_abs_logit=None,
        rel_mean_abs_logit=5e-5,
        rel_max_abs_logit=5e-4,
        mean_kl=1e-8,
        max_kl=1e-6,
        top1_agreement=0.995,
        generation_match=1.0,
        rel_perplexity=1e-4,
        max_abs_logprob=1e-3,
        reason=(
            "float32 merges are exact up to summation order: relative mean |Δlogit| 5e-7 on "
            "course-tiny and 5e-6 on the SmolLM2-1.7B shape (H200: max |Δ| 3e-5, top-1 100%), "
            "mean KL ~1e-12. A 1% slip in one layer's delta already gives 5e-5 to 3e-4. If TF32 "
            "matmuls are on (CUDA), float32 is judged with the float16 limits. Served (compare_served): vLLM's CPU "
            "engine and server gave peft's greedy tokens with max |Δ log-prob| 3e-7 to 2e-5 (LoRA, rsLoRA, merged); "
            "an adapter scaled 10% wrong, or rsLoRA read as α/r, moves it past 1e-3."
        ),
    ),
    torch.float16: Tolerance(
        name="float16",
        rel_mean_abs_logit=0.012,
        rel_max_abs_logit=0.1,
        mean_kl=1e-4,
        max_kl=None,
        top1_agreement=0.95,
        generation_match=None,
        rel_perplexity=0.01,
        max_abs_logprob=0.05,
        reason=(
            "float16 rounds every merged weight to 11 significant bits: relative mean |Δlogit| "
            "7e-4 on course-tiny, 4e-3 on the SmolLM2-1.7B shape (H200: max |Δ| 0.027, top-1 "
            "100%). Catches an adapter merged twice, a wrong adapter, or every delta off by 10% "
            "(0.015-0.2); one layer off by a few percent (~1e-3) is below the rounding. Max KL and "
            "greedy text are reported, not judged; served log-probs within 0.05 (between float32 and bfloat16)."
        ),
    ),
    torch.bfloat16: Tolerance(
        name="bfloat16",
        rel_mean_abs_logit=0.1,
        rel_max_abs_logit=None,
        mean_kl=5e-3,
        max_kl=None,
        top1_agreement=0.8,
        generation_match=None,
        rel_perplexity=0.05,
        max_abs_logprob=0.25,
        reason=(
            "bfloat16 keeps 8 significant bits, so merging moves each weight by up to 0.4%: "
            "relative mean |Δlogit| 7e-3 on course-tiny and 0.034 on the SmolLM2-1.7B shape (H200: "
            "max |Δ| 0.21, top-1 89% on flat random logits). Judged on relative mean |Δ|, mean KL "
            "(honest ~1e-4 to ~1e-3, merged twice or wrong adapter 0.04-0.07) and perplexity. An "
            "error smaller than the rounding (one layer, or every delta, off by 10%) cannot be "
            "seen in bfloat16: merge and validate a float32 copy when that matters. Served: a bfloat16 merge of "
            "course-tiny moves generated tokens' log-probs by up to 0.02; 0.25 leaves room for deeper models."
        ),
    ),
}


def tolerance_for(*dtypes: torch.dtype | str) -> Tolerance:
    """The default tolerance for the least precise of ``dtypes``.

    Comparing a float32 adapter model with a bfloat16 merged model is judged as bfloat16.

    >>> import torch
    >>> tolerance_for(torch.float32, torch.bfloat16).name
    'bfloat16'
    >>> tolerance_for("float16").name
    'float16'
    """
    order = [torch.bfloat16, torch.float16, torch.float32]
    chosen = torch.float32
    for dt in dtypes:
        if isinstance(dt, str):
            dt = getattr(torch, dt.replace("torch.", ""), None)
            if not isinstance(dt, torch.dtype):
                raise ValueError(f"Unknown dtype name {dtypes!r}; use e.g. 'float32', 'float16', 'bfloat16'.")
        if dt not in order:  # float64 and friends are at least as precise as float32
            continue
        if order.index(dt) < order.index(chosen):
            chosen = dt
    return DEFAULT_TOLERANCES[chosen]
