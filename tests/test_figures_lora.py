"""Notebook 01's figure of LoRA's update: it builds, names every matrix with its shape, and checks its input."""

from __future__ import annotations

import matplotlib
import pytest

matplotlib.use("Agg")

from course_utils.figures.lora import draw_lora_update  # noqa: E402


def _texts(fig) -> str:
    return "\n".join(t.get_text() for t in fig.axes[0].texts) + "\n" + fig.axes[0].get_title()


def test_draws_three_matrices_with_their_shapes():
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig = draw_lora_update(d_out=192, d_in=96, r=4, lora_alpha=8)
    boxes = [p for p in fig.axes[0].patches if isinstance(p, Rectangle)]
    assert len(boxes) == 3
    text = _texts(fig)
    for expected in ("W", "A", "B", "192 x 96", "192 x 4", "4 x 96", "frozen", "starts at 0", "8/4", "rank at most r"):
        assert expected in text, expected
    assert f"{4 * (192 + 96):,} trainable" in text
    # W is drawn in proportion: twice as tall as wide for 192 x 96
    w = max(boxes, key=lambda b: b.get_width() * b.get_height())
    assert w.get_height() == pytest.approx(2 * w.get_width())
    plt.close(fig)


@pytest.mark.parametrize("bad", [{"r": 0}, {"d_in": 0}, {"d_out": -1}])
def test_rejects_empty_shapes(bad):
    with pytest.raises(ValueError, match="positive integers"):
        draw_lora_update(**bad)
