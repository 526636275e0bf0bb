"""Notebook 09's figure of LoRA's variants: four knobs, each panel labelled, inputs checked."""

from __future__ import annotations

import math

import matplotlib
import pytest

matplotlib.use("Agg")

from course_utils.figures.variants import draw_variant_knobs  # noqa: E402


def _texts(ax) -> str:
    return "\n".join(t.get_text() for t in ax.texts) + "\n" + ax.get_title()


def test_four_panels_name_each_knob():
    import matplotlib.pyplot as plt

    fig = draw_variant_knobs()
    assert len(fig.axes) == 4
    text = "\n".join(_texts(ax) for ax in fig.axes)
    for expected in ("rsLoRA", "DoRA", "PiSSA", "OLoRA", "LoftQ", "magnitude", "Q(W)", "B = 0", "the BASE changes"):
        assert expected in text, expected
    plt.close(fig)


def test_scaling_panel_plots_alpha_over_r_and_over_sqrt_r():
    import matplotlib.pyplot as plt

    fig = draw_variant_knobs(lora_alpha=16, ranks=(4, 16, 64))
    lora, rslora = fig.axes[0].get_lines()
    assert list(lora.get_ydata()) == [4.0, 1.0, 0.25]
    assert list(rslora.get_ydata()) == pytest.approx([16 / math.sqrt(r) for r in (4, 16, 64)])
    plt.close(fig)


@pytest.mark.parametrize("bad", [{"ranks": ()}, {"ranks": (0, 4)}, {"lora_alpha": 0}])
def test_rejects_bad_inputs(bad):
    with pytest.raises(ValueError):
        draw_variant_knobs(**bad)
