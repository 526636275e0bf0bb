"""How you train, as one object: the :class:`Recipe` the memory planner and the memory measurement share.

A recipe names the method (full fine-tuning, LoRA, QLoRA, 8-bit LoRA), the dtype of the loaded
weights, the LoRA settings, the batch shape, gradient checkpointing, the optimizer and, for
several GPUs, how the model is split. ``course_utils.planner`` estimates its peak memory;
``course_utils.memory.measure_training_peak`` measures it on a real GPU.

>>> Recipe(method="qlora", batch_size=2).name
'qlora r16 all-linear b2x512'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from course_utils.sharding import validate_sharding

__all__ = ["DTYPE_BYTES", "METHODS", "OPTIMIZERS", "Recipe"]

#: The training methods a recipe can name.
METHODS = ("full", "lora", "qlora", "lora-8bit")
#: Bytes per element of each dtype the (non-quantized) weights can be loaded in.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: The optimizers the planner models.
OPTIMIZERS = ("adamw", "adamw-8bit", "sgd")


@dataclass
class Recipe:
    """How you train: method, dtype, LoRA settings, batch shape, checkpointing, optimizer.

    >>> Recipe(method="qlora", target_modules="all-linear", gradient_checkpointing=True).method
    'qlora'
    """

    method: str = field(default="lora", metadata={"help": 'One of "full", "lora", "qlora", "lora-8bit".'})
    dtype: str = field(
        default="bfloat16",
        metadata={"help": 'dtype the (non-quantized) weights are loaded in: "float32", "bfloat16", "float16".'},
    )
    r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (memory does not depend on it)."})
    lora_dropout: float = field(
        default=0.05, metadata={"help": "LoRA dropout; > 0 keeps a dropout mask per LoRA input."}
    )
    use_dora: bool = field(
        default=False,
        metadata={
            "help": "DoRA (LoraConfig(use_dora=True)): a trainable magnitude per output row and extra activations. "
            "rsLoRA needs no field: it changes the scaling, not the memory."
        },
    )
    target_modules: str | list[str] = field(
        default="all-linear", metadata={"help": '"all-linear" or module names such as ["q_proj", "v_proj"].'}
    )
    batch_size: int = field(default=8, metadata={"help": "Sequences per optimizer step (per device)."})
    seq_len: int = field(default=512, metadata={"help": "Tokens per sequence."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute each layer in backward."})
    optimizer: str = field(default="adamw", metadata={"help": '"adamw", "adamw-8bit" (bitsandbytes) or "sgd".'})
    autocast: bool = field(
        default=True,
        metadata={"help": "Mixed precision (torch.autocast / Trainer bf16=True): matmuls run in 16-bit."},
    )
    name: str | None = field(default=None, metadata={"help": "Label for tables; built from the fields if None."})
    # Multi-GPU (course_utils/sharding.py): the estimate is then per GPU; batch_size stays per GPU.
    n_gpus: int = field(default=1, metadata={"help": "GPUs trained on together (data parallel)."})
    sharding: str = field(
        default="none", metadata={"help": '"none" (1 GPU), "ddp" (full copy per GPU), "fsdp" or "zero3" (split).'}
    )

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"Recipe.method must be one of {METHODS}, got {self.method!r}.")
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"Recipe.dtype must be one of {tuple(DTYPE_BYTES)}, got {self.dtype!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Recipe.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}.")
        for attr in ("r", "batch_size", "seq_len"):
            value = getattr(self, attr)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Recipe.{attr} must be a positive integer, got {value!r}.")
        if not 0.0 <= float(self.lora_dropout) < 1.0:
            raise ValueError(f"Recipe.lora_dropout must be in [0, 1), got {self.lora_dropout!r}.")
        if isinstance(self.target_modules, str):
            if self.target_modules != "all-linear":
                self.target_modules = [self.target_modules]
        else:
            self.target_modules = list(self.target_modules)
            if not self.target_modules:
                raise ValueError('Recipe.target_modules is empty: use "all-linear" or e.g. ["q_proj", "v_proj"].')
        if self.use_dora and self.method == "full":
            raise ValueError('Recipe.use_dora=True is a LoRA variant: use method "lora", "qlora" or "lora-8bit".')
        validate_sharding(self.n_gpus, self.sharding)
        if self.name is None:
            self.name = self._default_name()

    def _default_name(self) -> str:
        parts = [self.method]
        if self.method == "full":
            parts.append(self.dtype)
        else:
            tm = self.target_modules
            parts.append(f"r{self.r}")
            parts.append("all-linear" if tm == "all-linear" else "+".join(tm))
            if self.use_dora:
                parts.append("dora")
        parts.append(f"b{self.batch_size}x{self.seq_len}")
        if self.gradient_checkpointing:
            parts.append("gc")
        if self.optimizer != "adamw":
            parts.append(self.optimizer)
        if self.sharding != "none":
            parts.append(f"{self.sharding} x{self.n_gpus}")
        return " ".join(parts)

    def replace(self, **changes: Any) -> Recipe:
        """A copy with some fields changed (the name is rebuilt unless given)."""
        changes.setdefault("name", None)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
