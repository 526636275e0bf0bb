"""Exercise checks for notebook 04 (TRL with PEFT: SFTTrainer and DPOTrainer).

>>> bool(check_cpu_flag({"bf16": False}))
True
>>> bool(check_dpo_reward(0.2, policy_logp=-10.0, ref_logp=-12.0, beta=0.1))
True
"""

from __future__ import annotations

from typing import Any

from course_utils.checks import CheckResult, check_close

__all__ = ["check_cpu_flag", "check_dpo_reward", "check_reference_bytes", "dpo_implicit_reward"]


def dpo_implicit_reward(policy_logp: float, ref_logp: float, beta: float) -> float:
    """DPO's implicit reward of an answer: ``beta * (log p_policy(answer) - log p_ref(answer))``.

    Positive when training made the answer more likely than the reference model finds it.

    >>> round(dpo_implicit_reward(-10.0, -12.0, beta=0.1), 6)
    0.2
    """
    return beta * (policy_logp - ref_logp)


def check_cpu_flag(answer: Any) -> CheckResult:
    """Exercise: which config setting avoids "Your setup doesn't support bf16/gpu" on a CPU?

    Accepts a dict of ``SFTConfig``/``DPOConfig`` keyword arguments (``{"bf16": False}`` or
    ``{"use_cpu": True}``) or the same as a string (``"bf16=False"``).
    """
    name = "config flag for training on a CPU"
    hints = [
        "Read the error: it names bf16 and says what to assign.",
        "TRL's configs default to bf16=True when it is not set; a CPU run wants fp32.",
    ]
    if answer is None:
        return CheckResult(name, False, "No answer yet: replace the `None` with a dict such as {'flag': value}.", hints)
    if isinstance(answer, str):
        parsed: dict[str, Any] = {}
        for part in answer.replace(" ", "").split(","):
            if "=" in part:
                key, value = part.split("=", 1)
                parsed[key] = {"true": True, "false": False}.get(value.lower(), value)
        answer = parsed or {answer.strip(): None}
    if not isinstance(answer, dict):
        return CheckResult(name, False, f"Expected a dict of config arguments, got {type(answer).__name__}.", hints)
    if answer.get("bf16") is False or answer.get("use_cpu") is True:
        chosen = ", ".join(f"{k}={v!r}" for k, v in answer.items())
        return CheckResult(
            name, True, f"Correct: {chosen}. The notebook sets both, and decides gradient_checkpointing explicitly too."
        )
    if answer.get("bf16") is True:
        return CheckResult(name, False, "bf16=True is what causes the error on a CPU.", hints)
    if "fp16" in answer:
        return CheckResult(name, False, "fp16 is already off by default; the error is about bf16.", hints)
    if "no_cuda" in answer:
        return CheckResult(name, False, "`no_cuda` was removed from TrainingArguments: its new name is use_cpu.", hints)
    if "gradient_checkpointing" in answer:
        return CheckResult(name, False, "Gradient checkpointing saves memory but has nothing to do with bf16.", hints)
    return CheckResult(name, False, f"{answer!r} does not turn bf16 off.", hints)


def check_dpo_reward(answer: float | None, policy_logp: float, ref_logp: float, beta: float) -> CheckResult:
    """Exercise: the implicit reward DPO logs (``rewards/chosen``) for one answer."""
    expected = dpo_implicit_reward(policy_logp, ref_logp, beta)
    hints = [
        "rewards/chosen = beta * (log-prob under the trained model - log-prob under the reference).",
        "The reference is the same network with the LoRA adapter disabled (ref_model=None).",
    ]
    result = check_close("DPO implicit reward", answer, expected, *hints, rel=1e-3)
    if not result and answer is not None:
        try:
            value = float(answer)
        except (TypeError, ValueError):
            return result
        if abs(value + expected) < 1e-9:
            result.hints.insert(
                0,
                "Right size, wrong sign: the policy's log-prob comes first. The answer became "
                "MORE likely than under the reference, so the reward is positive.",
            )
        elif abs(value - (policy_logp - ref_logp)) < 1e-9:
            result.hints.insert(0, "You forgot to multiply by beta.")
        elif beta and abs(value - (policy_logp - ref_logp) / beta) < 1e-9:
            result.hints.insert(0, "Multiply by beta, don't divide.")
    return result


def check_reference_bytes(answer: float | None, model: Any) -> CheckResult:
    """Exercise: how many bytes would a separate reference copy of ``model``'s weights take?"""
    from course_utils.memory import model_memory_breakdown

    expected = model_memory_breakdown(model).weights_bytes
    n = sum(p.numel() for p in model.parameters())
    hints = [
        f"The model has {n:,} parameters; count bytes per parameter from its dtype ({model.dtype}).",
        "With ref_model=None no copy is made: this is what the adapter trick saves.",
    ]
    result = check_close("bytes of a separate reference model", answer, expected, *hints, rel=0.01)
    if not result and answer is not None:
        try:
            value = float(answer)
        except (TypeError, ValueError):
            return result
        if abs(value - n) <= 0.01 * n:
            result.hints.insert(0, "That is the number of parameters; multiply by the bytes per parameter.")
    return result
