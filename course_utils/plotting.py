"""Small plotting helpers the notebooks share: every plot titled, axes labelled with units.

All functions return the matplotlib ``Axes`` so a learner can restyle or save the figure.

>>> import matplotlib
>>> matplotlib.use("Agg")
>>> ax = plot_bars({"full FT": 100.0, "LoRA": 0.5}, title="Trainable parameters", ylabel="% of model")
>>> ax.get_title()
'Trainable parameters'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["plot_bars", "plot_heatmap", "plot_loss", "plot_xy"]


def _axes(ax: Any = None, figsize: tuple[float, float] = (6, 3.5)) -> Any:
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_loss(
    log_history: Sequence[Mapping[str, Any]],
    *,
    key: str = "loss",
    title: str = "Training loss",
    ax: Any = None,
    label: str | None = None,
) -> Any:
    """Plot ``key`` against the step from a trainer's ``state.log_history``."""
    rows = [r for r in log_history if key in r and "step" in r]
    if not rows:
        raise ValueError(f"No {key!r} entries in the log history: set logging_steps smaller than max_steps.")
    ax = _axes(ax)
    ax.plot([r["step"] for r in rows], [r[key] for r in rows], marker="o", ms=3, label=label)
    ax.set(title=title, xlabel="training step", ylabel=f"{key} (nats per token)" if key == "loss" else key)
    ax.grid(alpha=0.3)
    if label:
        ax.legend()
    return ax


def plot_bars(
    values: Mapping[str, float], *, title: str, ylabel: str, ax: Any = None, log: bool = False, fmt: str = "{:.3g}"
) -> Any:
    """A labelled bar per entry, with the value written on top."""
    ax = _axes(ax)
    names, heights = list(values), [float(v) for v in values.values()]
    bars = ax.bar(names, heights, color="#4c72b0")
    for bar, h in zip(bars, heights):
        ax.annotate(fmt.format(h), (bar.get_x() + bar.get_width() / 2, h), ha="center", va="bottom", fontsize=8)
    ax.set(title=title, ylabel=ylabel)
    if log:
        ax.set_yscale("log")
    ax.tick_params(axis="x", rotation=20)
    return ax


def plot_xy(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    ax: Any = None,
    logx: bool = False,
) -> Any:
    """One line (with markers) per named series of (x, y) points."""
    ax = _axes(ax)
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=name)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if logx:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def plot_heatmap(
    matrix: Sequence[Sequence[float]],
    rows: Sequence[str],
    cols: Sequence[str],
    *,
    title: str,
    cbar_label: str,
    ax: Any = None,
    fmt: str = "{:.0%}",
    vmin: float = 0.0,
    vmax: float = 1.0,
) -> Any:
    """A heatmap with every cell's value written in it (e.g. accuracy of adapters x tasks)."""
    import matplotlib.pyplot as plt

    ax = _axes(ax, figsize=(1.6 * len(cols) + 2, 0.6 * len(rows) + 1.5))
    im = ax.imshow(matrix, vmin=vmin, vmax=vmax, cmap="viridis")
    ax.set_xticks(range(len(cols)), labels=list(cols))
    ax.set_yticks(range(len(rows)), labels=list(rows))
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, fmt.format(v), ha="center", va="center", color="white" if v < (vmin + vmax) / 2 else "black")
    plt.colorbar(im, ax=ax, label=cbar_label)
    ax.set_title(title)
    return ax
