"""The soft-prompt figure of notebook 05: prompt tuning's virtual tokens and prefix tuning's per-layer keys/values."""

from __future__ import annotations

import matplotlib
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from course_utils.figures.prompt_tuning import TRAINED, draw_soft_prompts  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _trained_cells(ax) -> int:
    return sum(matplotlib.colors.to_hex(p.get_facecolor()) == TRAINED for p in ax.patches)


@pytest.mark.parametrize(("k", "layers"), [(4, 3), (2, 5)])
def test_trained_vectors_are_where_each_method_puts_them(k: int, layers: int):
    fig = draw_soft_prompts(num_virtual_tokens=k, layers=layers)
    prompt_ax, prefix_ax = fig.axes
    assert _trained_cells(prompt_ax) == k  # one vector per virtual token, at the input only
    assert _trained_cells(prefix_ax) == 2 * k * layers  # a key and a value per virtual token, in every layer
    assert [t.get_text() for t in prompt_ax.texts if t.get_text().startswith("v")] == [f"v{i + 1}" for i in range(k)]


def test_the_prompt_words_are_drawn_on_both_sides():
    fig = draw_soft_prompts(prompt=("Where", "is", "it", "?"))
    for ax in fig.axes:
        texts = [t.get_text() for t in ax.texts]
        assert all(w in texts for w in ("Where", "is", "it", "?")), texts
    assert "frozen" in " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "layer L" in [t.get_text() for t in fig.axes[1].texts]


@pytest.mark.parametrize("kwargs", [{"num_virtual_tokens": 0}, {"layers": 0}])
def test_empty_figures_are_refused(kwargs):
    with pytest.raises(ValueError, match="positive numbers"):
        draw_soft_prompts(**kwargs)
