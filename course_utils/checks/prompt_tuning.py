"""Exercise checks for notebook 05 (prompt tuning and other light-weight PEFT methods).

Expected values come from the learner's model, so the exercises stay right with another model.

>>> bool(check_use_cache(False))
True
"""

from __future__ import annotations

from typing import Any

from course_utils.checks import CheckResult, check_close, check_equal
from course_utils.prompt_tuning import prompt_tuning_parameter_count

__all__ = ["check_prompt_tuning_params", "check_use_cache"]


def check_prompt_tuning_params(answer: int | None, num_virtual_tokens: int, model: Any) -> CheckResult:
    """Exercise: trainable parameters of ``PromptTuningConfig(num_virtual_tokens=N)`` on ``model``."""
    hidden = int(model.config.hidden_size)
    layers = int(getattr(model.config, "num_hidden_layers", 1))
    expected = prompt_tuning_parameter_count(num_virtual_tokens, hidden)
    hints = [
        "Each virtual token is one input embedding vector: model.config.hidden_size numbers.",
        "Nothing inside the model is trained, only the embeddings of the virtual tokens.",
    ]
    result = check_close(
        f"prompt tuning parameters with {num_virtual_tokens} virtual tokens", answer, expected, *hints, rel=0.0
    )
    if not result and answer is not None:
        try:
            value = int(answer)
        except (TypeError, ValueError):
            return result
        if value == 2 * layers * expected:
            result.hints.insert(
                0,
                "That is prefix tuning's count (a key and a value per layer). Prompt tuning "
                "only adds input embeddings.",
            )
        elif value == num_virtual_tokens * int(getattr(model.config, "vocab_size", -1)):
            result.hints.insert(0, "Virtual tokens are vectors of size hidden_size, not rows over the vocabulary.")
        elif value == num_virtual_tokens:
            result.hints.insert(0, "That is the number of virtual tokens; each has hidden_size parameters.")
    return result


def check_use_cache(answer: Any) -> CheckResult:
    """Exercise: what must ``use_cache`` be in a plain ``generate`` call for a prompt-tuned model (today)?"""
    hints = [
        "Compare the plain model.generate answers with use_cache=True and use_cache=False in section 3.",
        "The cache is only a speed-up: when it changes the answer, the cached path is the wrong one.",
        "course_utils' own generators (evaluate_task, generate_answers) pick it for you; plain generate does not.",
    ]
    if isinstance(answer, str) and answer.strip().lower() in {"true", "false"}:
        answer = answer.strip().lower() == "true"
    result = check_equal("use_cache for prompt tuning", answer, False, *hints)
    if answer is True:
        result.hints.insert(0, "With the cache on, prompt tuning repeats tokens and prefix tuning ignores its prefix.")
    return result
