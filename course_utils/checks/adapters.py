"""Exercise checks for notebook 02 (loading and switching adapters).

>>> bool(check_diagonal({"shout": 1.0}, {"shout": {"shout": 1.0, "terse": 0.0}}))
True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from course_utils.checks import CheckResult, check_equal

__all__ = ["check_active_adapter", "check_base_outputs", "check_diagonal"]


def check_active_adapter(answer: str | None, model: Any) -> CheckResult:
    """Exercise 1: the name of the adapter that is active in ``model`` right now."""
    expected = model.active_adapter
    return check_equal(
        "active adapter",
        answer,
        expected,
        "Only the LAST set_adapter(...) call counts; load_adapter(...) loads an adapter but does not activate it.",
        "Check yourself with `model.active_adapter` (and `list(model.peft_config)` for all loaded ones).",
    )


def check_base_outputs(
    fn: Callable[[Any, Mapping[str, Any]], Any] | None,
    model: Any,
    inputs: Mapping[str, Any],
    reference_logits: Any,
    atol: float = 1e-5,
) -> CheckResult:
    """Exercise 2: ``fn(model, inputs)`` must return the BASE model's logits and leave the adapters in place.

    ``reference_logits`` are the logits of a freshly loaded base model on ``inputs``.
    """
    import torch

    name = "base-model logits from a PeftModel"
    hints = [
        "peft has a context manager that switches every adapter off inside a `with` block and back on after.",
        "Look for `disable_adapter` on the PeftModel (singular; it is used as `with model.disable_adapter(): ...`).",
    ]
    if fn is None:
        return CheckResult(name, False, "No answer yet: replace the `None` with your function.", hints)
    adapters_before = list(model.peft_config)
    active_before = model.active_adapter
    with torch.no_grad():
        logits = fn(model, inputs)
    if logits is None:
        return CheckResult(
            name, False, "Your function returned None: return the logits (`model(**inputs).logits`).", hints
        )
    logits = getattr(logits, "logits", logits)
    adapters_after = list(getattr(model, "peft_config", {}))
    if adapters_after != adapters_before:
        return CheckResult(
            name,
            False,
            f"The adapters changed from {adapters_before} to {adapters_after}: "
            "get base outputs without deleting or unloading anything.",
            hints,
        )
    diff = (logits.float() - reference_logits.float()).abs().max().item()
    if diff > atol:
        return CheckResult(
            name,
            False,
            f"These logits differ from the base model's by up to {diff:.3g}: an adapter was still active.",
            hints,
        )
    if model.active_adapter != active_before:
        return CheckResult(
            name,
            False,
            f"Right logits, but the active adapter changed from {active_before!r} to "
            f"{model.active_adapter!r}: leave the model as you found it.",
            hints,
        )
    with torch.no_grad():
        adapted = model(**inputs).logits
    if (adapted.float() - reference_logits.float()).abs().max().item() <= atol:
        return CheckResult(
            name,
            False,
            "Right logits, but now the adapter no longer changes the model's outputs: "
            "switch adapters off only for the duration of the call.",
            hints,
        )
    return CheckResult(
        name,
        True,
        f"Correct: base-model logits (max |difference| {diff:.1g}) and the adapter "
        f"{active_before!r} is still active afterwards.",
    )


def check_diagonal(
    answer: Mapping[str, float] | Sequence[float] | None, matrix: Mapping[str, Mapping[str, float]]
) -> CheckResult:
    """Exercise 3: each adapter's accuracy on the task it was trained for (the diagonal).

    ``matrix[row][task]`` is an accuracy; the rows that name a task (``shout``, ``terse``) are
    the adapters trained on it. ``answer`` is a dict ``{task: accuracy}`` (or a list in the
    order of those tasks).
    """
    tasks = [row for row in matrix if row in next(iter(matrix.values()))]
    expected = {t: matrix[t][t] for t in tasks}
    name = "diagonal of the accuracy matrix"
    hints = [
        "The diagonal pairs each adapter with the task it was trained on: matrix['shout']['shout'], ...",
        "Rows are adapters (and the base model), columns are tasks.",
    ]
    if answer is None:
        return CheckResult(name, False, "No answer yet: replace the `None` with your answer.", hints)
    if not isinstance(answer, Mapping):
        values = list(answer)
        if len(values) != len(tasks):
            return CheckResult(
                name, False, f"Expected {len(tasks)} values (one per task: {tasks}), got {len(values)}.", hints
            )
        answer = dict(zip(tasks, values))
    if set(answer) != set(tasks):
        return CheckResult(name, False, f"Expected one entry per task {tasks}, got {sorted(answer)}.", hints)
    wrong = [t for t in tasks if abs(float(answer[t]) - expected[t]) > 1e-9]
    if not wrong:
        # No numbers in the verdict: accuracies after training differ between CPU families, and the
        # notebook's checked outputs must not (the learner sees them in the matrix).
        return CheckResult(name, True, f"Correct: each adapter's accuracy on its own task ({', '.join(tasks)}).")
    base_row = matrix.get("base")
    base_like = [t for t in wrong if base_row is not None and abs(float(answer[t]) - base_row[t]) < 1e-9]
    if base_like:
        hints.insert(0, f"For {base_like} you took the base model's row: take the adapter's own row.")
    return CheckResult(name, False, f"Not the diagonal for {wrong}.", hints)
