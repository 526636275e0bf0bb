"""Notebook 02's exercise checks on two small (untrained, non-zero) adapters of the tiny model."""

from __future__ import annotations

import copy

import pytest
import torch

from course_utils.checks.adapters import check_active_adapter, check_base_outputs, check_diagonal


@pytest.fixture(scope="module")
def two_adapters(tiny_model, tiny_tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        copy.deepcopy(tiny_model), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]), adapter_name="shout"
    )
    model.add_adapter("terse", LoraConfig(r=4, target_modules=["q_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)  # as if trained: the adapters change the outputs
    model.set_adapter("terse", inference_mode=True)
    model.eval()
    inputs = tiny_tokenizer("What color is the fox?", return_tensors="pt")
    with torch.no_grad():
        reference = tiny_model(**inputs).logits
    return model, inputs, reference


def test_active_adapter(two_adapters):
    model, _, _ = two_adapters
    assert check_active_adapter("terse", model)
    wrong = check_active_adapter("shout", model)
    assert not wrong and "set_adapter" in wrong.hints[0]
    assert not check_active_adapter(None, model)


def test_base_outputs_right_answer(two_adapters):
    model, inputs, reference = two_adapters

    def with_disable(m, x):
        with m.disable_adapter():
            return m(**x).logits

    result = check_base_outputs(with_disable, model, inputs, reference)
    assert result, result.message
    assert model.active_adapter == "terse"


def test_base_outputs_wrong_answers(two_adapters):
    model, inputs, reference = two_adapters
    assert not check_base_outputs(None, model, inputs, reference)
    assert "returned None" in check_base_outputs(lambda m, x: None, model, inputs, reference).message
    still_adapted = check_base_outputs(lambda m, x: m(**x).logits, model, inputs, reference)
    assert not still_adapted and "still active" in still_adapted.message
    assert any("disable_adapter" in h for h in still_adapted.hints)


def test_base_outputs_notices_a_switched_adapter(tiny_model, two_adapters):
    model, inputs, reference = two_adapters

    def switches(m, x):
        with m.disable_adapter():
            out = m(**x).logits
        m.set_adapter("shout", inference_mode=True)
        return out

    try:
        result = check_base_outputs(switches, model, inputs, reference)
        assert not result and "active adapter changed" in result.message
    finally:
        model.set_adapter("terse", inference_mode=True)


MATRIX = {
    "base": {"shout": 0.0, "terse": 0.0},
    "shout": {"shout": 0.9375, "terse": 0.0},
    "terse": {"shout": 0.0, "terse": 1.0},
    "mix": {"shout": 0.5, "terse": 0.25},
}


@pytest.mark.parametrize("answer", [{"shout": 0.9375, "terse": 1.0}, [0.9375, 1.0], (0.9375, 1)])
def test_diagonal_right(answer):
    result = check_diagonal(answer, MATRIX)
    assert result, result.message


def test_diagonal_wrong():
    assert not check_diagonal(None, MATRIX)
    assert not check_diagonal([0.9375], MATRIX)
    assert not check_diagonal({"shout": 0.9375}, MATRIX)
    base_row = check_diagonal({"shout": 0.0, "terse": 1.0}, MATRIX)
    assert not base_row and "base model's row" in base_row.hints[0]
    swapped = check_diagonal({"shout": 0.0, "terse": 0.0}, MATRIX)
    assert not swapped and "shout" in swapped.message
