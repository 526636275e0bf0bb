"""Figures for notebook 02: several LoRA adapters on one frozen base model, one of them active.

>>> import matplotlib
>>> matplotlib.use("Agg")
>>> fig = draw_adapters()
>>> len(fig.axes) >= 1
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from course_utils.figures import draw_arrow

__all__ = ["draw_adapters"]

ACTIVE_COLOR = "#dd8452"
INACTIVE_COLOR = "#9a9a9a"
BASE_COLOR = "#4c72b0"


def draw_adapters(
    adapters: Sequence[str] = ("shout", "topic", "terse"),
    active: str = "shout",
    *,
    figsize: tuple[float, float] = (9.0, 4.2),
) -> Any:
    """Draw one frozen base model with several small adapters loaded beside it, one of them switched on.

    The input ``x`` goes through the frozen base weight ``W``; the ACTIVE adapter adds its
    ``(alpha/r) B A x`` to the output; the other adapters stay loaded but unused. Switching
    (``set_adapter``) changes which ``B A`` is added: nothing is copied or read from disk.

    Args:
        adapters: names of the loaded adapters, drawn left to right.
        active: the adapter that is switched on (one of ``adapters``).
        figsize: size of the figure in inches.

    Returns:
        The matplotlib ``Figure`` (one axes, no ticks).

    Raises:
        ValueError: ``adapters`` is empty, or ``active`` is not one of them.

    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> fig = draw_adapters(["a", "b"], active="b")
    >>> "set_adapter('b')" in [t.get_text() for t in fig.axes[0].texts]
    True
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle, FancyBboxPatch

    names = list(adapters)
    if not names:
        raise ValueError("draw_adapters needs at least one adapter name, got an empty list: pass e.g. ['shout'].")
    if active not in names:
        raise ValueError(f"active={active!r} is not one of the adapters {names}: pass one of them as active=.")

    fig, ax = plt.subplots(figsize=figsize)
    ax.set(xlim=(0, 10), ylim=(0, 6.2), aspect="equal")
    ax.axis("off")

    def arrow(start: tuple[float, float], end: tuple[float, float], **kw: Any) -> None:
        draw_arrow(ax, start, end, **{"mutation_scale": 14, "lw": 1.6, **kw})

    def line(xs: Sequence[float], ys: Sequence[float], **kw: Any) -> None:
        ax.plot(xs, ys, **{"color": "black", "lw": 1.6, **kw})

    # the frozen base model: the one big box on the main path x -> W -> +
    y0 = 1.5
    ax.add_patch(FancyBboxPatch((2.2, 0.8), 3.4, 1.4, boxstyle="round,pad=0.05", fc=BASE_COLOR, ec="black"))
    ax.text(3.9, 1.7, "frozen base model  W", ha="center", va="center", color="white", fontsize=12, weight="bold")
    ax.text(3.9, 1.2, "one copy in memory", ha="center", va="center", color="white", fontsize=9)
    ax.text(0.3, y0, "x", ha="center", va="center", fontsize=14)
    arrow((0.5, y0), (2.12, y0))
    plus = (7.2, y0)
    ax.add_patch(Circle(plus, 0.28, fc="white", ec="black", lw=1.6))
    ax.text(*plus, "+", ha="center", va="center", fontsize=15)
    arrow((5.68, y0), (plus[0] - 0.28, y0))
    arrow((plus[0] + 0.28, y0), (8.1, y0))
    ax.text(8.15, y0, "W x + (α/r) B A x", ha="left", va="center", fontsize=10)

    # the adapters, stacked; a switch picks which one x also goes through
    step = min(0.8, 2.6 / max(len(names) - 1, 1))
    ys = [5.4 - i * step for i in range(len(names))]
    pivot = (2.3, sum(ys) / len(ys))
    line([1.2, 1.2, pivot[0]], [y0, pivot[1], pivot[1]])
    ax.add_patch(Circle((1.2, y0), 0.06, fc="black"))
    ax.add_patch(Circle(pivot, 0.07, fc="black"))
    contact_x, box_x, width, height = 3.0, 3.25, 1.7, 0.58
    for name, y in zip(names, ys):
        on = name == active
        ax.add_patch(Circle((contact_x, y), 0.07, fc="white", ec="black", lw=1.2))
        line([contact_x + 0.07, box_x], [y, y], color="black" if on else INACTIVE_COLOR, lw=1.2)
        ax.add_patch(
            FancyBboxPatch(
                (box_x, y - height / 2),
                width,
                height,
                boxstyle="round,pad=0.04",
                fc=ACTIVE_COLOR if on else "white",
                ec=ACTIVE_COLOR if on else INACTIVE_COLOR,
                lw=2.0 if on else 1.2,
                ls="-" if on else "--",
                gid=f"adapter-{name}",
            )
        )
        ax.text(box_x + 0.1, y, name, ha="left", va="center", fontsize=10, weight="bold" if on else "normal")
        ax.text(
            box_x + width - 0.1,
            y,
            "B A",
            ha="right",
            va="center",
            fontsize=9,
            color="black" if on else INACTIVE_COLOR,
        )
        if on:  # the switch's lever, and the active adapter's output down to the sum
            line([pivot[0], contact_x - 0.07], [pivot[1], y], color=ACTIVE_COLOR, lw=2.4)
            line([box_x + width + 0.05, plus[0]], [y, y], color=ACTIVE_COLOR, lw=2.2)
            arrow((plus[0], y), (plus[0], plus[1] + 0.28), color=ACTIVE_COLOR, lw=2.2)
            ax.text(5.3, y + 0.2, f"set_adapter({name!r})", ha="left", va="bottom", fontsize=9)
    ax.text(box_x + width / 2, 5.4 + 0.55, "loaded adapters (small)", ha="center", va="bottom", fontsize=9)
    ax.text(
        5.0,
        0.25,
        "Switching moves the lever: no weights are copied or read from disk.",
        ha="center",
        va="center",
        fontsize=9,
        style="italic",
    )
    fig.tight_layout()
    return fig
