"""Figures for notebook 07 (beyond one GPU): what each GPU keeps under DDP, FSDP and ZeRO-3.

>>> import matplotlib
>>> matplotlib.use("Agg")
>>> fig = draw_what_each_gpu_keeps()
>>> len(fig.axes) >= 1
True
"""

from __future__ import annotations

from typing import Any

__all__ = ["STRATEGIES", "draw_what_each_gpu_keeps"]

#: Strategy -> (what it keeps of each part of the training state, a one-line note).
#: "full": every GPU holds a whole copy; "shard": every GPU holds 1/N.
STRATEGIES: dict[str, tuple[dict[str, str], str]] = {
    "DDP": (
        {"weights": "full", "gradients": "full", "optimizer state": "full"},
        "a whole copy on every GPU; gradients are averaged (all-reduce): speed, no memory saved",
    ),
    "FSDP (FULL_SHARD)": (
        {"weights": "shard", "gradients": "shard", "optimizer state": "shard"},
        "1/N of everything; one layer's weights are gathered while it computes, then freed",
    ),
    "DeepSpeed ZeRO-3": (
        {"weights": "shard", "gradients": "shard", "optimizer state": "shard"},
        "the same split as FSDP, by DeepSpeed's engine (CUDA only)",
    ),
}

PART_COLORS = {"weights": "#4c72b0", "gradients": "#dd8452", "optimizer state": "#55a868"}


def draw_what_each_gpu_keeps(n_gpus: int = 4) -> Any:
    """One row per strategy, one column per GPU: the weights, gradients and optimizer state each GPU holds.

    A full bar is a whole copy; under FSDP and ZeRO-3 each GPU holds only its own 1/N slice (solid) of
    each bar, and the rest (outlined) lives on the other GPUs. Activations are not drawn: every
    strategy keeps those of its own micro-batch.

    Args:
        n_gpus: GPUs drawn per row (2-8 read well).

    Returns:
        The matplotlib ``Figure`` (one ``Axes``, no ticks).

    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> fig = draw_what_each_gpu_keeps(n_gpus=2)
    >>> sorted({t.get_text() for t in fig.axes[0].texts if t.get_text().startswith("GPU")})
    ['GPU 0', 'GPU 1']
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if not 1 <= n_gpus <= 16:
        raise ValueError(f"n_gpus={n_gpus}: draw between 1 and 16 GPUs (2-8 read well).")
    col_w, bar_w, bar_h, row_h = 2.4, 2.0, 0.32, 1.9
    left = 2.3
    width = left + n_gpus * col_w + 0.2
    height = len(STRATEGIES) * row_h + 1.3
    fig, ax = plt.subplots(figsize=(min(2.3 + 2.1 * n_gpus, 16), 1.35 * len(STRATEGIES) + 1.0))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")

    for g in range(n_gpus):
        ax.text(left + g * col_w + bar_w / 2, height - 0.3, f"GPU {g}", ha="center", fontsize=10, weight="bold")
    for row, (name, (keeps, note)) in enumerate(STRATEGIES.items()):
        top = height - 0.7 - row * row_h
        ax.text(0.1, top - 0.55, name, fontsize=10, weight="bold", va="center")
        ax.text(left, top - row_h + 0.28, note, fontsize=8, style="italic", va="center")
        for g in range(n_gpus):
            x0 = left + g * col_w
            ax.add_patch(
                Rectangle((x0 - 0.08, top - 1.35), bar_w + 0.16, 1.3, facecolor="none", edgecolor="#999999", lw=0.8)
            )
            for k, (part, color) in enumerate(PART_COLORS.items()):
                y = top - 0.42 - k * (bar_h + 0.08)
                if keeps[part] == "full":
                    ax.add_patch(Rectangle((x0, y), bar_w, bar_h, facecolor=color, edgecolor="#333333", lw=0.8))
                else:
                    ax.add_patch(Rectangle((x0, y), bar_w, bar_h, facecolor="none", edgecolor=color, lw=0.8, ls="--"))
                    w = bar_w / n_gpus
                    ax.add_patch(Rectangle((x0 + g * w, y), w, bar_h, facecolor=color, edgecolor="#333333", lw=0.8))
    # legend: the three parts, and what solid vs outlined means
    for k, (part, color) in enumerate(PART_COLORS.items()):
        ax.add_patch(Rectangle((left + k * 2.2, 0.12), 0.3, 0.25, facecolor=color, edgecolor="#333333", lw=0.8))
        ax.text(left + 0.4 + k * 2.2, 0.245, part, fontsize=8, va="center")
    ax.text(left + 3 * 2.2, 0.245, "solid: held by this GPU; dashed: held by the others", fontsize=8, va="center")
    ax.set_title(f"What each of {n_gpus} GPUs keeps of the training state", fontsize=11)
    fig.tight_layout()
    return fig
