"""Figures for notebook 03: why a merge drifts by dtype.

A merge stores ``W + ΔW`` in the base model's dtype, so the sum is rounded to the nearest number
that dtype can represent. Near a weight ``w`` those numbers are evenly spaced; the spacing is
``2**(e - m)`` where ``2**e <= |w| < 2**(e+1)`` and ``m`` is the dtype's number of stored
mantissa bits (bfloat16 7, float16 10, float32 23). An update smaller than half the spacing
rounds back to ``w``: it vanishes.

>>> import matplotlib
>>> matplotlib.use("Agg")
>>> fig = draw_merge_rounding()
>>> len(fig.axes) >= 1
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["MANTISSA_BITS", "draw_merge_rounding", "grid_spacing", "round_to_dtype"]

MANTISSA_BITS = {"bfloat16": 7, "float16": 10, "float32": 23}


def _bits(dtype: str) -> int:
    name = str(dtype).replace("torch.", "")
    if name not in MANTISSA_BITS:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(MANTISSA_BITS)}: pass one of these names.")
    return MANTISSA_BITS[name]


def grid_spacing(value: float, dtype: str) -> float:
    """The gap between neighbouring numbers of ``dtype`` near ``value`` (normal numbers, value != 0).

    >>> grid_spacing(1.0, "bfloat16"), grid_spacing(1.0, "float16")
    (0.0078125, 0.0009765625)
    >>> grid_spacing(0.75, "float32") == 2**-24
    True
    """
    if value == 0 or not math.isfinite(value):
        raise ValueError(f"grid_spacing needs a finite, non-zero value, got {value!r}: pass a weight such as 0.75.")
    exponent = math.floor(math.log2(abs(value)))
    return 2.0 ** (exponent - _bits(dtype))


def round_to_dtype(value: float, dtype: str) -> float:
    """``value`` rounded to the nearest number of ``dtype`` (ties to even, as torch does; normal range only).

    >>> round_to_dtype(0.75 + 0.0015, "bfloat16")  # the update is below half the spacing: it vanishes
    0.75
    >>> round_to_dtype(0.75 + 0.0015, "float16")
    0.75146484375
    """
    if value == 0:
        return 0.0
    spacing = grid_spacing(value, dtype)
    return round(value / spacing) * spacing  # Python's round() breaks ties to even; exact in float64


def draw_merge_rounding(
    w: float = 0.75,
    delta: float = 0.0015,
    dtypes: Sequence[str] = ("bfloat16", "float16", "float32"),
    *,
    figsize: tuple[float, float] = (9.0, 5.2),
) -> Any:
    """Draw ``w + delta`` rounded to the grid of each dtype: a small update lost in bfloat16, kept in float32.

    One row per dtype: ticks at the numbers that dtype can store near ``w`` (float32's are too
    dense to draw), the weight ``w``, the exact sum ``w + delta`` and what a merge in that dtype
    stores. The row's title says the spacing and how much of ``delta`` survived.

    Args:
        w: a base weight (choose one every dtype can store exactly, e.g. 0.75).
        delta: the LoRA update added to it by the merge.
        dtypes: the rows, each one of ``"bfloat16"``, ``"float16"``, ``"float32"``.
        figsize: size of the figure in inches.

    Returns:
        The matplotlib ``Figure``, one axes per dtype.

    Raises:
        ValueError: an unknown dtype, ``w == 0`` or ``delta == 0``.

    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> fig = draw_merge_rounding(dtypes=["bfloat16"])
    >>> "vanishes" in fig.axes[0].get_title(loc="left")
    True
    """
    import matplotlib.pyplot as plt

    if delta == 0:
        raise ValueError("draw_merge_rounding needs a non-zero delta (the update a merge adds), got 0.")
    names = [str(d).replace("torch.", "") for d in dtypes]
    for name in names:
        _bits(name)
    coarsest = max(grid_spacing(w, n) for n in names)
    half_width = max(1.6 * coarsest, 2.2 * abs(delta))
    lo, hi = w - half_width, w + half_width

    fig, axes = plt.subplots(len(names), 1, figsize=figsize, sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        spacing = grid_spacing(w, name)
        stored = round_to_dtype(w + delta, name)
        kept = (stored - w) / delta
        ax.axhline(0, color="black", lw=1)
        if (hi - lo) / spacing <= 200:
            k0, k1 = math.ceil(lo / spacing), math.floor(hi / spacing)
            ticks = [k * spacing for k in range(k0, k1 + 1)]
            ax.vlines(ticks, -0.35, 0.35, color="#4c72b0", lw=1.2, label="numbers this dtype can store")
        else:
            ax.axhspan(-0.12, 0.12, color="#4c72b0", alpha=0.35, label="numbers this dtype can store")
        ax.plot([w], [0], "o", color="black", ms=8, label="w (base weight)")
        ax.annotate(
            "", xy=(w + delta, 0.55), xytext=(w, 0.55), arrowprops={"arrowstyle": "-|>", "color": "#55a868", "lw": 2}
        )
        ax.text(w + delta / 2, 0.7, "ΔW", ha="center", va="bottom", color="#55a868", fontsize=10)
        ax.plot([w + delta], [0], "o", mfc="white", mec="#55a868", mew=2, ms=9, label="w + ΔW (exact)")
        ax.plot([stored], [0], "x", color="#cf222e", mew=2.5, ms=11, label="what the merge stores")
        if stored == w:
            verdict = "w + ΔW rounds back to w: the update vanishes"
        else:
            verdict = f"the stored change is {kept:.2%} of ΔW"
        ax.set_title(f"{name}: numbers near w are {spacing:.2g} apart;  {verdict}", fontsize=10, loc="left")
        ax.set(ylim=(-0.8, 1.2), yticks=[])
        for side in ("left", "right", "top"):
            ax.spines[side].set_visible(False)
    axes[-1, 0].set_xlim(lo, hi)
    axes[-1, 0].set_xlabel(f"weight value (w = {w}, ΔW = {delta})")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle("A merge rounds W + ΔW to the grid of the base model's dtype", fontsize=12)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig
