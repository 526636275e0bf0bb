"""Exercise checks of notebook 06: right answers pass, typical mistakes get the matching hint."""

import pytest

from course_utils.checks.quantization import GC_CHOICES, check_gc_tradeoff, check_nf4_bytes
from course_utils.quantization import nf4_weight_bytes

N = 2048 * 8192


@pytest.mark.parametrize("answer", [8_654_852, 8_654_848, nf4_weight_bytes(2048, 8192, include_code_tables=True)])
def test_nf4_bytes_right(answer):
    assert check_nf4_bytes(answer).passed


@pytest.mark.parametrize(
    "answer,hint",
    [
        (N // 2, "packed weights only"),
        (N // 2 + 4 * N // 64, "float32"),
        (N * 4, "bits, not bytes"),
        (N, "int8"),
    ],
)
def test_nf4_bytes_mistakes_get_specific_hint(answer, hint):
    result = check_nf4_bytes(answer)
    assert not result.passed
    assert any(hint in h for h in result.hints), result.hints


def test_nf4_bytes_other_shape_and_bad_input():
    assert check_nf4_bytes(nf4_weight_bytes(576, 1536), 576, 1536).passed
    assert not check_nf4_bytes("lots").passed
    assert "No answer yet" in check_nf4_bytes(None).message


def test_gc_tradeoff():
    assert check_gc_tradeoff("a").passed
    assert check_gc_tradeoff(" A) ").passed
    for wrong in set(GC_CHOICES) - {"a"}:
        assert not check_gc_tradeoff(wrong).passed
    assert not check_gc_tradeoff("z").passed
