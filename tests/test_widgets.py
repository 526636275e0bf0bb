"""The adapter switcher, headless: build the widget, drive its callback, read the static table."""

from __future__ import annotations

import copy

import pytest
import torch
from prompt_learning_factory import METHODS, make_prompt_learning, raw_answers

from course_utils.widgets import BASE_LABEL, AdapterSwitcher, adapter_switcher


@pytest.fixture(scope="module")
def peft_model(tiny_model):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        copy.deepcopy(tiny_model), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]), adapter_name="loud"
    )
    model.add_adapter("noisy", LoraConfig(r=2, target_modules=["v_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name and ".noisy" in name:
                p.normal_(std=2.0)  # a strong random update: "noisy" answers differently from the base
    model.set_adapter("loud", inference_mode=True)
    for p in model.parameters():  # add_adapter left "noisy" trainable; the switcher must not change this
        p.requires_grad_(False)
    return model.eval()


def test_choices_and_static_table(peft_model, tiny_tokenizer):
    switcher = AdapterSwitcher(peft_model, tiny_tokenizer, "What color is the fox?", max_new_tokens=8)
    assert switcher.choices == ["loud", "noisy", BASE_LABEL]
    table = dict(switcher.table())
    assert set(table) == set(switcher.choices)
    # "loud" has B = 0 (untrained), so it answers exactly like the base model
    assert table["loud"] == table[BASE_LABEL]
    assert table["noisy"] != table[BASE_LABEL]
    text = repr(switcher)
    assert "What color is the fox?" in text and BASE_LABEL in text
    assert "<table>" in switcher._repr_html_()
    assert peft_model.active_adapter == "loud"  # answering restores the active adapter
    assert not any(p.requires_grad for p in peft_model.parameters())  # and never makes one trainable


def test_widget_callback_headless(peft_model, tiny_tokenizer):
    pytest.importorskip("ipywidgets")
    switcher = AdapterSwitcher(peft_model, tiny_tokenizer, max_new_tokens=8)
    widget = switcher.widget()
    assert widget is switcher.widget()  # built once
    base_answer = switcher.answer(BASE_LABEL)
    switcher._dropdown.value = BASE_LABEL  # fires the observer like a click would
    assert base_answer in switcher._output.value and BASE_LABEL in switcher._output.value
    switcher._prompt_box.value = "What does the owl eat?"
    expected = switcher.answer(BASE_LABEL, "What does the owl eat?")
    assert switcher.on_change() == expected
    assert peft_model.active_adapter == "loud"


def test_adapter_switcher_without_display(peft_model, tiny_tokenizer):
    switcher = adapter_switcher(peft_model, tiny_tokenizer, show_widget=False, max_new_tokens=4)
    assert isinstance(switcher, AdapterSwitcher)
    assert switcher._widget is None


def test_errors(peft_model, tiny_model, tiny_tokenizer):
    with pytest.raises(TypeError, match="PeftModel"):
        AdapterSwitcher(tiny_model, tiny_tokenizer)
    with pytest.raises(ValueError, match="Unknown adapter"):
        AdapterSwitcher(peft_model, tiny_tokenizer, adapters=["missing"])
    with pytest.raises(ValueError, match="Unknown choice"):
        AdapterSwitcher(peft_model, tiny_tokenizer).answer("missing")


@pytest.mark.parametrize("method", METHODS)
def test_prompt_learning_adapter_answers_without_the_kv_cache(method, tiny_model, tiny_tokenizer):
    # the cached generation of a prompt-learning model is wrong today: the switcher must show the uncached answer
    model = make_prompt_learning(tiny_model, method)
    question = "What does the carp eat?"
    reference = raw_answers(model, tiny_tokenizer, [[{"role": "user", "content": question}]], use_cache=False)
    switcher = AdapterSwitcher(model, tiny_tokenizer, question, max_new_tokens=8)
    assert switcher.answer("default") == reference[0]
