"""Figures for notebook 05: where prompt tuning and prefix tuning put their trainable vectors.

>>> import matplotlib
>>> matplotlib.use("Agg")
>>> fig = draw_soft_prompts()
>>> len(fig.axes) >= 1
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["draw_soft_prompts"]

FROZEN = "#dce6f2"  # the model's own weights and the prompt's embeddings: never trained
TRAINED = "#f4a259"  # the virtual tokens / prefix vectors: the only trained numbers
TOKEN = "#ffffff"


def _cell(ax: Any, x: float, y: float, w: float, h: float, text: str, color: str, fontsize: float = 8) -> Any:
    from matplotlib.patches import Rectangle

    patch = Rectangle((x, y), w, h, facecolor=color, edgecolor="#333333", linewidth=1.0)
    ax.add_patch(patch)
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize)
    return patch


def _arrow(ax: Any, start: tuple[float, float], end: tuple[float, float]) -> None:
    ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "->", "color": "#333333", "lw": 1.3})


def _tokens(ax: Any, x0: float, y: float, words: Sequence[str], w: float = 0.9, h: float = 0.45) -> float:
    """Draw the prompt's words and their embedding vectors; return the x after the last one."""
    x = x0
    for word in words:
        _cell(ax, x, y, w, h, word, TOKEN)  # the text token
        _cell(ax, x, y + h + 0.35, w, h, "", FROZEN)  # its embedding (frozen)
        _arrow(ax, (x + w / 2, y + h), (x + w / 2, y + h + 0.33))
        x += w + 0.1
    return x


def _prompt_tuning_panel(ax: Any, k: int, words: Sequence[str]) -> None:
    w, h = 0.9, 0.45
    y_tok, y_emb = 0.3, 1.1
    # k virtual tokens: trainable vectors with no word behind them, in front of the embedded prompt
    for i in range(k):
        _cell(ax, 0.2 + i * (w + 0.1), y_emb, w, h, f"v{i + 1}", TRAINED)
    ax.text(0.2 + k * (w + 0.1) / 2 - 0.05, y_tok + h / 2, "no words:\ntrained vectors", ha="center", fontsize=8)
    x_end = _tokens(ax, 0.2 + k * (w + 0.1) + 0.2, y_tok, words)
    # the frozen model reads the longer sequence
    _cell(ax, 0.2, 2.2, x_end - 0.3, 1.6, "", FROZEN)
    ax.text((x_end + 0.1) / 2, 3.0, "every layer, frozen\n(attention + MLP)", ha="center", va="center", fontsize=9)
    _arrow(ax, ((x_end + 0.1) / 2, y_emb + h), ((x_end + 0.1) / 2, 2.15))
    _arrow(ax, ((x_end + 0.1) / 2, 3.85), ((x_end + 0.1) / 2, 4.3))
    ax.text((x_end + 0.1) / 2, 4.4, "answer", ha="center", va="bottom", fontsize=9)
    ax.set_xlim(0, x_end + 0.2)
    ax.set_ylim(0, 5.0)
    ax.set_title(
        f"prompt tuning: {k} trainable vectors in front of the embedded prompt\n"
        "(trained numbers: num_virtual_tokens x hidden size)",
        fontsize=10,
    )


def _prefix_tuning_panel(ax: Any, k: int, words: Sequence[str], layers: int) -> None:
    w, h = 0.9, 0.45
    y_tok = 0.3
    x0 = 0.2 + k * (w + 0.1) + 0.2
    x_end = _tokens(ax, x0, y_tok, words)
    ax.text(0.2 + k * (w + 0.1) / 2 - 0.05, y_tok + h / 2, "input: the\nprompt only", ha="center", fontsize=8)
    # in every layer, k trained key/value pairs that every prompt token can attend to
    y = 2.1
    row_h = 0.3
    for layer in range(layers):
        top = y + layer * 1.05
        for i in range(k):
            _cell(ax, 0.2 + i * (w + 0.1), top + row_h, w, row_h, "K" if i == 0 else "", TRAINED, fontsize=7)
            _cell(ax, 0.2 + i * (w + 0.1), top, w, row_h, "V" if i == 0 else "", TRAINED, fontsize=7)
        for j in range(len(words)):
            _cell(ax, x0 + j * (w + 0.1), top + row_h, w, row_h, "", FROZEN)
            _cell(ax, x0 + j * (w + 0.1), top, w, row_h, "", FROZEN)
        ax.text(
            x_end + 0.05,
            top + row_h,
            f"layer {layer + 1}" if layer < layers - 1 else "layer L",
            fontsize=8,
            va="center",
        )
    _arrow(ax, ((x0 + x_end) / 2, y_tok + 2 * h + 0.35), ((x0 + x_end) / 2, y - 0.05))
    ax.text(
        (0.2 + x_end) / 2,
        y + layers * 1.05 - 0.05,
        "keys and values of every layer: the prompt's come from frozen weights,\n"
        "the prefix's are trained (2 x layers x num_virtual_tokens x key/value size)",
        ha="center",
        va="bottom",
        fontsize=8,
    )
    ax.set_xlim(0, x_end + 1.0)
    ax.set_ylim(0, y + layers * 1.05 + 0.8)
    ax.set_title(f"prefix tuning: {k} trained key/value pairs in every layer", fontsize=10)


def draw_soft_prompts(
    num_virtual_tokens: int = 4,
    prompt: Sequence[str] = ("The", "carp", "eats", "nuts", "."),
    layers: int = 3,
) -> Any:
    """Prompt tuning next to prefix tuning: what is trained (orange) and what stays frozen (blue).

    Left, prompt tuning (``PromptTuningConfig``): ``num_virtual_tokens`` trainable vectors, with no word behind
    them, are put in front of the prompt's embeddings; every weight of the model is frozen. Right, prefix tuning
    (``PrefixTuningConfig``): the input is the prompt alone, and every layer gets ``num_virtual_tokens`` trained
    key/value pairs that the prompt's tokens attend to.

    Args:
        num_virtual_tokens: how many virtual tokens to draw (the notebook trains 20; a few keep it readable).
        prompt: the prompt's words, one box each.
        layers: how many layers to draw on the prefix-tuning side (the last is labelled ``layer L``).

    Returns:
        The matplotlib ``Figure`` with two ``Axes`` (prompt tuning, prefix tuning), no ticks.

    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> fig = draw_soft_prompts(num_virtual_tokens=3)
    >>> [t.get_text() for t in fig.axes[0].texts if t.get_text().startswith("v")]
    ['v1', 'v2', 'v3']
    """
    import matplotlib.pyplot as plt

    if num_virtual_tokens < 1 or layers < 1:
        raise ValueError(
            f"draw_soft_prompts needs at least one virtual token and one layer, got num_virtual_tokens="
            f"{num_virtual_tokens}, layers={layers}; pass positive numbers (e.g. 4 and 3)."
        )
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.6))
    _prompt_tuning_panel(left, num_virtual_tokens, prompt)
    _prefix_tuning_panel(right, num_virtual_tokens, prompt, layers)
    for ax in (left, right):
        ax.axis("off")
    fig.tight_layout()
    return fig
