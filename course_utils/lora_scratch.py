"""LoRA from scratch: the layer notebook 01 writes by hand, kept here word for word.

A LoRA layer keeps a frozen linear layer ``W`` and adds a low-rank update::

    y = W x + (lora_alpha / r) * B (A x)        A: (r, in_features), B: (out_features, r)

The class below is the one the notebook's cell defines (a test checks that the two sources are
equal), so what a learner reads in the chapter is what the course imports. Reading a model's
layer names and counting LoRA parameters is `course_utils.architectures`' job.

>>> import torch
>>> layer = LoRALinear(torch.nn.Linear(8, 4), r=2, lora_alpha=4)
>>> layer.scaling, layer.lora_parameter_count()
(2.0, 24)
>>> x = torch.randn(3, 8)
>>> torch.equal(layer(x), layer.base_layer(x))      # B = 0: the output is unchanged at start
True
"""

import math

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

__all__ = ["LoRALinear"]


class LoRALinear(nn.Module):
    """A frozen linear layer ``W`` plus a trainable low-rank update: ``y = W x + (lora_alpha / r) * B A x``.

    ``A`` is (r, in_features) and starts random, as peft's default (the init of ``nn.Linear``);
    ``B`` is (out_features, r) and starts at zero, so the wrapped layer first computes exactly
    what ``W`` did. Only ``A`` and ``B`` train: ``r * (in_features + out_features)`` parameters.

    Args:
        base_layer: the layer to adapt: an ``nn.Linear`` (a fused projection such as Phi-3's
            ``qkv_proj`` is one too) or GPT-2's ``Conv1D``. Its weights are frozen.
        r: rank of the update, the inner size of ``B A``.
        lora_alpha: the update is multiplied by ``lora_alpha / r``.
        lora_dropout: dropout on the input of the LoRA path only, as peft does.
    """

    def __init__(self, base_layer: nn.Module, r: int = 8, lora_alpha: float = 16, lora_dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(r, int) or r < 1:
            raise ValueError(f"r must be a positive integer, got {r!r}.")
        if isinstance(base_layer, Conv1D):  # GPT-2 stores W as (in, out): peft calls it fan_in_fan_out
            self.in_features, self.out_features = base_layer.nx, base_layer.nf
        elif isinstance(base_layer, nn.Linear):  # W stored as (out, in)
            self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        else:
            raise TypeError(f"LoRALinear adapts an nn.Linear or a Conv1D, got {type(base_layer).__name__}.")
        self.fan_in_fan_out = isinstance(base_layer, Conv1D)
        self.base_layer = base_layer.requires_grad_(False)  # W (and its bias) stay frozen
        self.r = r
        self.lora_alpha = lora_alpha
        self.scaling = lora_alpha / r
        dtype, device = base_layer.weight.dtype, base_layer.weight.device
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, dtype=dtype, device=device))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, dtype=dtype, device=device))  # (out, r): zero
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # peft's default init of A
        self.dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.dropout(x) @ self.lora_A.T @ self.lora_B.T  # (..., in) -> (..., r) -> (..., out)
        return self.base_layer(x) + update * self.scaling

    def lora_parameter_count(self) -> int:
        """Trainable parameters this layer adds: ``r * (in_features + out_features)``."""
        return self.lora_A.numel() + self.lora_B.numel()

    def delta_weight(self) -> torch.Tensor:
        """The update as one matrix, ``scaling * B @ A``, in the base weight's layout: what merging adds to ``W``."""
        delta = self.scaling * self.lora_B @ self.lora_A  # (out, in)
        return delta.T if self.fan_in_fan_out else delta

    @classmethod
    def from_peft(cls, peft_layer: nn.Module, adapter_name: str = "default") -> "LoRALinear":
        """A ``LoRALinear`` with the same base layer, ``A``, ``B`` and scaling as one of peft's LoRA layers."""
        layer = cls(
            peft_layer.get_base_layer(), r=peft_layer.r[adapter_name], lora_alpha=peft_layer.lora_alpha[adapter_name]
        )
        with torch.no_grad():
            layer.lora_A.copy_(peft_layer.lora_A[adapter_name].weight)
            layer.lora_B.copy_(peft_layer.lora_B[adapter_name].weight)
        layer.scaling = peft_layer.scaling[adapter_name]
        return layer

    def extra_repr(self) -> str:
        return f"r={self.r}, lora_alpha={self.lora_alpha}, scaling={self.scaling:g}"
