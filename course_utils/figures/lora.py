"""Figures of notebook 01's ideas: LoRA's update ``W + (lora_alpha / r) B A``, drawn with its shapes.

>>> fig = draw_lora_update(d_out=192, d_in=192, r=16)
>>> len(fig.axes) >= 1
True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not when the module is
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["draw_lora_update"]

FROZEN = "#c9ced6"  # grey-blue: weights that do not train
TRAINABLE = "#f4a259"  # orange: the adapter's matrices
ZERO = "#fbe3cc"  # light orange: B at its start (all zeros)


def _matrix(ax: Axes, x: float, y_mid: float, width: float, height: float, color: str, name: str, shape: str) -> None:
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((x, y_mid - height / 2), width, height, facecolor=color, edgecolor="black", lw=1.2))
    ax.text(x + width / 2, y_mid, name, ha="center", va="center", fontsize=15, fontweight="bold")
    ax.text(x + width / 2, y_mid - height / 2 - 0.25, shape, ha="center", va="top", fontsize=9)


def draw_lora_update(d_out: int = 192, d_in: int = 192, r: int = 16, lora_alpha: float = 32) -> Figure:
    """LoRA's idea as matrices: ``W`` (d_out x d_in, frozen) + (lora_alpha / r) · ``B`` (d_out x r) · ``A`` (r x d_in).

    Box sides are drawn in proportion to the shapes (the rank side is widened so a small ``r`` stays
    visible); the captions give the shapes and parameter counts, trainable against frozen.

    Args:
        d_out: output features of the adapted layer (rows of ``W`` and ``B``).
        d_in: input features (columns of ``W`` and ``A``).
        r: the rank, the inner size of ``B A``.
        lora_alpha: the scaling numerator; the update is multiplied by ``lora_alpha / r``.

    Returns:
        A matplotlib ``Figure`` with one axes.

    >>> fig = draw_lora_update(d_out=8, d_in=4, r=2, lora_alpha=4)
    >>> any("d_out x r" in t.get_text() for t in fig.axes[0].texts)
    True
    """
    if min(d_out, d_in, r) < 1:
        raise ValueError(f"d_out, d_in and r must be positive integers, got d_out={d_out}, d_in={d_in}, r={r}.")
    import matplotlib.pyplot as plt

    side = 3.0 / max(d_out, d_in)  # drawing units per feature: the larger side of W is 3 units
    h, w = d_out * side, d_in * side
    thin = max(r * side, 0.35)  # the rank side, widened so r=1 is still a box
    fig, ax = plt.subplots(figsize=(9.5, 3.6))
    x = 0.0
    _matrix(ax, x, 0, w, h, FROZEN, "W", f"d_out x d_in\n{d_out} x {d_in} = {d_out * d_in:,}\nfrozen")
    x += w + 0.35
    ax.text(x, 0, "+", ha="center", va="center", fontsize=22)
    x += 0.35
    ax.text(x + 0.55, 0, f"(α/r)\n= {lora_alpha:g}/{r}", ha="center", va="center", fontsize=11)
    x += 1.45
    _matrix(ax, x, 0, thin, h, ZERO, "B", f"d_out x r\n{d_out} x {r}\nstarts at 0")
    x += thin + 0.3
    ax.text(x, 0, "·", ha="center", va="center", fontsize=22)
    x += 0.3
    _matrix(ax, x, 0, w, thin, TRAINABLE, "A", f"r x d_in\n{r} x {d_in}\nstarts random")
    x += w + 0.25
    ax.text(x, 0, "= ΔW: d_out x d_in,\nrank at most r", ha="left", va="center", fontsize=10)
    x += 2.3
    trainable = r * (d_in + d_out)
    ax.set_title(
        f"y = W x + (α/r) · B (A x): {trainable:,} trainable parameters (B and A) "
        f"beside {d_out * d_in:,} frozen ones ({trainable / (d_out * d_in):.1%})",
        fontsize=10,
    )
    ax.set_xlim(-0.2, x + 0.2)
    ax.set_ylim(-h / 2 - 1.4, h / 2 + 0.3)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.tight_layout()
    return fig
