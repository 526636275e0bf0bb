"""What a merge keeps: how much of a LoRA adapter's delta arrives in the stored weights and in the logits.

- :func:`merge_with_retention` merges layer by layer and measures how much of each layer's delta
  ``B @ A * scaling`` really arrived in the stored weights (all of it in float32; a fraction in a
  4-bit base, which re-quantizes the sum): a :class:`MergeRetention`.
- :func:`effect_retained` asks the same of the logits.
- :func:`dequantized_weight` is the float weight a (quantized or plain) linear layer computes with.

>>> round(effect_retained(torch.zeros(2), torch.ones(2), torch.ones(2)), 3)
1.0
"""

from __future__ import annotations

import html
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from course_utils.quantization import prevent_cpu_repack, quiet_bitsandbytes

__all__ = ["MergeRetention", "dequantized_weight", "effect_retained", "merge_with_retention"]


def dequantized_weight(layer: torch.nn.Module) -> torch.Tensor:
    """The float32 CPU copy of the weight a linear layer computes with (4-bit/8-bit dequantized).

    A 4-bit layer that bitsandbytes repacked for the CPU is converted back first
    (:func:`course_utils.quantization.prevent_cpu_repack`); dequantizing the repacked layout
    would return garbage.

    >>> dequantized_weight(torch.nn.Linear(3, 2)).shape
    torch.Size([2, 3])
    """
    w = layer.weight
    cls = type(w).__name__
    if cls in ("Params4bit", "Int8Params") and (w.dtype in (torch.uint8, torch.int8)):
        quiet_bitsandbytes()
        from peft.utils.integrations import dequantize_bnb_weight

        prevent_cpu_repack(layer)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = dequantize_bnb_weight(w, state=getattr(layer, "state", None))
        return out.detach().to("cpu", torch.float32)
    return w.detach().to("cpu", torch.float32).clone()


@dataclass
class MergeRetention:
    """How much of a LoRA adapter's weight delta survived a merge (see :func:`merge_with_retention`).

    ``retained`` is ``sum <ΔW_stored, ΔW_lora> / sum ||ΔW_lora||²`` over all merged layers: 1.0
    when the stored weights moved exactly by the adapter's delta, 0.0 when they did not move in
    its direction at all. ``rel_error`` is ``||ΔW_stored - ΔW_lora|| / ||ΔW_lora||``;
    ``changed_fraction`` the share of stored weights whose value changed at all.

    >>> MergeRetention(rows=[], retained=1.0, rel_error=0.0, changed_fraction=1.0, storage="float32").passed
    True
    """

    rows: list[dict[str, Any]]
    retained: float
    rel_error: float
    changed_fraction: float
    storage: str
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when the delta arrived within 1% (what a float32/float16 merge achieves)."""
        return self.rel_error <= 0.01

    def to_dict(self) -> dict[str, Any]:
        return {
            "storage": self.storage,
            "retained": self.retained,
            "rel_error": self.rel_error,
            "changed_fraction": self.changed_fraction,
            "passed": self.passed,
            "rows": list(self.rows),
            "notes": list(self.notes),
        }

    def __repr__(self) -> str:
        lines = [
            (
                f"MergeRetention (weights stored as {self.storage}, {len(self.rows)} layers): "
                f"relative error of the stored delta {100 * self.rel_error:.1f}%, projection onto the LoRA delta "
                f"{100 * self.retained:.1f}%, {100 * self.changed_fraction:.1f}% of stored weights changed"
            )
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        color = "#1a7f37" if self.passed else "#cf222e"
        return (
            f"<div><b style='color:{color}'>{100 * self.retained:.1f}% of the LoRA delta retained</b> "
            f"(weights stored as {html.escape(self.storage)}, {len(self.rows)} layers); relative error "
            f"{100 * self.rel_error:.1f}%, {100 * self.changed_fraction:.1f}% of stored weights changed"
            + "".join(f"<br>note: {html.escape(n)}" for n in self.notes)
            + "</div>"
        )


def _storage_name(layer: torch.nn.Module) -> str:
    cls = type(layer).__name__
    if cls == "Linear4bit":
        return f"4-bit {getattr(layer.weight, 'quant_type', '')}".strip()
    if cls == "Linear8bitLt":
        return "int8"
    return str(layer.weight.dtype).replace("torch.", "")


def merge_with_retention(
    peft_model: torch.nn.Module, adapter_name: str | None = None
) -> tuple[torch.nn.Module, MergeRetention]:
    """Merge the active LoRA adapter layer by layer, measuring what each layer's stored weight gained.

    Works on any base, quantized ones included (it does what ``merge_and_unload()`` does there,
    without peft's per-layer "may get different generations" warning: the result says it once,
    in numbers). Use it to SEE what a merge into a 4-bit base loses; to deploy a QLoRA adapter,
    use :func:`dequantize_for_merge`.

    Returns:
        ``(merged_model, MergeRetention)``; the PeftModel is consumed (like ``merge_and_unload``).

    >>> merged, kept = merge_with_retention(peft_model)   # doctest: +SKIP
    >>> round(kept.retained, 3)                           # doctest: +SKIP
    1.0
    """
    quiet_bitsandbytes()
    from peft.tuners.tuners_utils import BaseTunerLayer

    if not hasattr(peft_model, "unload"):
        raise TypeError(f"merge_with_retention needs a PeftModel, got {type(peft_model).__name__}.")
    prevent_cpu_repack(peft_model)
    rows: list[dict[str, Any]] = []
    dot = delta_sq = err_sq = 0.0
    changed = total = 0
    storages: set[str] = set()
    for name, module in peft_model.named_modules():
        if not isinstance(module, BaseTunerLayer) or not hasattr(module, "get_delta_weight"):
            continue
        names = [adapter_name] if adapter_name else list(module.active_adapters)
        for an in names:
            if an not in getattr(module, "lora_A", {}) or an in module.merged_adapters:
                continue
            base = module.get_base_layer()
            storages.add(_storage_name(base))
            delta = module.get_delta_weight(an).detach().to("cpu", torch.float32)
            before = dequantized_weight(base)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module.merge(adapter_names=[an])
            after = dequantized_weight(base)
            stored = after - before
            d_sq = float((delta.double() ** 2).sum())
            layer_dot = float((stored.double() * delta.double()).sum())
            layer_err = float(((stored - delta).double() ** 2).sum())
            n_changed = int((after != before).sum())
            dot += layer_dot
            delta_sq += d_sq
            err_sq += layer_err
            changed += n_changed
            total += before.numel()
            rows.append(
                {
                    "layer": name,
                    "adapter": an,
                    "delta_norm": math.sqrt(d_sq),
                    "retained": layer_dot / d_sq if d_sq else float("nan"),
                    "rel_error": math.sqrt(layer_err / d_sq) if d_sq else float("nan"),
                    "changed_fraction": n_changed / max(before.numel(), 1),
                }
            )
    if not rows:
        raise ValueError("No unmerged LoRA layers found: was the adapter merged already?")
    merged = peft_model.unload()  # type: ignore[operator]
    storage = "/".join(sorted(storages))
    notes = []
    if any(s.startswith(("4-bit", "int8")) for s in storages):
        notes.append("the base is quantized: the sum W + ΔW was re-quantized, so most of ΔW was rounded away")
    report = MergeRetention(
        rows=rows,
        retained=dot / delta_sq if delta_sq else float("nan"),
        rel_error=math.sqrt(err_sq / delta_sq) if delta_sq else float("nan"),
        changed_fraction=changed / max(total, 1),
        storage=storage,
        notes=notes,
    )
    return merged, report


def _logits_of(x: Any) -> torch.Tensor:
    t = getattr(x, "logits", x)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"Expected logits (a tensor or ReferenceOutputs), got {type(x).__name__}.")
    return t.detach().to("cpu", torch.float64)


def effect_retained(base: Any, adapter: Any, candidate: Any) -> float:
    """Share of the adapter's effect on the logits that a candidate (e.g. a merged model) keeps.

    ``1 - ||candidate - adapter|| / ||base - adapter||`` over all captured logits: 1.0 when the
    candidate reproduces the adapter model, 0.0 when it is as far from it as the base model is
    (negative when it is even farther). Arguments are logits tensors of the same shape or
    :class:`course_utils.validation.ReferenceOutputs` captured on the same inputs.

    >>> import torch
    >>> effect_retained(torch.zeros(2, 3), torch.ones(2, 3), torch.full((2, 3), 0.75))
    0.75
    """
    b, a, c = _logits_of(base), _logits_of(adapter), _logits_of(candidate)
    if not (b.shape == a.shape == c.shape):
        raise ValueError(
            f"Logit shapes differ: base {tuple(b.shape)}, adapter {tuple(a.shape)}, "
            f"candidate {tuple(c.shape)}: capture all three on the same inputs."
        )
    scale = float(torch.linalg.vector_norm(b - a))
    if scale == 0.0:
        raise ValueError("The adapter does not change the logits at all (base == adapter): nothing to retain.")
    return round(1.0 - float(torch.linalg.vector_norm(c - a)) / scale, 6)
