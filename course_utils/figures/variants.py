"""Figure of notebook 09's idea: LoRA's variants are knobs on the same update ``W + s · B A``.

One panel per knob: the scaling ``s`` (``alpha/r`` for LoRA, ``alpha/sqrt(r)`` for rsLoRA) as the
rank grows; DoRA's split of each weight row into a magnitude and a direction; the start of ``B A``
(zero for LoRA, the top singular vectors of ``W`` for PiSSA, which leaves the residual in the base);
and LoftQ's start, which makes ``B A`` cancel the 4-bit quantization error.

>>> fig = draw_variant_knobs()
>>> len(fig.axes)
4
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not when the module is
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["draw_variant_knobs"]

FROZEN = "#c9ced6"  # grey-blue: weights that do not train
TRAINABLE = "#f4a259"  # orange: the adapter's matrices
ZERO = "#fbe3cc"  # light orange: B at its start (all zeros)
MAGNITUDE = "#7fb77e"  # green: DoRA's trainable magnitude vector


def _box(
    ax: Axes, x: float, y: float, w: float, h: float, color: str, label: str, caption: str = "", size: float = 11
) -> None:
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((x, y), w, h, facecolor=color, edgecolor="black", lw=1.0))
    ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=size, fontweight="bold")
    if caption:
        ax.text(x + w / 2, y - 0.12, caption, ha="center", va="top", fontsize=8)


def _scaling_panel(ax: Axes, lora_alpha: float, ranks: list[int]) -> None:
    ax.plot(ranks, [lora_alpha / r for r in ranks], "o-", color="#4c72b0", label="LoRA: α / r")
    ax.plot(ranks, [lora_alpha / math.sqrt(r) for r in ranks], "s-", color=TRAINABLE, label="rsLoRA: α / √r")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xticks(ranks, [str(r) for r in ranks])
    ax.set_xlabel("rank r")
    ax.set_ylabel(f"scaling s (α = {lora_alpha:g})")
    ax.set_title("1. The scaling: rsLoRA keeps s large at high rank", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")


def _dora_panel(ax: Axes) -> None:
    _box(ax, 0.0, 0.3, 0.35, 2.0, MAGNITUDE, "m", "magnitude\n(d_out)")
    ax.text(0.55, 1.3, "·", ha="center", va="center", fontsize=20)
    _box(ax, 0.75, 0.3, 1.6, 2.0, FROZEN, "W + s·BA", "")
    ax.text(1.55, 0.18, "direction: rows of W + s·BA,\neach divided by its norm", ha="center", va="top", fontsize=8)
    ax.plot([0.7, 0.7], [0.3, 2.3], color="black", lw=1)
    ax.plot([2.4, 2.4], [0.3, 2.3], color="black", lw=1)
    ax.text(2.55, 1.3, "/ ‖·‖ per row", ha="left", va="center", fontsize=9)
    ax.text(
        1.75,
        2.65,
        "DoRA: W' = m · (W + s·BA) / ‖W + s·BA‖\nthe norm is recomputed in every forward until merged",
        ha="center",
        va="bottom",
        fontsize=8,
    )
    ax.set_title("2. DoRA: a trainable length per row", fontsize=10)
    ax.set_xlim(-0.2, 3.8)
    ax.set_ylim(-0.6, 3.4)
    ax.axis("off")


def _init_panel(ax: Axes) -> None:
    rows = [
        ("LoRA", "W", FROZEN, "B = 0, A random", ZERO, "starts exactly at W"),
        (
            "PiSSA",
            "W − U_r S_r V_rᵀ",
            FROZEN,
            "B A = U_r S_r V_rᵀ",
            TRAINABLE,
            "top-r singular part trains;\nthe BASE changes",
        ),
    ]
    for i, (name, base, base_color, adapter, adapter_color, note) in enumerate(rows):
        y = 1.7 - i * 1.5
        ax.text(-0.1, y + 0.4, name, ha="right", va="center", fontsize=10, fontweight="bold")
        _box(ax, 0.0, y, 1.7, 0.8, base_color, base, size=8)
        ax.text(1.85, y + 0.4, "+", ha="center", va="center", fontsize=14)
        _box(ax, 2.0, y, 1.7, 0.8, adapter_color, adapter, size=8)
        ax.text(3.8, y + 0.4, note, ha="left", va="center", fontsize=8)
    ax.set_title("3. The start: where B A begins (OLoRA: a QR of W, same idea)", fontsize=10)
    ax.set_xlim(-0.9, 5.6)
    ax.set_ylim(-0.2, 2.8)
    ax.axis("off")


def _loftq_panel(ax: Axes) -> None:
    _box(ax, 0.0, 1.0, 1.2, 0.8, FROZEN, "Q(W)", "4-bit base")
    ax.text(1.35, 1.4, "+", ha="center", va="center", fontsize=16)
    _box(ax, 1.5, 1.0, 1.2, 0.8, TRAINABLE, "s · B A", "")
    ax.text(2.1, 0.88, "= rank-r SVD of\nW − Q(W)", ha="center", va="top", fontsize=8)
    ax.text(2.85, 1.4, "≈", ha="center", va="center", fontsize=16)
    _box(ax, 3.0, 1.0, 1.2, 0.8, "white", "W", "full precision")
    ax.text(
        2.1,
        2.2,
        "QLoRA starts at Q(W) (B = 0); LoftQ starts nearer W.\nOnly useful when the base really is loaded in 4-bit.",
        ha="center",
        va="bottom",
        fontsize=8,
    )
    ax.set_title("4. LoftQ: the adapter starts by undoing quantization", fontsize=10)
    ax.set_xlim(-0.2, 4.4)
    ax.set_ylim(0.0, 3.0)
    ax.axis("off")


def draw_variant_knobs(lora_alpha: float = 16, ranks: tuple[int, ...] = (4, 8, 16, 32, 64, 128)) -> Figure:
    """LoRA's variants as four knobs on ``W + s · B A``: scaling, magnitude/direction, start, quantized start.

    Args:
        lora_alpha: the scaling numerator ``α`` used in panel 1.
        ranks: the ranks panel 1 plots ``α / r`` and ``α / √r`` at (positive integers).

    Returns:
        A matplotlib ``Figure`` with four axes (2 x 2).

    >>> fig = draw_variant_knobs(lora_alpha=8, ranks=(1, 4))
    >>> [line.get_label() for line in fig.axes[0].get_lines()]
    ['LoRA: α / r', 'rsLoRA: α / √r']
    """
    ranks_list = list(ranks)
    if not ranks_list or any(not isinstance(r, int) or r < 1 for r in ranks_list):
        raise ValueError(f"ranks must be positive integers, got {ranks!r}.")
    if lora_alpha <= 0:
        raise ValueError(f"lora_alpha must be positive, got {lora_alpha!r}.")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 7))
    _scaling_panel(axes[0][0], lora_alpha, ranks_list)
    _dora_panel(axes[0][1])
    _init_panel(axes[1][0])
    _loftq_panel(axes[1][1])
    fig.suptitle("LoRA's variants: knobs on the same update W + s · B A", fontsize=12)
    fig.tight_layout()
    return fig
