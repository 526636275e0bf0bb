"""The idea figure of notebook 02: adapters on one frozen base, one of them switched on."""

from __future__ import annotations

import matplotlib
import pytest

matplotlib.use("Agg")

from course_utils.figures.adapters import ACTIVE_COLOR, INACTIVE_COLOR, draw_adapters  # noqa: E402


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].texts]


def _boxes(fig) -> dict[str, object]:
    return {
        p.get_gid().removeprefix("adapter-"): p
        for p in fig.axes[0].patches
        if (p.get_gid() or "").startswith("adapter-")
    }


def test_every_adapter_is_drawn_once_and_only_the_active_one_is_highlighted():
    fig = draw_adapters(["shout", "topic", "terse"], active="topic")
    boxes = _boxes(fig)
    assert sorted(boxes) == ["shout", "terse", "topic"]
    colors = {name: matplotlib.colors.to_hex(box.get_edgecolor()) for name, box in boxes.items()}
    assert colors == {"shout": INACTIVE_COLOR, "topic": ACTIVE_COLOR, "terse": INACTIVE_COLOR}
    texts = _texts(fig)
    assert "set_adapter('topic')" in texts
    assert not any("set_adapter('shout')" in t for t in texts)
    assert any("frozen base model" in t for t in texts)
    assert "W x + (α/r) B A x" in texts


@pytest.mark.parametrize("names", [["a"], ["a", "b"], ["a", "b", "c", "d"]])
def test_any_number_of_adapters_fits_in_the_axes(names):
    fig = draw_adapters(names, active=names[-1])
    ax = fig.axes[0]
    xmin, xmax = ax.get_xlim()
    ymin, ymax = ax.get_ylim()
    for box in _boxes(fig).values():
        x, y = box.get_x(), box.get_y()
        assert xmin <= x <= xmax and ymin <= y and y + box.get_height() <= ymax


def test_wrong_active_name_says_which_names_exist():
    with pytest.raises(ValueError, match=r"active='nope' is not one of the adapters \['a', 'b'\]"):
        draw_adapters(["a", "b"], active="nope")
    with pytest.raises(ValueError, match="at least one adapter"):
        draw_adapters([], active="a")
