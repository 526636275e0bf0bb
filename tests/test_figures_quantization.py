"""The NF4 figure of notebook 06 draws what it says: blocks with an absmax each, 16 levels, double quantization."""

from __future__ import annotations

import matplotlib
import pytest

matplotlib.use("Agg")

from course_utils.figures.quantization import NF4_LEVELS, draw_nf4_blocks, nf4_bits_per_weight  # noqa: E402


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts] + [ax.get_title() for ax in fig.axes]


def test_the_figure_shows_blocks_absmax_and_double_quantization() -> None:
    fig = draw_nf4_blocks()
    texts = " | ".join(_texts(fig))
    assert "block 1: 64 weights" in texts
    assert "absmax 1" in texts
    assert "groups of 256 blocks" in texts
    assert "4.127 bits" in texts and "4.50 bits" in texts
    assert len(fig.axes[0].patches) >= 4 * 2 + 2  # four blocks, four absmax boxes, the two double-quant boxes


def test_the_levels_panel_draws_each_nf4_level_at_its_value() -> None:
    fig = draw_nf4_blocks()
    xs = sorted({line.get_xdata()[0] for line in fig.axes[1].lines if len(line.get_xdata()) == 2})
    assert xs == pytest.approx(sorted(NF4_LEVELS))


def test_nf4_levels_are_bitsandbytes_table() -> None:
    functional = pytest.importorskip("bitsandbytes.functional")
    table = functional.get_4bit_type("nf4", device="cpu").tolist()
    assert table == pytest.approx(list(NF4_LEVELS))


def test_levels_are_denser_near_zero_than_in_the_tails() -> None:
    gaps = [b - a for a, b in zip(NF4_LEVELS, NF4_LEVELS[1:])]
    assert len(NF4_LEVELS) == 16 and 0.0 in NF4_LEVELS
    assert max(gaps[6:8]) < min(gaps[0], gaps[-1]) / 2


@pytest.mark.parametrize(
    ("blocksize", "double_quant", "expected"), [(64, False, 4.5), (64, True, 4.126953125), (128, False, 4.25)]
)
def test_bits_per_weight(blocksize: int, double_quant: bool, expected: float) -> None:
    assert nf4_bits_per_weight(blocksize, double_quant) == pytest.approx(expected)


def test_bits_per_weight_matches_the_byte_count_of_the_quantization_module() -> None:
    from course_utils.quantization import nf4_weight_bytes

    n_out, n_in = 2048, 8192
    bits = 8 * nf4_weight_bytes(n_out, n_in) / (n_out * n_in)
    assert bits == pytest.approx(nf4_bits_per_weight(), abs=0.01)


def test_a_bad_blocksize_names_the_value() -> None:
    with pytest.raises(ValueError, match="blocksize=0"):
        nf4_bits_per_weight(0)
