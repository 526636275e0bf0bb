"""Figures for notebook 04 (TRL): DPO with a LoRA adapter, where the reference model costs nothing.

>>> import matplotlib
>>> matplotlib.use("Agg")
>>> fig = draw_dpo_with_lora()
>>> len(fig.axes) >= 1
True
"""

from __future__ import annotations

from typing import Any

__all__ = ["draw_dpo_with_lora"]

FROZEN = "#dce6f2"  # the base model's weights: loaded once, never trained
TRAINED = "#f4a259"  # the LoRA adapter: the only trained weights
CHOSEN = "#3a7d44"
REJECTED = "#b23a48"


def _box(ax: Any, x: float, y: float, w: float, h: float, text: str, color: str, **kw: Any) -> Any:
    from matplotlib.patches import FancyBboxPatch

    patch = FancyBboxPatch(
        (x, y), w, h, boxstyle="round,pad=0.02", facecolor=color, edgecolor="#333333", linewidth=1.2, **kw
    )
    ax.add_patch(patch)
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9, wrap=True)
    return patch


def _arrow(ax: Any, start: tuple[float, float], end: tuple[float, float], color: str = "#333333") -> None:
    ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "->", "color": color, "lw": 1.4})


def draw_dpo_with_lora(beta: float = 0.1) -> Any:
    """DPO with a LoRA adapter: one frozen base model serves as the policy (adapter on) and the reference (adapter off).

    Left: the prompt with its chosen and rejected answers goes through the same base weights twice, once with
    the adapter on (the policy, ``pi``) and once inside ``with model.disable_adapter():`` (the reference,
    ``pi_ref``); no second model is loaded. Right: the implicit reward of each answer,
    ``beta * log(pi / pi_ref)``, and the loss, which asks for a larger margin ``r_chosen - r_rejected``.

    Args:
        beta: the strength of the pull towards the reference, written into the formulas (``DPOConfig(beta=...)``).

    Returns:
        The matplotlib ``Figure`` (one ``Axes``, no ticks).

    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> fig = draw_dpo_with_lora(beta=0.1)
    >>> any("disable_adapter" in t.get_text() for t in fig.axes[0].texts)
    True
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.2))
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 4.2)
    ax.axis("off")

    # the data: one preference pair
    _box(ax, 0.1, 2.55, 1.9, 0.6, "prompt $x$", "#ffffff")
    _box(ax, 0.1, 1.75, 1.9, 0.6, "chosen $y^+$", "#e3f1e5")
    _box(ax, 0.1, 0.95, 1.9, 0.6, "rejected $y^-$", "#f6e0e3")

    # one base model, two passes
    _box(ax, 3.0, 0.7, 2.6, 2.7, "", FROZEN)
    ax.text(4.3, 3.2, "base model\n(frozen, loaded once)", ha="center", va="top", fontsize=9)
    _box(ax, 3.45, 1.75, 1.7, 0.55, "LoRA adapter\n(trained)", TRAINED)
    ax.text(4.3, 1.0, "the same weights\nserve both passes", ha="center", va="center", fontsize=8, style="italic")
    for y in (2.85, 2.05, 1.25):
        _arrow(ax, (2.05, y), (2.95, y))

    _box(ax, 6.4, 2.55, 1.9, 0.75, "policy $\\pi$\nadapter on", TRAINED)
    _box(ax, 6.4, 0.85, 1.9, 0.75, "reference $\\pi_{ref}$\nadapter off", FROZEN)
    _arrow(ax, (5.65, 2.6), (6.35, 2.9))
    _arrow(ax, (5.65, 1.5), (6.35, 1.2))
    ax.text(7.35, 0.5, "with model.disable_adapter():", ha="center", va="center", fontsize=8, family="monospace")
    ax.text(7.35, 3.55, "ref_model=None: no second model", ha="center", va="center", fontsize=8, family="monospace")

    # the implicit rewards and the loss
    b = f"{beta:g}"
    ax.text(8.65, 3.3, "implicit rewards", fontsize=10, weight="bold")
    ax.text(8.65, 2.7, rf"$r^+ = {b}\,\log\,\dfrac{{\pi(y^+|x)}}{{\pi_{{ref}}(y^+|x)}}$", fontsize=12, color=CHOSEN)
    ax.text(8.65, 1.95, rf"$r^- = {b}\,\log\,\dfrac{{\pi(y^-|x)}}{{\pi_{{ref}}(y^-|x)}}$", fontsize=12, color=REJECTED)
    ax.text(8.65, 1.45, r"margin $= r^+ - r^-$", fontsize=9.5)
    ax.text(8.65, 1.05, r"loss $= -\log\,\sigma(\mathrm{margin})$", fontsize=9.5)
    ax.text(
        8.65,
        0.45,
        r"step 0: the adapter is zero, $\pi = \pi_{ref}$," "\n" r"$r^+ = r^- = 0$ and the loss is $\log 2$",
        fontsize=8,
    )
    _arrow(ax, (8.35, 2.9), (8.6, 2.55))
    _arrow(ax, (8.35, 1.25), (8.6, 2.2))

    ax.set_title("DPO with LoRA: the policy and the reference are one model, with the adapter on and off", fontsize=11)
    fig.tight_layout()
    return fig
