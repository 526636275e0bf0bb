"""Exercise checks of notebook 03: right answers pass, wrong ones fail with a hint that helps."""

import pytest
import torch

from course_utils.checks.merging import check_double_merge_scale, check_strict_dtype


@pytest.mark.parametrize("answer", [torch.float32, "float32", "fp32", "torch.float32"])
def test_strict_dtype_right(answer):
    assert check_strict_dtype(answer).passed


@pytest.mark.parametrize("answer,needle", [(torch.bfloat16, "8 significant bits"), ("fp16", "11 significant bits")])
def test_strict_dtype_wrong_explains_rounding(answer, needle):
    result = check_strict_dtype(answer)
    assert not result.passed
    assert needle in result.message


def test_strict_dtype_none_and_garbage():
    assert "No answer yet" in check_strict_dtype(None).message
    result = check_strict_dtype("int8")
    assert not result.passed and result.hints


def test_double_merge_scale():
    assert check_double_merge_scale(2).passed
    assert check_double_merge_scale(2.0).passed
    wrong = check_double_merge_scale(1)
    assert not wrong.passed and "too low" in wrong.message
    assert any("W + ΔW + ΔW" in h for h in wrong.hints)
