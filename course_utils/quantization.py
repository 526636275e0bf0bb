"""Configure and inspect bitsandbytes: 4-bit / 8-bit configs, their byte counts, and a CPU pitfall.

Notebook 6 (QLoRA) uses these helpers:

- :func:`bnb_4bit_config` / :func:`bnb_8bit_config`: a ``BitsAndBytesConfig`` that works on a GPU
  *and* on a CPU (bitsandbytes >= 0.50 runs 4-bit and 8-bit layers on the CPU);
  :func:`compute_dtype_for` picks the 4-bit compute dtype: bfloat16 on GPUs with native bf16
  (compute capability >= 8.0), float16 on older ones (T4, V100), float32 on a CPU.
- :func:`nf4_weight_bytes` / :func:`int8_weight_bytes`: the bytes a quantized weight matrix
  occupies, absmax overhead included (matches what bitsandbytes allocates).
- :func:`cpu_repack_hazard`, :func:`repacked_layers`, :func:`prevent_cpu_repack`: on CPUs with
  AVX-512-BF16, bitsandbytes 0.50 repacks a 4-bit weight into a CPU-only layout the first time
  the layer runs in eval mode without gradients, and keeps it. After that, training gradients
  that flow through the layer are wrong (the packed kernel has no backward) and
  ``bitsandbytes.functional.dequantize_4bit`` (what merging calls) returns garbage.
  :func:`prevent_cpu_repack` switches the repack off and undoes it where it already happened;
  ``course_utils.loading.load_model``, ``course_utils.training.train_lora`` and
  ``course_utils.merging`` call it for you.

Merging into a quantized base lives in :mod:`course_utils.merging`; GPU memory measurement in
:mod:`course_utils.memory`.

>>> round(nf4_weight_bytes(2048, 8192) / 2**20, 2)
8.25
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from course_utils.devices import compute_dtype_for

__all__ = [
    "bnb_4bit_config",
    "bnb_8bit_config",
    "compute_dtype_for",
    "cpu_repack_hazard",
    "int8_weight_bytes",
    "nf4_weight_bytes",
    "prevent_cpu_repack",
    "quantization_of",
    "quiet_bitsandbytes",
    "repacked_layers",
]


def quiet_bitsandbytes() -> None:
    """Keep bitsandbytes' logger to errors: importing it (peft does) prints backend notices otherwise.

    >>> quiet_bitsandbytes()
    """
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def quantization_of(model: torch.nn.Module) -> str | None:
    """``"4-bit"``/``"8-bit"`` (with the bitsandbytes type) if ``model`` has quantized linear layers, else ``None``.

    Looks at the layer classes, so it needs no bitsandbytes import.

    >>> quantization_of(torch.nn.Linear(2, 2)) is None
    True
    """
    for module in model.modules():
        cls = type(module).__name__
        if cls == "Linear4bit":
            qt = getattr(getattr(module, "weight", None), "quant_type", None)
            return f"4-bit ({qt})" if qt else "4-bit"
        if cls == "Linear8bitLt":
            return "8-bit (LLM.int8)"
    return None


def _bnb_config_class() -> Any:
    quiet_bitsandbytes()
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:  # pragma: no cover - a dependency except on macOS
        raise ImportError(
            "4-bit/8-bit loading needs bitsandbytes: pip install 'bitsandbytes>=0.50' "
            "(it runs on Linux/Windows CPUs and CUDA GPUs)."
        ) from err
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig


# --------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------
def bnb_4bit_config(
    device: str | torch.device = "auto",
    *,
    quant_type: str = "nf4",
    double_quant: bool = True,
    compute_dtype: torch.dtype | str | None = None,
    quant_storage: torch.dtype | str = torch.uint8,
) -> Any:
    """A 4-bit ``BitsAndBytesConfig`` (the QLoRA recipe: NF4, double quantization).

    Args:
        device: where the model will run; picks the compute dtype when ``compute_dtype`` is None.
        quant_type: ``"nf4"`` (normal-float, the QLoRA default) or ``"fp4"``.
        double_quant: also quantize the per-block absmax constants (saves ~0.37 bit per weight).
        compute_dtype: dtype the weights are dequantized to for each matmul; default
            :func:`compute_dtype_for` (bfloat16 or float16 on a GPU, float32 on a CPU).
        quant_storage: the dtype of the tensor that holds the packed 4-bit values (uint8; FSDP
            needs it equal to the other weights' dtype).

    Returns:
        A ``transformers.BitsAndBytesConfig`` to pass as ``quantization_config``.

    >>> cfg = bnb_4bit_config("cpu")
    >>> cfg.bnb_4bit_quant_type, cfg.bnb_4bit_compute_dtype
    ('nf4', torch.float32)
    """
    if quant_type not in ("nf4", "fp4"):
        raise ValueError(f"quant_type must be 'nf4' or 'fp4', got {quant_type!r}.")
    if isinstance(compute_dtype, str):
        compute_dtype = getattr(torch, compute_dtype)
    if isinstance(quant_storage, str):
        quant_storage = getattr(torch, quant_storage)
    cls = _bnb_config_class()
    return cls(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype or compute_dtype_for(device),
        bnb_4bit_quant_storage=quant_storage,
    )


def bnb_8bit_config() -> Any:
    """An 8-bit (LLM.int8) ``BitsAndBytesConfig``.

    >>> bnb_8bit_config().load_in_8bit
    True
    """
    return _bnb_config_class()(load_in_8bit=True)


# --------------------------------------------------------------------------------------------
# bytes
# --------------------------------------------------------------------------------------------
def nf4_weight_bytes(
    out_features: int,
    in_features: int,
    *,
    blocksize: int = 64,
    double_quant: bool = True,
    nested_blocksize: int = 256,
    include_code_tables: bool = False,
) -> int:
    """Bytes of a 4-bit (NF4/FP4) weight matrix as bitsandbytes stores it.

    - the weights: two 4-bit values per byte;
    - one absmax per block of ``blocksize`` weights: float32, or with ``double_quant`` one uint8
      per block plus one float32 absmax per ``nested_blocksize`` blocks (and one float32 offset);
    - ``include_code_tables``: the lookup tables (16 float32 for NF4, 256 float32 for the nested
      8-bit code) that each layer also keeps: about 1 KB, negligible for real layers.

    >>> nf4_weight_bytes(2048, 8192)          # 16.8M weights: 8 MiB + 256 KiB absmax + 4 KiB
    8654852
    >>> nf4_weight_bytes(2048, 8192, double_quant=False)
    9437184
    """
    n = int(out_features) * int(in_features)
    packed = math.ceil(n / 2)
    blocks = math.ceil(n / blocksize)
    if double_quant:
        absmax = blocks + 4 * math.ceil(blocks / nested_blocksize) + 4
    else:
        absmax = 4 * blocks
    tables = (16 * 4 + (256 * 4 if double_quant else 0)) if include_code_tables else 0
    return packed + absmax + tables


def int8_weight_bytes(out_features: int, in_features: int) -> int:
    """Bytes of an LLM.int8 weight matrix: one int8 per weight plus one float32 scale per output row.

    >>> int8_weight_bytes(2048, 8192)
    16785408
    """
    return int(out_features) * int(in_features) + 4 * int(out_features)


# --------------------------------------------------------------------------------------------
# the AVX-512-BF16 CPU repack (bitsandbytes >= 0.50)
# --------------------------------------------------------------------------------------------
# Linear4bit.forward (bitsandbytes/nn/modules.py) converts its weight into a CPU-only layout
# (``weight.quant_state.packing_format_for_cpu = True``: nibbles reordered, absmax transposed and
# cast to bfloat16) whenever it runs on a CPU with AVX-512-BF16, in eval mode, on an input that
# needs no gradient: i.e. at the first evaluation or generation. The conversion sticks. matmul_4bit
# then calls gemv_4bit, which has no backward, so the gradient that flows back through the layer
# is wrong; and dequantize_4bit does not know the layout. We switch the flag off and undo the
# conversion with bitsandbytes' own inverse, instead of patching bitsandbytes.


def _linear4bit_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """bitsandbytes ``Linear4bit`` layers: the modules that own a ``Params4bit`` weight.

    Checked by the weight's class name, so no bitsandbytes import is needed, and peft's LoRA
    wrappers (which expose ``weight`` but do not own it) are not counted twice.
    """
    return [
        (name, m) for name, m in model.named_modules() if type(m._parameters.get("weight")).__name__ == "Params4bit"
    ]


def _is_repacked(layer: torch.nn.Module) -> bool:
    return bool(getattr(getattr(layer.weight, "quant_state", None), "packing_format_for_cpu", False))


def cpu_repack_hazard() -> bool:
    """True when bitsandbytes on this machine repacks 4-bit weights at eval time (CPU with AVX-512-BF16).

    Such CPUs are AMD Zen 4 and later, and Intel Sapphire Rapids and later. Returns False
    when bitsandbytes is not installed.

    >>> isinstance(cpu_repack_hazard(), bool)
    True
    """
    quiet_bitsandbytes()
    try:
        from bitsandbytes.functional import has_avx512bf16
    except ImportError:
        return False
    return bool(has_avx512bf16())


def repacked_layers(model: torch.nn.Module) -> list[str]:
    """Names of the 4-bit layers whose weight bitsandbytes has repacked into its CPU-only layout.

    Always empty on CPUs without AVX-512-BF16, on GPUs, and after :func:`prevent_cpu_repack`.

    >>> repacked_layers(torch.nn.Linear(2, 2))
    []
    """
    return [name for name, layer in _linear4bit_layers(model) if _is_repacked(layer)]


def _unpack(layer: torch.nn.Module) -> None:
    """Undo the CPU repack of one Linear4bit layer, in place."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    weight = layer.weight
    state = weight.quant_state
    data, state = _convert_weight_packed_for_cpu_inverse(weight.data, state)
    if not state.nested and state.absmax.dim() == 2:
        # bitsandbytes 0.50's inverse rebuilds only a double-quantized absmax; a plain one stays
        # transposed and in bfloat16 ([K / blocksize, N]), which dequantize_4bit misreads.
        state.absmax = state.absmax.T.contiguous().reshape(-1).to(torch.float32)
    weight.data = data
    weight.quant_state = state


def prevent_cpu_repack(model: torch.nn.Module) -> int:
    """Keep bitsandbytes' 4-bit weights in their portable layout on CPUs with AVX-512-BF16.

    Switches the eval-time repack off on every 4-bit layer (``support_avx512bf16_for_cpu =
    False``) and converts any layer that was already repacked back with bitsandbytes'
    ``_convert_weight_packed_for_cpu_inverse``. Call it once after loading a 4-bit model, and
    before training, dequantizing or merging one that has already run in eval mode. Safe to call
    on any model and on any machine (it does nothing where there is nothing to do).

    The undo is close but not bit-exact: the repack rounded each block's absmax to bfloat16,
    which moves a dequantized weight by about 0.1% (``tests/test_quantization.py`` measures it).
    Switching off before the first forward, as ``load_model`` does, loses nothing.

    Returns:
        The number of layers that had been repacked and were converted back.

    >>> prevent_cpu_repack(torch.nn.Linear(2, 2))
    0
    """
    layers = _linear4bit_layers(model)
    undone = 0
    for _, layer in layers:
        layer.support_avx512bf16_for_cpu = False  # read by Linear4bit.forward (bitsandbytes/nn/modules.py)
        if _is_repacked(layer):
            quiet_bitsandbytes()
            _unpack(layer)
            undone += 1
    return undone
