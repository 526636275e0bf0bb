"""Exercise checks of notebook 05 (prompt tuning): right answers pass, wrong ones fail with a helpful hint."""

import pytest

from course_utils.checks.prompt_tuning import check_prompt_tuning_params, check_use_cache


def test_prompt_tuning_params_right(tiny_model):
    hidden = tiny_model.config.hidden_size
    assert check_prompt_tuning_params(10 * hidden, 10, tiny_model).passed


def test_prompt_tuning_params_matches_peft(tiny_model):
    import copy

    from peft import PromptTuningConfig, get_peft_model

    pm = get_peft_model(copy.deepcopy(tiny_model), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=10))
    trainable = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    assert check_prompt_tuning_params(trainable, 10, tiny_model).passed


def test_prompt_tuning_params_wrong_hints(tiny_model):
    cfg = tiny_model.config
    cases = [
        (2 * cfg.num_hidden_layers * 10 * cfg.hidden_size, "prefix tuning"),
        (10 * cfg.vocab_size, "not rows over the vocabulary"),
        (10, "number of virtual tokens"),
    ]
    for answer, needle in cases:
        result = check_prompt_tuning_params(answer, 10, tiny_model)
        assert not result.passed
        assert needle in result.hints[0]
    assert "No answer yet" in check_prompt_tuning_params(None, 10, tiny_model).message


@pytest.mark.parametrize("answer,ok", [(False, True), ("false", True), (True, False), (None, False)])
def test_use_cache(answer, ok):
    assert check_use_cache(answer).passed is ok


def test_use_cache_true_explains():
    assert "repeats tokens" in check_use_cache(True).hints[0]
