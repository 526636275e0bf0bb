"""Exercise checks of notebook 04 (TRL): right answers pass, wrong ones fail with a hint that helps."""

import pytest

from course_utils.checks.trl import check_cpu_flag, check_dpo_reward, check_reference_bytes, dpo_implicit_reward


@pytest.mark.parametrize(
    "answer", [{"bf16": False}, {"use_cpu": True}, {"use_cpu": True, "bf16": False}, "bf16=False", "use_cpu=True"]
)
def test_cpu_flag_right(answer):
    assert check_cpu_flag(answer).passed


@pytest.mark.parametrize(
    "answer,needle",
    [
        ({"bf16": True}, "causes the error"),
        ({"fp16": False}, "about bf16"),
        ({"no_cuda": True}, "use_cpu"),
        ({"gradient_checkpointing": False}, "nothing to do with bf16"),
        ("tf32=False", "does not turn bf16 off"),
    ],
)
def test_cpu_flag_wrong_explains(answer, needle):
    result = check_cpu_flag(answer)
    assert not result.passed
    assert needle in result.message
    assert result.hints


def test_cpu_flag_none_and_wrong_type():
    assert "No answer yet" in check_cpu_flag(None).message
    assert "Expected a dict" in check_cpu_flag(3).message


def test_dpo_reward_value_and_sign():
    assert dpo_implicit_reward(-10.0, -12.0, 0.1) == pytest.approx(0.2)
    assert dpo_implicit_reward(-12.0, -10.0, 0.1) == pytest.approx(-0.2)
    assert check_dpo_reward(0.2, policy_logp=-10.0, ref_logp=-12.0, beta=0.1).passed


@pytest.mark.parametrize(
    "answer,needle", [(-0.2, "wrong sign"), (2.0, "forgot to multiply by beta"), (20.0, "don't divide")]
)
def test_dpo_reward_wrong_hints(answer, needle):
    result = check_dpo_reward(answer, policy_logp=-10.0, ref_logp=-12.0, beta=0.1)
    assert not result.passed
    assert needle in result.hints[0]


def test_reference_bytes(tiny_model):
    n = sum(p.numel() for p in tiny_model.parameters())
    assert check_reference_bytes(4 * n, tiny_model).passed  # fp32, no tied copies counted twice
    wrong = check_reference_bytes(n, tiny_model)
    assert not wrong.passed and "number of parameters" in wrong.hints[0]
