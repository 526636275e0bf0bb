"""The GPU table: data-sheet numbers, dense (not sparsity) peaks, names resolved as learners type them."""

from __future__ import annotations

import pytest

from course_utils.gpus import GPUS, get_gpu

# (memory GiB, dense 16-bit TFLOP/s, bandwidth GB/s) as the vendors' data sheets print them (sparsity halved)
DATA_SHEET = {
    "H200": (141, 989, 4800),
    "H100": (80, 989, 3350),
    "A100-80GB": (80, 312, 2039),
    "A100-40GB": (40, 312, 1555),
    "L4": (24, 121, 300),
    "T4": (16, 65, 320),
    "A10G": (24, 70, 600),
    "RTX 4090": (24, 165.2, 1008),
}


@pytest.mark.parametrize("name", sorted(DATA_SHEET))
def test_numbers_match_the_data_sheets(name: str) -> None:
    gpu = GPUS[name]
    memory, tflops, gbps = DATA_SHEET[name]
    assert (gpu.memory_gib, gpu.peak_flops / 1e12, gpu.bandwidth / 1e9) == pytest.approx((memory, tflops, gbps))
    assert gpu.source and gpu.interconnect_GBps > 0


def test_every_listed_gpu_is_checked_and_only_the_t4_lacks_bf16() -> None:
    assert set(GPUS) == set(DATA_SHEET)
    assert {n for n, g in GPUS.items() if g.dtype16 != "bfloat16"} == {"T4"}
    assert "no bf16" in GPUS["T4"].source


@pytest.mark.parametrize(
    ("typed", "name"),
    [
        ("h100", "H100"),
        ("NVIDIA H200", "H200"),
        ("a100-40gb", "A100-40GB"),
        ("a100", "A100-80GB"),
        ("rtx4090", "RTX 4090"),
        ("Tesla T4", "T4"),
    ],
)
def test_get_gpu_names(typed: str, name: str) -> None:
    assert get_gpu(typed).name == name


def test_unknown_gpu_says_which_exist() -> None:
    with pytest.raises(ValueError, match="Unknown GPU 'V100'.*H200, H100"):
        get_gpu("V100")
