"""Figures for notebook 06 (QLoRA): how NF4 stores a weight matrix in about 4.13 bits per weight.

>>> import matplotlib
>>> matplotlib.use("Agg")
>>> fig = draw_nf4_blocks()
>>> len(fig.axes) >= 1
True
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["NF4_LEVELS", "draw_nf4_blocks", "nf4_bits_per_weight"]

#: The 16 NF4 levels (QLoRA, Dettmers et al. 2023), as bitsandbytes stores them (``get_4bit_type("nf4")``):
#: quantiles of a standard normal distribution, scaled to [-1, 1], with an exact zero.
NF4_LEVELS: tuple[float, ...] = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)

WEIGHTS = "#dce6f2"  # the 4-bit codes
SCALE = "#f4a259"  # one absmax per block
NESTED = "#8cb369"  # the second-level (double-quantization) constants


def nf4_bits_per_weight(blocksize: int = 64, double_quant: bool = True, nested_blocksize: int = 256) -> float:
    """Bits per weight of NF4: 4 for the code plus the block's absmax spread over its ``blocksize`` weights.

    Without double quantization each absmax is a float32 (32 bits per block); with it, each absmax is
    stored in 8 bits and every ``nested_blocksize`` absmax values share one float32 scale.

    Args:
        blocksize: weights that share one absmax (bitsandbytes: 64).
        double_quant: ``bnb_4bit_use_double_quant`` (quantize the absmax values too).
        nested_blocksize: absmax values that share one float32 scale under double quantization (256).

    Returns:
        Bits per weight, ignoring the 16-entry code tables and the one float32 offset per tensor.

    >>> round(nf4_bits_per_weight(double_quant=False), 3), round(nf4_bits_per_weight(), 3)
    (4.5, 4.127)
    """
    if blocksize < 1 or nested_blocksize < 1:
        raise ValueError(
            f"blocksize={blocksize}, nested_blocksize={nested_blocksize}: both must be >= 1 (bitsandbytes: 64, 256)."
        )
    if not double_quant:
        return 4 + 32 / blocksize
    return 4 + 8 / blocksize + 32 / (blocksize * nested_blocksize)


def _box(ax: Any, x: float, y: float, w: float, h: float, text: str, color: str, fontsize: int = 9) -> Any:
    from matplotlib.patches import Rectangle

    patch = Rectangle((x, y), w, h, facecolor=color, edgecolor="#333333", linewidth=1.0)
    ax.add_patch(patch)
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize)
    return patch


def _arrow(ax: Any, start: tuple[float, float], end: tuple[float, float], text: str = "") -> None:
    ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "->", "color": "#333333", "lw": 1.2})
    if text:
        ax.text((start[0] + end[0]) / 2 + 0.08, (start[1] + end[1]) / 2, text, fontsize=8, va="center")


def draw_nf4_blocks(blocksize: int = 64, nested_blocksize: int = 256) -> Any:
    """NF4 with double quantization: blocks of weights, one absmax each, 16 normal-quantile levels.

    Top: a row of a weight matrix cut into blocks of ``blocksize`` weights. Each weight is stored as a
    4-bit index into the 16 NF4 levels after dividing by its block's absmax (the largest ``|w|`` in the
    block); the absmax values are quantized again to 8 bits in groups of ``nested_blocksize``, each
    group with one float32 scale (double quantization). Bottom: the 16 levels on [-1, 1] under a
    normal density: dense near 0, where most weights are, sparse in the tails.

    Args:
        blocksize: weights per block (bitsandbytes: 64).
        nested_blocksize: absmax values per float32 scale under double quantization (256).

    Returns:
        The matplotlib ``Figure`` (two ``Axes``: the storage layout, the levels).

    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> fig = draw_nf4_blocks()
    >>> any("absmax" in t.get_text() for t in fig.axes[0].texts), len(fig.axes[1].lines) >= 16
    (True, True)
    """
    import matplotlib.pyplot as plt

    fig, (ax, lv) = plt.subplots(2, 1, figsize=(11, 6.2), gridspec_kw={"height_ratios": [1.35, 1]})
    ax.set_xlim(0, 11.6)
    ax.set_ylim(0, 3.6)
    ax.axis("off")

    # one row of the weight matrix, cut into blocks
    ax.text(0.1, 3.35, "one row of a weight matrix (float)", fontsize=9, va="center")
    n_shown, w = 4, 2.3
    for i in range(n_shown):
        x = 0.1 + i * (w + 0.15)
        _box(ax, x, 2.55, w, 0.55, f"block {i + 1}: {blocksize} weights\n4-bit codes ({blocksize // 2} bytes)", WEIGHTS)
        _box(ax, x + 0.55, 1.55, 1.2, 0.45, f"absmax {i + 1}", SCALE)
        _arrow(ax, (x + w / 2, 2.52), (x + w / 2, 2.03))
    ax.text(10.05, 2.82, "...", fontsize=14, va="center")
    ax.text(
        9.7,
        1.78,
        f"w = absmax x level[code]\nabsmax: {8 / blocksize:.3g} bit/weight",
        fontsize=8,
        va="center",
        ha="left",
    )

    # double quantization: the absmax values themselves in 8 bits, one float32 scale per group
    _box(ax, 0.65, 0.35, 8.1, 0.5, f"absmax values in 8 bits, groups of {nested_blocksize} blocks", SCALE)
    _box(ax, 8.95, 0.35, 1.9, 0.5, "1 float32 scale\nper group", NESTED, fontsize=8)
    for i in range(n_shown):
        x = 0.1 + i * (w + 0.15) + 1.15
        _arrow(ax, (x, 1.52), (x, 0.88))
    ax.text(0.1, 1.2, "double\nquantization", fontsize=8, va="center", style="italic")
    ax.set_title(
        f"NF4: 4 bits per weight + one absmax per {blocksize} weights = "
        f"{nf4_bits_per_weight(blocksize, False, nested_blocksize):.2f} bits; "
        f"with double quantization {nf4_bits_per_weight(blocksize, True, nested_blocksize):.3f} bits",
        fontsize=10,
    )

    # the 16 levels under a normal density
    xs = [i / 200 * 2.4 - 1.2 for i in range(201)]
    sigma = 1 / 2.5  # a block's weights divided by their absmax: roughly normal, most within [-1, 1]
    dens = [math.exp(-0.5 * (x / sigma) ** 2) for x in xs]
    lv.fill_between(xs, dens, color="#eeeeee")
    lv.plot(xs, dens, color="#888888", lw=1, label="weights / absmax (roughly normal)")
    for i, q in enumerate(NF4_LEVELS):
        lv.plot([q, q], [0, 1.05], color="#1f4e79", lw=1.3)
        lv.text(q, 1.08, f"{i:x}", ha="center", fontsize=7, color="#1f4e79")
    lv.plot([], [], color="#1f4e79", lw=1.3, label="the 16 NF4 levels (code 0-f)")
    lv.set(xlim=(-1.2, 1.2), ylim=(0, 1.25), yticks=[], xlabel="value / absmax")
    lv.set_title("NF4 levels sit at normal quantiles: each level covers an equal share of the weights", fontsize=10)
    lv.legend(loc="upper left", fontsize=8, frameon=False)
    for side in ("top", "right", "left"):
        lv.spines[side].set_visible(False)
    fig.tight_layout()
    return fig
