"""Exercise checks for notebook 01 (LoRA training).

Every expected value is computed from the model the learner is using, so the exercises stay
right when the notebook runs with another model (SmolLM2, Llama, ...).

>>> import torch
>>> bool(check_scaling(2.0, r=16, lora_alpha=32))
True
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

from course_utils.architectures import (
    decoder_linear_layers,
    fused_projections,
    linear_layer_names,
    lora_parameter_count,
    matches_target,
    mlp_projection_names,
)
from course_utils.checks import CheckResult, check_close, check_equal

__all__ = ["check_lora_parameter_count", "check_mlp_targets", "check_scaling", "count_trainable_with_peft"]


def count_trainable_with_peft(model: Any, r: int, target_modules: Iterable[str]) -> int:
    """The real count: peft wraps an empty (meta-device) model of ``model``'s architecture.

    No weights are copied, so this is instant even for a 1.7B model; ``model`` is untouched.
    Falls back to the formula on the real layer shapes if the architecture cannot be rebuilt
    from its config.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    targets = list(target_modules)
    try:
        with torch.device("meta"):
            empty = AutoModelForCausalLM.from_config(model.config)
        with warnings.catch_warnings():  # GPT-2's Conv1D: peft sets fan_in_fan_out itself and says so
            warnings.filterwarnings("ignore", message="fan_in_fan_out")
            peft_model = get_peft_model(empty, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets))
    except Exception:  # noqa: BLE001 - any architecture peft or from_config cannot rebuild
        return lora_parameter_count(model, r, targets)
    return sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def check_lora_parameter_count(
    answer: int | None, model: Any, r: int = 8, target_modules: Iterable[str] = ("q_proj", "v_proj")
) -> CheckResult:
    """Exercise 1: how many trainable parameters does LoRA(r, target_modules) add to ``model``?

    The expected value is peft's own count (a deep copy of the model wrapped with
    ``get_peft_model``), so it is right for any architecture.
    """
    targets = list(target_modules)
    expected = count_trainable_with_peft(model, r, targets)
    shapes = linear_layer_names(model)
    fused = {t: p for t, p in fused_projections(model).items() if t in targets}
    name = f"trainable parameters of LoRA r={r} on {'+'.join(targets)}"
    hints = [
        "Each adapted layer adds A (r x in_features) and B (out_features x r): r * (in + out) parameters.",
        "Count every decoder layer: model.config.num_hidden_layers layers carry each target.",
    ]
    if any(t in shapes for t in targets):
        dims = ", ".join(f"{t}: in {shapes[t][0]}, out {shapes[t][1]}" for t in targets if t in shapes)
        outs = {shapes[t][1] for t in targets if t in shapes}
        gqa = (
            (
                " They differ: with grouped-query attention k_proj/v_proj have fewer outputs than q_proj "
                "(num_key_value_heads * head_dim)."
            )
            if len(outs) > 1 and not fused
            else ""
        )
        hints.append(f"Layer shapes: {dims}.{gqa}")
    if fused:
        parts = "; ".join(f"{t} computes {'+'.join(p)} at once" for t, p in fused.items())
        hints.append(
            f"A fused projection is one layer: LoRA adds ONE A/B pair with out = the sum of its parts ({parts})."
        )
    if any(layer.conv1d for layer in decoder_linear_layers(model)):
        hints.append(
            "GPT-2's Conv1D stores its weight as (in, out), transposed from nn.Linear: read in/out from "
            "weight.shape[0] / weight.shape[1] (peft's fan_in_fan_out)."
        )
    result = check_close(name, answer, expected, *hints, rel=0.0)
    if not result and answer is not None:
        try:
            value = int(answer)
        except (TypeError, ValueError):
            return result
        n_layers = max(
            1,
            sum(1 for layer in decoder_linear_layers(model) if any(matches_target(layer.name, t) for t in targets))
            // max(1, len(targets)),
        )
        if value * n_layers == expected:
            result.hints.insert(0, "That is one decoder layer's worth: multiply by the number of layers.")
        elif value == 2 * expected:
            result.hints.insert(0, "Twice the answer: A and B share the rank, r * (in + out) in all, not 2 * r * ...")
    return result


def check_scaling(answer: float | None, r: int, lora_alpha: float) -> CheckResult:
    """Exercise 2: the factor LoRA multiplies ``B @ A x`` by (``lora_alpha / r``)."""
    expected = lora_alpha / r
    result = check_close(
        f"scaling for r={r}, lora_alpha={lora_alpha}",
        answer,
        expected,
        "peft multiplies the update by lora_alpha / r (see `layer.scaling`).",
        "Doubling r at a fixed lora_alpha halves the scaling.",
        rel=1e-6,
    )
    if not result and answer is not None:
        try:
            value = float(answer)
        except (TypeError, ValueError):
            return result
        if abs(value - r / lora_alpha) < 1e-9:
            result.hints.insert(0, "You computed r / lora_alpha: it is the other way round.")
        elif abs(value - lora_alpha / r**0.5) < 1e-9:
            result.hints.insert(
                0, "That is rsLoRA's scaling (use_rslora=True: lora_alpha / sqrt(r)); the default is lora_alpha / r."
            )
    return result


def _selected(model: Any, targets: Iterable[str]) -> set[str]:
    """Full names of the linear layers peft would adapt with ``target_modules=targets``."""
    targets = list(targets)
    return {layer.name for layer in decoder_linear_layers(model) if any(matches_target(layer.name, t) for t in targets)}


def check_mlp_targets(answer: Iterable[str] | str | None, model: Any) -> CheckResult:
    """Exercise 3: the ``target_modules`` that put LoRA on every MLP projection of ``model``.

    An answer is right when peft would adapt exactly the MLP layers with it, whatever names it
    uses (``fc1`` or ``layers.0.fc1``...; GPT-2 needs ``mlp.c_proj``, because ``c_proj`` alone also
    selects attention's output projection).
    """
    expected = mlp_projection_names(model)
    hints = [
        "Print the model (or `[n for n, _ in model.named_modules()]`) and look inside one layer's MLP "
        "(`mlp`, or the feed-forward layers next to the attention block, like OPT's fc1/fc2).",
        "target_modules takes the short names (the last part of the module name), e.g. 'q_proj'; "
        "peft matches them against the END of each module name, so 'mlp.c_proj' selects only the MLP's c_proj.",
    ]
    if fused_projections(model):
        hints.append(f"Fused projections count as one layer each: {sorted(fused_projections(model))}.")
    if answer is None:
        return check_equal("MLP target modules", None, sorted(expected), *hints)
    if isinstance(answer, str):
        if answer == "all-linear":
            return CheckResult(
                "MLP target modules",
                False,
                "'all-linear' adapts the attention projections too, not only the MLP.",
                hints,
            )
        answer = [answer]
    given = sorted(set(answer))
    want, got = _selected(model, expected), _selected(model, given)
    if got == want:
        return CheckResult("MLP target modules", True, f"Correct: {given}.")
    kinds = {layer.name: layer for layer in decoder_linear_layers(model)}
    missing = sorted({kinds[n].target for n in want - got})
    extra = sorted({kinds[n].target for n in got - want})
    unmatched = [t for t in given if not _selected(model, [t])]
    parts = []
    if missing:
        parts.append(f"missing {missing}")
    if extra:
        parts.append(f"not MLP layers of this model: {extra}")
    if unmatched:
        parts.append(f"no layer of this model is named {unmatched}")
    return CheckResult("MLP target modules", False, f"You answered {given}: " + "; ".join(parts) + ".", hints)
