"""The figure of notebook 07 draws full copies for DDP and 1/N shards for FSDP and ZeRO-3."""

from __future__ import annotations

import matplotlib
import pytest

matplotlib.use("Agg")

from matplotlib.colors import to_hex  # noqa: E402

from course_utils.figures.distributed import PART_COLORS, STRATEGIES, draw_what_each_gpu_keeps  # noqa: E402


def _solid_widths(fig) -> list[float]:
    """Widths of the filled bars (a part held by a GPU), legend swatches excluded."""
    colors = set(PART_COLORS.values())
    return [
        round(p.get_width(), 6)
        for p in fig.axes[0].patches
        if p.get_fill() and to_hex(p.get_facecolor()) in colors and p.get_height() > 0.3
    ]


@pytest.mark.parametrize("n_gpus", [2, 4])
def test_ddp_keeps_full_copies_and_sharding_keeps_one_nth(n_gpus: int) -> None:
    fig = draw_what_each_gpu_keeps(n_gpus=n_gpus)
    widths = _solid_widths(fig)
    full, shard = max(widths), max(widths) / n_gpus
    parts = len(PART_COLORS)
    assert widths.count(full) == parts * n_gpus  # DDP: every part, whole, on every GPU
    assert widths.count(round(shard, 6)) == 2 * parts * n_gpus  # FSDP and ZeRO-3: a 1/N slice of every part


def test_labels_name_every_strategy_gpu_and_part() -> None:
    fig = draw_what_each_gpu_keeps(n_gpus=3)
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert set(STRATEGIES) <= texts
    assert {"GPU 0", "GPU 1", "GPU 2"} <= texts and "GPU 3" not in texts
    assert set(PART_COLORS) <= texts


def test_too_many_gpus_is_refused_with_the_value() -> None:
    with pytest.raises(ValueError, match="n_gpus=40"):
        draw_what_each_gpu_keeps(n_gpus=40)
