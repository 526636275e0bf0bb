"""The idea figure of notebook 08: requests routed to their adapters through one served base."""

from __future__ import annotations

import matplotlib
import pytest

matplotlib.use("Agg")

from course_utils.figures.serving import ADAPTER_COLORS, BASE_REQUEST_COLOR, draw_serving  # noqa: E402


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].texts]


def _patches(fig, prefix: str) -> dict[str, object]:
    return {p.get_gid().removeprefix(prefix): p for p in fig.axes[0].patches if (p.get_gid() or "").startswith(prefix)}


def test_each_request_takes_its_adapters_colour_and_the_base_is_grey():
    fig = draw_serving(["terse", None, "shout"], ["shout", "terse"])
    requests = _patches(fig, "request-")
    adapters = _patches(fig, "adapter-")
    assert sorted(adapters) == ["shout", "terse"]
    hexes = {k: matplotlib.colors.to_hex(p.get_facecolor()) for k, p in requests.items()}
    assert hexes == {"0": ADAPTER_COLORS[1], "1": BASE_REQUEST_COLOR, "2": ADAPTER_COLORS[0]}
    texts = _texts(fig)
    assert [t for t in texts if t.startswith("model: ")] == ["model: terse", "model: base", "model: shout"]
    assert "W x + terse" in texts and "W x" in texts
    assert any("one copy" in t for t in texts)


@pytest.mark.parametrize("n", [1, 4, 8])
def test_any_number_of_requests_fits_in_the_axes(n):
    fig = draw_serving(["a"] * n, ["a", "b", "c", "d"])
    ax = fig.axes[0]
    ymin, ymax = ax.get_ylim()
    for box in [*_patches(fig, "request-").values(), *_patches(fig, "adapter-").values()]:
        assert ymin <= box.get_y() and box.get_y() + box.get_height() <= ymax
    assert len(_patches(fig, "request-")) == n


def test_bad_inputs_say_what_to_pass():
    with pytest.raises(ValueError, match=r"requests name \['nope'\], which the server does not hold"):
        draw_serving(["nope"], ["a"])
    with pytest.raises(ValueError, match="at least one request"):
        draw_serving([], ["a"])
    with pytest.raises(ValueError, match="at least one adapter"):
        draw_serving(["a"], [])
