"""course_utils.hyperparameters: values that follow the model's size, each with a source."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from course_utils.hyperparameters import (
    METHODS,
    Hyperparameters,
    format_table,
    parameter_count,
    resolve,
    size_class,
    suggest,
    table,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "model, method, lr, steps, batch",
    [
        ("course-tiny", "lora", 3e-3, 45, 16),
        ("course-tiny", "qlora", 3e-3, 45, 16),
        ("course-tiny", "dpo", 1e-3, 30, 8),
        ("course-tiny", "prompt_tuning", 3e-1, 200, 16),
        ("smollm2-135m", "lora", 2e-4, 200, 16),
        ("HuggingFaceTB/SmolLM2-360M-Instruct", "qlora", 2e-4, 200, 16),
        ("smollm2-360m", "dpo", 5e-6, 100, 8),
        ("smollm2-135m", "prompt_tuning", 3e-2, 300, 16),
        ("smollm2-1.7b", "lora", 2e-4, 200, 8),
        ("HuggingFaceTB/SmolLM2-1.7B-Instruct", "dpo", 5e-6, 100, 4),
        (70_000_000_000, "lora", 1e-4, 200, 4),
        ("Qwen/Qwen2.5-32B-Instruct", "dpo", 1e-6, 100, 2),
    ],
)
def test_suggestions_follow_the_size(model, method, lr, steps, batch):
    hp = suggest(model, method)
    assert (hp.learning_rate, hp.max_steps, hp.batch_size) == (lr, steps, batch)
    assert set(hp.source) == {"learning_rate", "max_steps", "batch_size"} and all(hp.source.values())


@pytest.mark.parametrize(
    "name", ["01_lora_training", "02_adapters", "03_merging", "04_trl", "05_prompt_tuning", "06_qlora"]
)
def test_training_notebooks_take_their_learning_rate_from_the_suggestion(name):
    """Every notebook that trains says ``LEARNING_RATE = "auto"`` in its parameters cell and resolves it here."""
    source = (ROOT / "notebooks" / f"{name}.py").read_text()
    assert 'LEARNING_RATE = "auto"' in source
    assert "suggest(" in source and "resolve(" in source


def test_the_toy_learning_rate_is_train_adapters_default():
    from course_utils.training import train_adapter

    params = inspect.signature(train_adapter).parameters
    assert params["learning_rate"].default == suggest(1_800_000).learning_rate


def test_cited_trl_defaults_match_the_installed_library():
    from trl import DPOConfig, SFTConfig

    assert DPOConfig.__dataclass_fields__["learning_rate"].default == 1e-6
    assert "1e-6" in suggest(20e9, "dpo").source["learning_rate"]
    assert SFTConfig.__dataclass_fields__["learning_rate"].default * 10 == pytest.approx(suggest(135e6).learning_rate)


def test_parameter_counts(tiny_model):
    assert parameter_count(tiny_model) == sum(p.numel() for p in tiny_model.parameters())
    assert 1_000_000 < parameter_count("course-tiny") < 10_000_000
    assert parameter_count("smollm2-135m") == 134_515_008  # built from the shipped config
    assert parameter_count("Qwen/Qwen2.5-0.5B-Instruct") == 500_000_000
    assert parameter_count("meta-llama/Llama-3.2-1B") == 1_000_000_000
    assert suggest(tiny_model, "lora").size_class == "toy (< 10M)"


@pytest.mark.parametrize(
    "bad, error, match",
    [
        ("gpt2", ValueError, "Cannot tell the size of 'gpt2'"),
        (True, TypeError, "bool"),
        (-5, ValueError, "positive"),
        ([1], TypeError, "list"),
    ],
)
def test_unknown_sizes_say_what_to_pass(bad, error, match):
    with pytest.raises(error, match=match):
        parameter_count(bad)


def test_unknown_method_lists_the_choices():
    with pytest.raises(ValueError, match="lora, qlora, dpo, prompt_tuning"):
        suggest("course-tiny", "ia3")
    assert suggest("course-tiny", "Prompt-Tuning").method == "prompt_tuning"


def test_size_class_boundaries():
    assert size_class(9_999_999) == "toy (< 10M)" and size_class(10_000_000) == "small (10M-1B)"
    assert size_class(999_999_999) == "small (10M-1B)" and size_class(1_000_000_000) == "medium (1B-15B)"
    assert size_class(15_000_000_000) == "large (>= 15B)"


@pytest.mark.parametrize(
    "value, suggested, expected",
    [
        ("auto", 2e-4, 2e-4),
        ("AUTO ", 200, 200),
        (1e-5, 2e-4, 1e-5),
        ("3e-4", 2e-4, 3e-4),
        (50.0, 200, 50),
        (7, 1e-3, 7.0),
    ],
)
def test_resolve(value, suggested, expected):
    out = resolve(value, suggested)
    assert out == expected and type(out) is type(suggested)


@pytest.mark.parametrize(
    "value, suggested, error",
    [
        ("fast", 2e-4, ValueError),
        (0, 2e-4, ValueError),
        (-1e-4, 2e-4, ValueError),
        (2.5, 100, ValueError),
        (None, 1, TypeError),
    ],
)
def test_resolve_refuses_what_is_not_auto_or_a_positive_number(value, suggested, error):
    with pytest.raises(error):
        resolve(value, suggested)


def test_hyperparameters_validate_and_display():
    with pytest.raises(ValueError, match="positive"):
        Hyperparameters(learning_rate=0.0, max_steps=1, batch_size=1, method="lora", size_class="toy", parameters=1)
    hp = suggest("smollm2-135m", "lora")
    assert "learning_rate 0.0002" in repr(hp) and "TRL" in repr(hp)
    assert "<table>" in hp._repr_html_() and hp.to_dict()["learning_rate"] == 2e-4


def test_table_covers_every_size_and_method_and_prints():
    rows = table()
    assert len(rows) == 4 * len(METHODS)
    assert {(r["size"], r["method"]) for r in rows} == {
        (size_class(n), m) for n in (1, 1e8, 1e10, 1e11) for m in METHODS
    }
    lrs = {(r["size"], r["method"]): r["learning_rate"] for r in rows}
    for method in METHODS:  # a real model always trains slower than the toy
        assert lrs[("small (10M-1B)", method)] < lrs[("toy (< 10M)", method)]
    out = subprocess.run(
        [sys.executable, "-m", "course_utils.hyperparameters"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert out.strip() == format_table()
    assert len(re.findall(r"^\| ", out, flags=re.M)) == 1 + len(rows)
