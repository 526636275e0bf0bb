"""The device and dtype policy of the course: one place decides where a model runs and in which dtype.

- :func:`resolve_device`: ``"auto"`` picks CUDA, then Apple MPS, then the CPU; a device this machine
  lacks fails at once with :class:`DeviceNotAvailableError`.
- :func:`native_bf16`: a CUDA GPU of compute capability 8.0 or newer computes bfloat16 in hardware.
- :func:`resolve_dtype`: ``"auto"`` is bfloat16 on such a GPU, float16 on older GPUs and MPS,
  float32 on a CPU. Everything else in the course follows it: :func:`compute_dtype_for` (the
  4-bit compute dtype), :func:`mixed_precision_flags` (the Trainer's ``bf16``/``fp16``),
  ``course_utils.distributed`` and ``course_utils.doctor``; :func:`trainer_device_flags` gives a
  Trainer the flags that match.
- :func:`model_device` / :func:`model_dtype` / :func:`dtype_names`: where a loaded model's inputs go
  and the dtype most of its weights have.

>>> resolve_dtype("auto", resolve_device("cpu"))
torch.float32
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch

__all__ = [
    "DEVICE_ENV_VAR",
    "DeviceNotAvailableError",
    "compute_dtype_for",
    "dtype_names",
    "mixed_precision_flags",
    "model_device",
    "model_dtype",
    "native_bf16",
    "resolve_device",
    "resolve_dtype",
    "trainer_device_flags",
]


class DeviceNotAvailableError(RuntimeError):
    """The requested device (``"cuda"``, ``"mps"``) does not exist on this machine."""


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


DEVICE_ENV_VAR = "COURSE_DEVICE"  # what device="auto" means when set (`course-utils run --inplace`: cpu)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then CPU; anything else is passed to ``torch.device``.

    ``$COURSE_DEVICE`` (e.g. ``cpu``), when set, is what ``"auto"`` means: ``course-utils run
    --inplace`` sets it so that committed outputs come from the CPU on every machine.

    Asking for a device this machine does not have raises :class:`DeviceNotAvailableError`
    at once, saying what is there (instead of torch's error deep inside ``.to()``).

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    mps_ok = _mps_available()
    if isinstance(device, str) and device.strip().lower() == "auto":
        forced = os.environ.get(DEVICE_ENV_VAR, "").strip().lower()
        if forced and forced != "auto":  # `course-utils run --inplace` writes the CPU outputs on any machine
            return resolve_device(forced)
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_ok else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"Unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:1' or 'mps'.") from None
    here = "CUDA" if torch.cuda.is_available() else ("MPS" if mps_ok else "the CPU only")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceNotAvailableError(
            f"device={device!r}, but this machine has no CUDA GPU that torch can use (it has {here}; torch "
            f"{torch.__version__}). Use device='auto' (picks what is there) or 'cpu'; on Colab choose "
            "Runtime > Change runtime type > GPU; locally install a CUDA build of torch."
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceNotAvailableError(
            f"device={device!r}, but this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0. "
            "Use device='cuda' (GPU 0) or a smaller index."
        )
    if dev.type == "mps" and not mps_ok:
        raise DeviceNotAvailableError(
            f"device={device!r}, but Apple's MPS backend is not available here (this machine has {here}). "
            "Use device='auto' or 'cpu'."
        )
    return dev


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def native_bf16(device: str | torch.device = "cuda") -> bool:
    """True when a CUDA GPU computes bfloat16 in hardware: compute capability 8.0 or newer (A100, RTX 30xx on).

    Deliberately not ``torch.cuda.is_bf16_supported()``: it counts emulation and says True on a
    T4 (compute capability 7.5, Colab's free GPU), where bf16 runs slowly in software.
    False on a CPU, on MPS and without CUDA.

    >>> native_bf16("cpu")
    False
    """
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type != "cuda" or not torch.cuda.is_available():
        return False
    return tuple(torch.cuda.get_device_capability(dev)) >= (8, 0)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``"auto"``: bfloat16 on a CUDA GPU with native bf16, float16 on older GPUs and MPS, float32 on CPU.

    Native bf16 means compute capability >= 8.0 (:func:`native_bf16`); a T4 or V100 gets float16.
    float32 on CPU because bf16 matmuls crawl on CPUs without AVX-512-BF16/AMX.

    >>> resolve_dtype("auto", torch.device("cpu"))
    torch.float32
    >>> resolve_dtype("bf16", torch.device("cpu"))
    torch.bfloat16
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if native_bf16(device) else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"Unknown dtype {dtype!r}: use one of {sorted(_DTYPES)} or 'auto'.") from None


def compute_dtype_for(device: str | torch.device = "auto") -> torch.dtype:
    """The dtype a model computes in on ``device``: ``resolve_dtype("auto", resolve_device(device))``.

    bfloat16 on a CUDA GPU with native bf16 (compute capability >= 8.0: A100, H100, RTX 30xx on),
    float16 on older GPUs (T4, V100) and Apple MPS, float32 on a CPU. The 4-bit compute dtype
    (``course_utils.quantization.bnb_4bit_config``) and distributed training use it.

    >>> compute_dtype_for("cpu")
    torch.float32
    """
    return resolve_dtype("auto", resolve_device(device))


def mixed_precision_flags(device: Any = "auto") -> dict[str, bool]:
    """The Trainer's ``bf16``/``fp16`` flags that match ``load_model(..., dtype="auto")`` on ``device``.

    ``bf16=True`` on a CUDA GPU with native bf16 (compute capability >= 8.0), ``fp16=True`` on an
    older CUDA GPU (T4, V100), both False on a CPU and on MPS (the model trains in its own dtype).
    Follows :func:`resolve_dtype`, so a model and its Trainer never disagree.

    >>> mixed_precision_flags("cpu")
    {'bf16': False, 'fp16': False}
    """
    dev = resolve_device(device)
    dtype = resolve_dtype("auto", dev)
    on_cuda = dev.type == "cuda"
    return {"bf16": on_cuda and dtype == torch.bfloat16, "fp16": on_cuda and dtype == torch.float16}


def trainer_device_flags(device: Any = "auto") -> dict[str, bool]:
    """The ``TrainingArguments``/``SFTConfig`` flags that make a Trainer run the same on a CPU, MPS and a GPU.

    ``use_cpu`` when ``device`` is the CPU, the mixed-precision flags of :func:`mixed_precision_flags`
    (TRL would otherwise default to ``bf16=True``: an error on a CPU), and
    ``dataloader_pin_memory=False`` (pinning warns on a CPU, and the warning breaks nbval).
    ``course_utils.training.cpu_friendly_args`` and ``course_utils.distributed`` both use it.

    >>> trainer_device_flags("cpu")
    {'use_cpu': True, 'bf16': False, 'fp16': False, 'dataloader_pin_memory': False}
    """
    dev = resolve_device(device)
    return {"use_cpu": dev.type == "cpu", **mixed_precision_flags(dev), "dataloader_pin_memory": False}


def model_device(model: torch.nn.Module) -> torch.device:
    """The device a model's inputs go to: that of its input embeddings, else of its first parameter.

    >>> model_device(torch.nn.Linear(2, 2))
    device(type='cpu')
    """
    try:
        return model.get_input_embeddings().weight.device  # type: ignore[operator,union-attr]
    except (AttributeError, NotImplementedError):
        return next(model.parameters()).device


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of most of a model's floating-point weights (by element count).

    A fully quantized model has none; then its ``.dtype`` (the compute dtype), else float32.

    >>> model_dtype(torch.nn.Linear(2, 2).half())
    torch.float16
    """
    counts: dict[torch.dtype, int] = {}
    for p in model.parameters():
        if p.is_floating_point():
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    if not counts:  # fully quantized; fall back on the compute dtype
        return getattr(model, "dtype", torch.float32)
    return max(counts, key=counts.__getitem__)


def dtype_names(tensors: Iterable[torch.Tensor]) -> str:
    """The floating dtypes among ``tensors``, short and sorted (``"bfloat16/float32"``), or ``"none"``.

    >>> dtype_names([torch.zeros(1), torch.zeros(1, dtype=torch.bfloat16), torch.zeros(1, dtype=torch.int8)])
    'bfloat16/float32'
    """
    found = {t.dtype for t in tensors if t.is_floating_point()}
    return "/".join(sorted(str(d).replace("torch.", "") for d in found)) or "none"
