"""LoRA from scratch: the layer notebook 1 writes by hand, and the arithmetic behind its size.

A LoRA layer keeps a frozen linear layer ``W`` and adds a low-rank update::

    y = W x + (lora_alpha / r) * B (A x)        A: (r, in_features), B: (out_features, r)

``B`` starts at zero, so a freshly wrapped model computes exactly what the base model did;
``A`` starts like peft's default (``kaiming_uniform_(a=sqrt(5))``, the init of ``nn.Linear``).
Only ``A`` and ``B`` are trained: ``r * (in_features + out_features)`` parameters per layer.
A fused projection (Phi-3's ``qkv_proj``) is one layer like any other; GPT-2's ``Conv1D``
(weight stored (in, out), peft's ``fan_in_fan_out``) is wrapped too. Reading a model's layer
names and counting LoRA parameters is `course_utils.architectures`' job.

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
from typing import Any

import torch
from torch import nn

from course_utils.architectures import is_conv1d, layer_shape

__all__ = ["LoRALinear"]


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update ``(lora_alpha / r) * B @ A``.

    Args:
        base_layer: the layer to adapt, an ``nn.Linear`` or transformers' ``Conv1D`` (GPT-2); its
            weights are frozen (``requires_grad=False``).
        r: rank of the update (the inner size of ``B @ A``).
        lora_alpha: scaling numerator; the update is multiplied by ``lora_alpha / r``.
        lora_dropout: dropout applied to the input of the LoRA path only (as peft does).
    """

    def __init__(self, base_layer: nn.Module, r: int = 8, lora_alpha: float = 16, lora_dropout: float = 0.0) -> None:
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
        # Conv1D keeps its weight as (in, out): peft calls this fan_in_fan_out and transposes the
        # update when merging. A and B have the same shapes either way.
        self.fan_in_fan_out = is_conv1d(base_layer)
        self.in_features, self.out_features = layer_shape(base_layer)
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, dtype=weight.dtype, device=weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # peft's default init of A
        self.dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def lora_parameter_count(self) -> int:
        """Trainable parameters this layer adds: ``r * (in_features + out_features)``."""
        return self.lora_A.numel() + self.lora_B.numel()

    def delta_weight(self) -> torch.Tensor:
        """The update as a full matrix, ``scaling * B @ A``, in the base weight's layout (what merging adds).

        For a ``Conv1D`` base (weight stored (in, out)) that is the transpose, as peft's
        ``fan_in_fan_out`` does.
        """
        delta = self.scaling * self.lora_B @ self.lora_A
        return delta.T if self.fan_in_fan_out else delta

    @classmethod
    def from_peft(cls, peft_layer: Any, adapter_name: str = "default") -> LoRALinear:
        """A ``LoRALinear`` with the same base weights, A, B and scaling as a peft LoRA ``Linear`` layer.

        Works for any layer peft adapts as ``lora.Linear``: ``nn.Linear``, a fused projection, or a
        ``Conv1D`` (peft's ``fan_in_fan_out=True``).
        """
        base = peft_layer.get_base_layer()
        layer = cls(base, r=peft_layer.r[adapter_name], lora_alpha=peft_layer.lora_alpha[adapter_name])
        with torch.no_grad():
            layer.lora_A.copy_(peft_layer.lora_A[adapter_name].weight)
            layer.lora_B.copy_(peft_layer.lora_B[adapter_name].weight)
        layer.scaling = peft_layer.scaling[adapter_name]
        return layer

    def extra_repr(self) -> str:
        return f"r={self.r}, lora_alpha={self.lora_alpha}, scaling={self.scaling:g}"
