"""LoRA from scratch: the layer notebook 1 writes by hand, and the arithmetic behind its size.

A LoRA layer keeps a frozen linear layer ``W`` and adds a low-rank update::

    y = W x + (lora_alpha / r) * B (A x)        A: (r, in_features), B: (out_features, r)

``B`` starts at zero, so a freshly wrapped model computes exactly what the base model did;
``A`` starts like peft's default (``kaiming_uniform_(a=sqrt(5))``, the init of ``nn.Linear``).
Only ``A`` and ``B`` are trained: ``r * (in_features + out_features)`` parameters per layer.

>>> import torch
>>> layer = LoRALinear(torch.nn.Linear(8, 4), r=2, lora_alpha=4)
>>> layer.scaling, layer.lora_parameter_count()
(2.0, 24)
>>> x = torch.randn(3, 8)
>>> torch.equal(layer(x), layer.base_layer(x))      # B = 0: the output is unchanged at start
True
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = [
    "LoRALinear",
    "attention_projection_names",
    "linear_layer_names",
    "lora_parameter_count",
    "mlp_projection_names",
]


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update ``(lora_alpha / r) * B @ A``.

    Args:
        base_layer: the linear layer to adapt; its weights are frozen (``requires_grad=False``).
        r: rank of the update (the inner size of ``B @ A``).
        lora_alpha: scaling numerator; the update is multiplied by ``lora_alpha / r``.
        lora_dropout: dropout applied to the input of the LoRA path only (as peft does).
    """

    def __init__(self, base_layer: nn.Linear, r: int = 8, lora_alpha: float = 16, lora_dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(r, int) or r < 1:
            raise ValueError(f"r must be a positive integer, got {r!r}.")
        self.base_layer = base_layer
        for p in self.base_layer.parameters():
            p.requires_grad_(False)
        self.r = r
        self.lora_alpha = lora_alpha
        self.scaling = lora_alpha / r
        weight = base_layer.weight
        self.lora_A = nn.Parameter(torch.empty(r, base_layer.in_features, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, r, dtype=weight.dtype, device=weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # peft's default init of A
        self.dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def lora_parameter_count(self) -> int:
        """Trainable parameters this layer adds: ``r * (in_features + out_features)``."""
        return self.lora_A.numel() + self.lora_B.numel()

    def delta_weight(self) -> torch.Tensor:
        """The update as a full matrix, ``scaling * B @ A`` (what merging adds to ``W``)."""
        return self.scaling * self.lora_B @ self.lora_A

    @classmethod
    def from_peft(cls, peft_layer: Any, adapter_name: str = "default") -> "LoRALinear":
        """A ``LoRALinear`` with the same base weights, A, B and scaling as a peft LoRA ``Linear`` layer."""
        base = peft_layer.get_base_layer()
        layer = cls(base, r=peft_layer.r[adapter_name], lora_alpha=peft_layer.lora_alpha[adapter_name])
        with torch.no_grad():
            layer.lora_A.copy_(peft_layer.lora_A[adapter_name].weight)
            layer.lora_B.copy_(peft_layer.lora_B[adapter_name].weight)
        layer.scaling = peft_layer.scaling[adapter_name]
        return layer

    def extra_repr(self) -> str:
        return f"r={self.r}, lora_alpha={self.lora_alpha}, scaling={self.scaling:g}"


def _linear_modules(model: nn.Module) -> list[tuple[str, str, nn.Linear]]:
    """(short name, parent name, layer) of every linear layer of the decoder, skipping the output head.

    Works on a plain model and on a peft-wrapped one (the frozen layer then sits in ``.base_layer``;
    LoRA's own ``lora_A`` / ``lora_B`` layers are skipped).
    """
    output_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or module is output_emb or name.endswith("lm_head"):
            continue
        if ".lora_" in name or name.startswith("lora_"):
            continue
        if name.endswith(".base_layer"):
            name = name[: -len(".base_layer")]
        parent, _, short = name.rpartition(".")
        found.append((short, parent, module))
    return found


def linear_layer_names(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Every ``nn.Linear`` inside the decoder layers, by short name, with its (in, out) features.

    The output head (``lm_head``) is left out, as peft's ``"all-linear"`` does. Names come from
    the model itself, so this works for any architecture.

    >>> from course_utils.loading import load_model      # doctest: +SKIP
    >>> sorted(linear_layer_names(load_model()))         # doctest: +SKIP
    ['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']
    """
    out: dict[str, tuple[int, int]] = {}
    for short, _, module in _linear_modules(model):
        out.setdefault(short, (module.in_features, module.out_features))
    return out


def _names_under(model: nn.Module, keywords: Iterable[str]) -> list[str]:
    keywords = tuple(keywords)
    names: list[str] = []
    for short, parent, _ in _linear_modules(model):
        if any(k in parent.rsplit(".", 1)[-1].lower() for k in keywords) and short not in names:
            names.append(short)
    return names


def attention_projection_names(model: nn.Module) -> list[str]:
    """Short names of the linear layers inside the attention blocks (``q_proj``, ``k_proj``, ...).

    Read from the model (modules whose parent is named like ``self_attn`` / ``attention``), so a
    notebook never hard-codes one architecture's names.
    """
    return _names_under(model, ("attn", "attention"))


def mlp_projection_names(model: nn.Module) -> list[str]:
    """Short names of the linear layers inside the MLP blocks (``gate_proj``, ``up_proj``, ``down_proj``)."""
    return _names_under(model, ("mlp", "feed_forward", "ffn"))


def lora_parameter_count(model: nn.Module, r: int, target_modules: Iterable[str]) -> int:
    """How many parameters LoRA of rank ``r`` adds on the layers named ``target_modules``.

    ``r * (in_features + out_features)`` summed over every matching ``nn.Linear``: what
    ``print_trainable_parameters`` reports for a LoRA config with ``bias="none"``.
    """
    targets = set(target_modules)
    return sum(r * (m.in_features + m.out_features) for short, _, m in _linear_modules(model) if short in targets)
