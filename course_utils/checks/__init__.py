"""Exercise checks: each notebook's exercises are checked by a function in this package.

A check returns a :class:`CheckResult` that reads well in a notebook (green or red, with
feedback that says what to look at next) and can be asserted in tests (``bool(result)``).

Modules, one per notebook: ``lora`` (01), ``adapters`` (02), ``merging`` (03), ``trl`` (04),
``prompt_tuning`` (05), ``quantization`` (06).

>>> result = check_close("rank", 8, 8)
>>> bool(result), result.message
(True, 'Correct: rank = 8.')
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CheckResult", "check_close", "check_equal"]


@dataclass
class CheckResult:
    """The verdict on one exercise, with feedback for the learner."""

    name: str
    passed: bool
    message: str
    hints: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "message": self.message, "hints": list(self.hints)}

    def __repr__(self) -> str:
        mark = "PASS" if self.passed else "NOT YET"
        lines = [f"[{mark}] {self.name}: {self.message}"] + [f"  hint: {h}" for h in self.hints]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        color = "#1a7f37" if self.passed else "#b35900"
        mark = "&#10004; Correct" if self.passed else "&#10008; Not yet"
        hints = "".join(f"<li>{html.escape(h)}</li>" for h in self.hints)
        return (
            f"<div style='border-left:4px solid {color};padding:4px 8px'><b style='color:{color}'>{mark}</b> "
            f"&mdash; <b>{html.escape(self.name)}</b>: {html.escape(self.message)}"
            f"{'<ul>' + hints + '</ul>' if hints else ''}</div>"
        )


def check_equal(name: str, answer: Any, expected: Any, *hints: str) -> CheckResult:
    """Exact comparison, with the learner's value and hints in the feedback when it differs.

    >>> bool(check_equal("layers", 3, 4, "Count the decoder layers in model.config."))
    False
    """
    if answer is None:
        return CheckResult(name, False, "No answer yet: replace the `None` with your answer.", list(hints))
    if answer == expected:
        return CheckResult(name, True, f"Correct: {name} = {answer!r}.")
    return CheckResult(name, False, f"You answered {answer!r}; that is not it.", list(hints))


def check_close(name: str, answer: float | None, expected: float, *hints: str, rel: float = 0.01) -> CheckResult:
    """Numeric comparison within a relative tolerance (default 1%).

    >>> bool(check_close("ratio", 0.0102, 0.0100, rel=0.05))
    True
    """
    if answer is None:
        return CheckResult(name, False, "No answer yet: replace the `None` with your answer.", list(hints))
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return CheckResult(name, False, f"Expected a number, got {type(answer).__name__} {answer!r}.", list(hints))
    if abs(value - expected) <= rel * max(abs(expected), 1e-12):
        shown = int(value) if float(value).is_integer() else value
        return CheckResult(name, True, f"Correct: {name} = {shown}.")
    direction = "too high" if value > expected else "too low"
    return CheckResult(name, False, f"You answered {value:g}, which is {direction}.", list(hints))
