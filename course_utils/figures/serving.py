"""Figure for notebook 08: one served base model, many adapters, each request routed to its own.

>>> import matplotlib
>>> matplotlib.use("Agg")
>>> fig = draw_serving()
>>> len(fig.axes) >= 1
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from course_utils.figures import draw_arrow

__all__ = ["ADAPTER_COLORS", "BASE_COLOR", "draw_serving"]

BASE_COLOR = "#4c72b0"
#: One colour per adapter, in order; a request takes its adapter's colour, the base model's requests grey.
ADAPTER_COLORS = ("#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3")
BASE_REQUEST_COLOR = "#9a9a9a"


def draw_serving(
    requests: Sequence[str | None] = ("shout", "terse", None, "shout"),
    adapters: Sequence[str] = ("shout", "terse"),
    *,
    figsize: tuple[float, float] = (9.5, 4.6),
) -> Any:
    """Draw requests, each naming an adapter (or the base), batched through ONE server that holds them all.

    Left: the requests as they arrive, each with the ``model`` field of its ``/v1/completions``
    request (an adapter's name, or the base model for ``None``). Middle: the server, with one copy
    of the base weights ``W`` and the adapters' small ``B A`` beside it. The batch runs ``W x`` for
    every row at once and adds each row's own adapter: different adapters in one batch.

    Args:
        requests: each request's adapter name, or ``None`` for the base model, top to bottom.
        adapters: the adapters the server holds (``--lora-modules name=path ...``).
        figsize: size of the figure in inches.

    Returns:
        The matplotlib ``Figure`` (one axes, no ticks).

    Raises:
        ValueError: no requests, no adapters, or a request names an adapter the server does not hold.

    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> fig = draw_serving(["a", None], ["a"])
    >>> "model: a" in [t.get_text() for t in fig.axes[0].texts]
    True
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    rows, names = list(requests), list(adapters)
    if not rows:
        raise ValueError("draw_serving needs at least one request, got none: pass e.g. ['shout', None].")
    if not names:
        raise ValueError("draw_serving needs at least one adapter, got none: pass e.g. ['shout'].")
    unknown = sorted({r for r in rows if r is not None and r not in names})
    if unknown:
        raise ValueError(f"requests name {unknown}, which the server does not hold ({names}): add them to adapters.")
    color = {name: ADAPTER_COLORS[i % len(ADAPTER_COLORS)] for i, name in enumerate(names)}

    fig, ax = plt.subplots(figsize=figsize)
    ax.set(xlim=(0, 10.5), ylim=(0, 6.2), aspect="equal")
    ax.axis("off")

    def arrow(start: tuple[float, float], end: tuple[float, float], **kw: Any) -> None:
        draw_arrow(ax, start, end, **{"mutation_scale": 12, "lw": 1.4, **kw})

    # the requests, top to bottom
    step = min(1.0, 4.4 / max(len(rows), 1))
    ys = [5.2 - i * step for i in range(len(rows))]
    ax.text(1.1, 5.85, "requests", ha="center", va="bottom", fontsize=10, weight="bold")
    for i, (name, y) in enumerate(zip(rows, ys)):
        fc = BASE_REQUEST_COLOR if name is None else color[name]
        ax.add_patch(
            FancyBboxPatch((0.2, y - 0.25), 1.8, 0.5, boxstyle="round,pad=0.03", fc=fc, ec="black", gid=f"request-{i}")
        )
        ax.text(1.1, y, f"model: {name or 'base'}", ha="center", va="center", fontsize=9, color="white")
        arrow((2.05, y), (3.1, y), color=fc)

    # the server: one base, the adapters beside it
    ax.add_patch(FancyBboxPatch((3.2, 0.5), 4.4, 5.2, boxstyle="round,pad=0.05", fc="#f4f4f4", ec="black"))
    ax.text(5.4, 5.45, "one vLLM server, one batch", ha="center", va="center", fontsize=10, weight="bold")
    ax.add_patch(FancyBboxPatch((3.5, 0.8), 1.6, 4.2, boxstyle="round,pad=0.05", fc=BASE_COLOR, ec="black"))
    ax.text(4.3, 3.2, "base\nweights W\n(one copy)", ha="center", va="center", fontsize=10, color="white")
    slot_step = min(1.0, 3.8 / max(len(names), 1))
    for i, name in enumerate(names):
        y = 4.6 - i * slot_step
        ax.add_patch(
            FancyBboxPatch(
                (5.6, y - 0.3), 1.7, 0.6, boxstyle="round,pad=0.03", fc=color[name], ec="black", gid=f"adapter-{name}"
            )
        )
        ax.text(6.45, y, f"{name}: B A", ha="center", va="center", fontsize=9, color="white")
    ax.text(6.45, 0.85, "adapters (small)", ha="center", va="center", fontsize=8, style="italic")

    # the answers: each row is W x plus its own adapter's update
    ax.text(9.0, 5.85, "answers", ha="center", va="bottom", fontsize=10, weight="bold")
    for name, y in zip(rows, ys):
        fc = BASE_REQUEST_COLOR if name is None else color[name]
        arrow((7.7, y), (8.2, y), color=fc)
        label = "W x" if name is None else f"W x + {name}"
        ax.text(8.3, y, label, ha="left", va="center", fontsize=9, color=fc)
    ax.text(
        5.25,
        0.1,
        "Each request names its adapter; rows with different adapters share one pass through W.",
        ha="center",
        va="center",
        fontsize=9,
        style="italic",
    )
    fig.tight_layout()
    return fig
