"""Figures of the course's ideas, drawn with matplotlib: one module per chapter.

Each function returns a ``matplotlib.figure.Figure`` and draws an idea, not a result: LoRA's
``W + (alpha/r) B A`` with its shapes, adapters on one base, merge drift by dtype, DPO's policy
and reference, virtual tokens, NF4 blocks, what each GPU keeps. Deterministic: no data, no
randomness, so a figure is the same on every machine.
"""

from __future__ import annotations

from typing import Any


def draw_arrow(ax: Any, start: tuple[float, float], end: tuple[float, float], **style: Any) -> None:
    """Draw a black ``-|>`` arrow from ``start`` to ``end`` on ``ax``; ``style`` overrides the defaults.

    The one arrow the chapter figures share (``mutation_scale`` and ``lw`` differ per figure).

    >>> import matplotlib.pyplot as plt
    >>> fig, ax = plt.subplots()
    >>> draw_arrow(ax, (0, 0), (1, 1), lw=2)
    >>> len(ax.patches)
    1
    >>> plt.close(fig)
    """
    from matplotlib.patches import FancyArrowPatch

    kw = {"arrowstyle": "-|>", "mutation_scale": 14, "lw": 1.6, "color": "black", **style}
    ax.add_patch(FancyArrowPatch(start, end, shrinkA=0, shrinkB=0, **kw))
