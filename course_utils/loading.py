"""Load the course's model and tokenizer: the embedded default or any hub id / local path.

Every notebook selects its model with ONE parameter. ``"course-tiny"`` (the default) is a
~1.8M-parameter Llama-architecture model that ships in ``data/course-tiny`` so the course
runs offline on a CPU in minutes; on Colab or a local GPU a learner passes a real model
(``"smollm2-135m"``, ``"HuggingFaceTB/SmolLM2-360M-Instruct"``, a local folder, ...).

>>> from course_utils.loading import load_model, load_tokenizer
>>> model = load_model("course-tiny")            # doctest: +SKIP
>>> tokenizer = load_tokenizer("course-tiny")    # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from course_utils.resources import data_root

__all__ = [
    "DEFAULT_MODEL",
    "DEVICE_ENV_VAR",
    "MODEL_ALIASES",
    "DeviceNotAvailableError",
    "ModelNotAvailableError",
    "TOKENIZER_FILES",
    "model_from_env",
    "native_bf16",
    "resolve_device",
    "resolve_dtype",
    "resolve_model_path",
    "load_model",
    "load_tokenizer",
]

DATA_DIR = data_root()  # the clone's data/ or the wheel's course_utils/_data (course_utils/resources.py)

DEFAULT_MODEL = "course-tiny"
#: Short names a learner may use instead of a full hub id.
MODEL_ALIASES: dict[str, str] = {
    "course-tiny": str(DATA_DIR / "course-tiny"),
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "smollm2-360m": "HuggingFaceTB/SmolLM2-360M-Instruct",
    "smollm2-1.7b": "HuggingFaceTB/SmolLM2-1.7B-Instruct",
}
#: The environment variable a notebook's `parameters` cell reads (papermill can override too).
MODEL_ENV_VAR = "COURSE_MODEL"


#: The environment variable that overrides ``resolve_device("auto")`` (``cpu``, ``cuda``, ``mps``).
DEVICE_ENV_VAR = "COURSE_DEVICE"
#: Files a saved tokenizer folder holds at least one of (fast tokenizers, sentencepiece, BPE vocabularies).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
)


class ModelNotAvailableError(OSError):
    """The model cannot be loaded here (unknown name, offline without a cached copy, ...)."""


class DeviceNotAvailableError(RuntimeError):
    """The requested device (``"cuda"``, ``"mps"``) does not exist on this machine."""


def model_from_env(default: str = DEFAULT_MODEL) -> str:
    """The model name a notebook should use: ``$COURSE_MODEL`` when set, else ``default``.

    >>> model_from_env("course-tiny") if "COURSE_MODEL" not in os.environ else "course-tiny"
    'course-tiny'
    """
    return os.environ.get(MODEL_ENV_VAR, "").strip() or default


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then CPU; anything else is passed to ``torch.device``.

    ``$COURSE_DEVICE`` (e.g. ``cpu``), when set, is what ``"auto"`` means: ``course-utils run
    --inplace`` sets it so that committed outputs come from the CPU on every machine.

    Asking for a device this machine does not have raises :class:`DeviceNotAvailableError`
    at once, saying what is there (instead of torch's error deep inside ``.to()``).

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    mps_ok = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
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


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and " " not in name


def resolve_model_path(name: str = DEFAULT_MODEL) -> str:
    """Map a short name, hub id or local folder to what ``from_pretrained`` should receive.

    Raises :class:`ModelNotAvailableError` for a name that is neither a known short name, an
    existing folder, nor a hub id (``owner/name``), listing the valid short names.

    >>> resolve_model_path("course-tiny").endswith("course-tiny")
    True
    """
    name = str(name).strip()
    if name in MODEL_ALIASES:
        return MODEL_ALIASES[name]
    if Path(name).expanduser().is_dir():
        folder = Path(name).expanduser()
        if not (folder / "config.json").exists():
            raise ModelNotAvailableError(
                f"The folder {folder} has no config.json, so it is not a saved model. Point to the folder "
                "that `model.save_pretrained(...)` wrote, or use one of: " + ", ".join(MODEL_ALIASES)
            )
        return str(folder)
    if _looks_like_hub_id(name):
        return name
    raise ModelNotAvailableError(
        f"Unknown model {name!r}. Use a short name ({', '.join(MODEL_ALIASES)}), a hub id such as "
        "'HuggingFaceTB/SmolLM2-135M-Instruct', or the path of a folder saved with save_pretrained()."
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}


def _not_available(name: str, path: str, err: Exception) -> ModelNotAvailableError:
    where = "the hub is unreachable (HF_HUB_OFFLINE is set)" if _offline() else "it could not be downloaded"
    return ModelNotAvailableError(
        f"Could not load {name!r} ({path}): it is not in the local Hugging Face cache and {where}. "
        "What to do: on a machine with internet access run `huggingface-cli download "
        f"{path}` (or load it once there), or copy a saved model folder here and pass its path; "
        f"on a machine without a hub, use the embedded default '{DEFAULT_MODEL}'. "
        f"(Underlying error: {type(err).__name__}: {str(err).splitlines()[0][:200]})"
    )


def _from_pretrained(loader: Any, name: str, **kwargs: Any) -> Any:
    path = resolve_model_path(name)
    try:
        return loader.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:  # hub client errors surface as OSError subclasses
        if Path(path).is_dir():
            raise
        raise _not_available(name, path, err) from None


def load_tokenizer(name: str = DEFAULT_MODEL, **kwargs: Any):
    """Load the tokenizer for ``name`` (short name, hub id or folder).

    A tokenizer without a pad token gets one (its EOS, the usual choice for decoder-only
    models; ``course-tiny`` has its own ``<|pad|>``), and padding on the left for batched
    generation.

    A folder without any tokenizer file (:data:`TOKENIZER_FILES`) raises
    :class:`ModelNotAvailableError` saying how to add one.

    >>> tok = load_tokenizer("course-tiny")
    >>> tok.pad_token != tok.eos_token
    True
    """
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    if Path(path).is_dir() and not any((Path(path) / f).is_file() for f in TOKENIZER_FILES):
        # transformers would build a tokenizer with a vocabulary of one token here, silently
        raise ModelNotAvailableError(
            f"The folder {path} (model {name!r}) holds no tokenizer: none of {', '.join(TOKENIZER_FILES)}. "
            "Save the tokenizer next to the model (`tokenizer.save_pretrained(folder)`), copy the tokenizer files "
            "of the model it came from, or load the tokenizer from that model's name instead."
        )
    tokenizer = _from_pretrained(AutoTokenizer, name, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device = "auto",
    quantization_config: Any = None,
    **kwargs: Any,
):
    """Load a causal LM in ``dtype`` on ``device`` (``"auto"``: CUDA, then MPS, then CPU).

    Args:
        name: ``"course-tiny"`` (default, ships with the course), a short name such as
            ``"smollm2-135m"``, a hub id, or a local folder.
        dtype: ``"auto"`` (float32 on CPU, bf16 on GPUs of compute capability >= 8.0, fp16 on
            older ones), ``"float32"``, ``"bfloat16"``, ...
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
        quantization_config: a ``transformers.BitsAndBytesConfig`` for 4-bit/8-bit loading.
            Quantized models are placed with ``device_map`` (bitsandbytes also runs on CPU), and
            their 4-bit layers never switch to bitsandbytes' CPU-only layout
            (:func:`course_utils.quantization.prevent_cpu_repack`).
        **kwargs: passed to ``AutoModelForCausalLM.from_pretrained``.

    Returns:
        The model, in eval mode (as ``from_pretrained`` returns it).

    >>> model = load_model("course-tiny", device="cpu")
    >>> model.config.model_type, str(model.dtype)
    ('llama', 'torch.float32')
    """
    from transformers import AutoModelForCausalLM

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    if quantization_config is not None:
        kwargs.setdefault("device_map", {"": dev.index or 0} if dev.type == "cuda" else {"": str(dev)})
        model = _from_pretrained(
            AutoModelForCausalLM, name, dtype=torch_dtype, quantization_config=quantization_config, **kwargs
        )
        from course_utils.quantization import prevent_cpu_repack

        prevent_cpu_repack(model)  # else training and merging go wrong on AVX-512-BF16 CPUs
        return model
    model = _from_pretrained(AutoModelForCausalLM, name, dtype=torch_dtype, **kwargs)
    return model.to(dev)
