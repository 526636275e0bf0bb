"""Where a model's memory goes: bytes of weights by dtype, trainable vs frozen, gradients, optimizer state, buffers.

:func:`model_memory_breakdown` counts what a loaded model holds right now, bitsandbytes' 4-bit and
8-bit storage and quantization state counted as stored (:func:`quant_state_tensors`); the result,
a :class:`ModelBreakdown`, prints as a table and plots as bars.

>>> model_memory_breakdown(torch.nn.Linear(4, 4)).weights_bytes   # 16 weights + 4 biases, float32
80
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from course_utils.architectures import logical_numel  # shared with trainable_parameter_table
from course_utils.tables import html_table

__all__ = ["ModelBreakdown", "model_memory_breakdown", "quant_state_tensors"]

MiB = 2**20


def quant_state_tensors(param: torch.Tensor) -> list[torch.Tensor]:
    """Tensors bitsandbytes keeps beside a quantized weight (absmax, code, nested state, SCB); none for a plain one.

    >>> quant_state_tensors(torch.nn.Linear(2, 2).weight)
    []
    """
    out: list[torch.Tensor] = []
    qs = getattr(param, "quant_state", None)
    stack = [qs] if qs is not None else []
    while stack:
        state = stack.pop()
        for attr in ("absmax", "code", "offset"):
            t = getattr(state, attr, None)
            if isinstance(t, torch.Tensor):
                out.append(t)
        if getattr(state, "state2", None) is not None:
            stack.append(state.state2)
    scb = getattr(param, "SCB", None)
    if isinstance(scb, torch.Tensor):
        out.append(scb)
    return out


def _storage_kind(param: torch.Tensor) -> str:
    cls = type(param).__name__
    if cls == "Params4bit":
        return "4-bit (uint8 packed)"
    if cls == "Int8Params" and param.dtype == torch.int8:
        return "int8"
    return str(param.dtype).replace("torch.", "")


@dataclass
class ModelBreakdown:
    """Bytes and counts of a model's parts. See `model_memory_breakdown`."""

    weights_by_dtype: dict[str, int]
    quant_state_bytes: int
    total_params: int
    trainable_params: int
    frozen_params: int
    trainable_bytes: int
    frozen_bytes: int
    grads_bytes: int
    adamw_bytes: int
    buffers_bytes: int
    by_module: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def weights_bytes(self) -> int:
        return sum(self.weights_by_dtype.values()) + self.quant_state_bytes

    @property
    def training_bytes(self) -> int:
        """Weights + buffers + gradients + AdamW state (activations not included)."""
        return self.weights_bytes + self.buffers_bytes + self.grads_bytes + self.adamw_bytes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(weights_bytes=self.weights_bytes, training_bytes=self.training_bytes)
        return d

    def _rows(self) -> list[tuple[str, int]]:
        rows = [(f"weights {k}", v) for k, v in self.weights_by_dtype.items()]
        if self.quant_state_bytes:
            rows.append(("quantization state (absmax, code, ...)", self.quant_state_bytes))
        rows += [
            ("buffers", self.buffers_bytes),
            ("gradients (trainable)", self.grads_bytes),
            ("AdamW state (2 x fp32 per trainable)", self.adamw_bytes),
            ("total before activations", self.training_bytes),
        ]
        return rows

    def __repr__(self) -> str:
        pct = 100 * self.trainable_params / max(self.total_params, 1)
        lines = [
            f"ModelBreakdown: {self.total_params:,} parameters, {self.trainable_params:,} trainable ({pct:.2f}%), "
            f"{self.frozen_params:,} frozen"
        ]
        lines += [f"  {k:<40} {v / MiB:>10.2f} MiB" for k, v in self._rows()]
        if self.by_module:
            lines.append(f"  {'module':<40} {'params':>12} {'MiB':>10} {'trainable':>12}")
            for name, m in self.by_module.items():
                lines.append(f"  {name:<40} {m['params']:>12,} {m['bytes'] / MiB:>10.2f} {m['trainable']:>12,}")
        return "\n".join(lines)

    __str__ = __repr__

    def _repr_html_(self) -> str:
        parts = html_table(["part", "MiB"], [(k, f"{v / MiB:.2f}") for k, v in self._rows()])
        mods = ""
        if self.by_module:
            mods = html_table(
                ["module", "params", "MiB", "trainable"],
                [
                    (n, f"{m['params']:,}", f"{m['bytes'] / MiB:.2f}", f"{m['trainable']:,}")
                    for n, m in self.by_module.items()
                ],
            )
        return f"<div><b>{self.total_params:,} parameters</b>, {self.trainable_params:,} trainable{parts}{mods}</div>"

    def plot(self, ax: Any = None) -> Any:
        """Horizontal bars of each part (MiB); returns the matplotlib Axes."""
        import matplotlib.pyplot as plt

        rows = self._rows()[:-1]
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 0.4 * len(rows) + 1.5))
        ax.barh([k for k, _ in rows], [v / MiB for _, v in rows])
        ax.set_xlabel("memory (MiB)")
        ax.set_ylabel("part")
        ax.set_title("Model memory before activations")
        return ax


def model_memory_breakdown(model: torch.nn.Module, by_module: int = 0) -> ModelBreakdown:
    """Count a model's memory: weights by dtype, trainable vs frozen, grads, AdamW state, buffers.

    Bytes are the tensors' actual storage (``numel * element_size``): a bitsandbytes 4-bit weight
    stores two values per byte in uint8, and its quantization state (absmax, code, nested state)
    is counted too; an 8-bit weight is int8 plus its fp32 row scales. Parameter counts are the
    logical number of weights. Gradients are one per trainable parameter in its dtype; AdamW
    state is two fp32 tensors per trainable parameter (8 bytes each). Tied weights count once.
    ``by_module=2`` also groups parameters by the first two parts of their names
    (``model.layers``, ``lm_head``, ...).

    >>> b = model_memory_breakdown(torch.nn.Linear(10, 4))
    >>> b.total_params, b.adamw_bytes
    (44, 352)
    """
    seen: set[int] = set()
    by_dtype: dict[str, int] = defaultdict(int)
    modules: dict[str, dict[str, int]] = {}
    quant = total = trainable = trainable_b = frozen_b = grads = 0
    for name, p in model.named_parameters(remove_duplicate=False):
        key = id(p)
        if key in seen:
            continue
        seen.add(key)
        nbytes = p.numel() * p.element_size()
        q_bytes = sum(t.numel() * t.element_size() for t in quant_state_tensors(p))
        n = logical_numel(p)
        by_dtype[_storage_kind(p)] += nbytes
        quant += q_bytes
        total += n
        if p.requires_grad:
            trainable += n
            trainable_b += nbytes + q_bytes
            grads += nbytes
        else:
            frozen_b += nbytes + q_bytes
        if by_module:
            group = ".".join(name.split(".")[:by_module])
            m = modules.setdefault(group, {"params": 0, "bytes": 0, "trainable": 0})
            m["params"] += n
            m["bytes"] += nbytes + q_bytes
            m["trainable"] += n if p.requires_grad else 0
    buffers = 0
    seen_buf: set[int] = set()
    for b in model.buffers():
        if id(b) not in seen_buf:
            seen_buf.add(id(b))
            buffers += b.numel() * b.element_size()
    return ModelBreakdown(
        weights_by_dtype=dict(by_dtype),
        quant_state_bytes=quant,
        total_params=total,
        trainable_params=trainable,
        frozen_params=total - trainable,
        trainable_bytes=trainable_b,
        frozen_bytes=frozen_b,
        grads_bytes=grads,
        adamw_bytes=8 * trainable,
        buffers_bytes=buffers,
        by_module=modules,
    )
