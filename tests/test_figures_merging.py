"""The idea figure of notebook 03: W + ΔW rounded to the grid of each dtype."""

from __future__ import annotations

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from course_utils.figures.merging import draw_merge_rounding, grid_spacing, round_to_dtype  # noqa: E402

VALUES = [0.75 + 0.0015, 0.7519531, 1.3333, -0.2, 3.999, 0.99999, 1e-3, -123.456]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_rounding_matches_torch(dtype):
    for v in VALUES:
        expected = torch.tensor(v, dtype=torch.float64).to(getattr(torch, dtype)).double().item()
        assert round_to_dtype(v, dtype) == expected, (v, dtype)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_spacing_is_the_gap_to_the_next_number_torch_can_store(dtype):
    t = getattr(torch, dtype)
    for v in (0.75, 1.0, 3.5, -0.3):
        x = torch.tensor(v, dtype=t)
        up = torch.nextafter(x, torch.tensor(float("inf"), dtype=t))
        assert (up.double() - x.double()).item() == grid_spacing(v, dtype)


def test_unknown_dtype_and_zero_are_refused_with_the_value():
    with pytest.raises(ValueError, match="'int8' is not one of"):
        grid_spacing(1.0, "int8")
    with pytest.raises(ValueError, match="non-zero value, got 0"):
        grid_spacing(0, "float16")
    with pytest.raises(ValueError, match="non-zero delta"):
        draw_merge_rounding(delta=0)


def test_figure_has_one_row_per_dtype_and_says_what_survives():
    fig = draw_merge_rounding(w=0.75, delta=0.0015)
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert [t.split(":")[0] for t in titles] == ["bfloat16", "float16", "float32"]
    assert "vanishes" in titles[0]  # 0.0015 < half of bfloat16's 0.0039 spacing near 0.75
    assert "97.66% of ΔW" in titles[1]
    assert "100.00% of ΔW" in titles[2]
    assert fig.legends and "what the merge stores" in [t.get_text() for t in fig.legends[0].get_texts()]


def test_a_large_update_survives_even_in_bfloat16():
    fig = draw_merge_rounding(w=0.75, delta=0.05, dtypes=["bfloat16"])
    assert "vanishes" not in fig.axes[0].get_title(loc="left")
