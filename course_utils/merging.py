"""Merge a LoRA adapter into its base safely, and save the result without clobbering anything.

- :func:`safe_merge` merges on the model's device and, on CUDA out-of-memory, finishes the merge
  layer by layer (delta computed on the CPU, added in row chunks) instead of crashing half-way;
  it refuses a 4-bit/8-bit quantized base (see :class:`QuantizedMergeError`) and reports dtypes.
- :func:`dequantize_for_merge` is the right way to merge a QLoRA adapter: dequantize (or reload)
  the base in bfloat16/float32, attach the adapter, merge.
- :func:`load_adapter_checked` wraps ``PeftModel.from_pretrained`` with a check that the adapter
  was made for this base (module names and shapes), with an error that says what to do; a
  damaged ``adapter_config.json`` or a truncated weights file raises :class:`AdapterFileError`
  naming the file.
- :func:`save_merged` / :func:`save_adapter` never overwrite an existing folder unless asked
  (:class:`OutputExistsError`), and write to a temporary folder first so a failed save leaves
  the old one intact.
- :func:`validate_merge` captures the adapter model's outputs, merges and compares in one call;
  :func:`round_trip` saves a model or adapter, reloads it and compares the copy with the
  original. The measuring itself is :mod:`course_utils.validation`'s job.
- :func:`merge_with_retention` merges layer by layer and measures how much of each layer's delta
  ``B @ A * scaling`` really arrived in the stored weights (all of it in float32; a fraction in a
  4-bit base, which re-quantizes the sum); :func:`effect_retained` asks the same of the logits;
  :func:`dequantized_weight` is the float weight a (quantized or plain) linear layer computes with.

>>> from course_utils.merging import safe_merge, save_merged   # doctest: +SKIP
>>> merged, info = safe_merge(peft_model)                      # doctest: +SKIP
>>> save_merged(merged, "out/merged", tokenizer=tokenizer)     # doctest: +SKIP
"""

from __future__ import annotations

import gc
import html
import json
import logging
import math
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from course_utils.quantization import prevent_cpu_repack
from course_utils.validation import (
    ReferenceOutputs,
    Tolerance,
    ValidationReport,
    _describe,
    _model_dtype,
    capture_reference,
    compare_to_reference,
)

__all__ = [
    "AdapterBaseMismatchError",
    "AdapterFileError",
    "MergeInfo",
    "OutputExistsError",
    "QuantizedMergeError",
    "dequantize_for_merge",
    "load_adapter_checked",
    "quantization_of",
    "round_trip",
    "safe_merge",
    "save_adapter",
    "save_merged",
    "validate_merge",
]


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------
class AdapterBaseMismatchError(ValueError):
    """The adapter was made for another base model (its module names or shapes don't fit)."""


class QuantizedMergeError(RuntimeError):
    """Merging into a 4-bit/8-bit quantized base would round the adapter's delta away."""


class AdapterFileError(ValueError):
    """A file of an adapter folder can't be read: ``adapter_config.json`` is not valid JSON, or the
    weights file is truncated or damaged. The message names the file and what to do."""


class OutputExistsError(FileExistsError):
    """The output folder already holds something: a saved model or adapter, other files, or a
    previous notebook run (:func:`course_utils.runner.new_run_dir` raises it too)."""


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def _quiet_bitsandbytes() -> None:
    """peft imports bitsandbytes, which may print backend notices to stderr; keep it to errors."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def _is_peft_model(model: Any) -> bool:
    _quiet_bitsandbytes()
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def quantization_of(model: torch.nn.Module) -> str | None:
    """``"4-bit"``/``"8-bit"`` (with the bitsandbytes type) if ``model`` has quantized linear layers, else ``None``.

    Looks at the layer classes, so it needs no bitsandbytes import.

    >>> import torch
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


def _lora_layers(model: torch.nn.Module) -> list[tuple[str, Any]]:
    _quiet_bitsandbytes()
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def _dtypes(tensors: Any) -> set[torch.dtype]:
    return {t.dtype for t in tensors if t.is_floating_point()}


def _dtype_names(dts: set[torch.dtype]) -> str:
    return "/".join(sorted(str(d).replace("torch.", "") for d in dts)) or "none"


def _device_of(model: torch.nn.Module) -> torch.device:
    try:
        return model.get_input_embeddings().weight.device  # type: ignore[operator,union-attr]
    except (AttributeError, NotImplementedError):
        return next(model.parameters()).device


@dataclass
class MergeInfo:
    """What :func:`safe_merge` (or :func:`dequantize_for_merge`) did.

    >>> MergeInfo(strategy="merge_and_unload", device="cpu").fell_back
    False
    """

    strategy: str
    device: str
    fell_back: bool = False
    base_dtypes: str = ""
    adapter_dtypes: str = ""
    merged_dtypes: str = ""
    n_layers: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        """One sentence saying what happened."""
        how = f"merged {self.n_layers} LoRA layers with {self.strategy} on {self.device}"
        if self.fell_back:
            how += " (fell back after running out of GPU memory)"
        # no timing here: the message is printed in notebooks, and nbval compares it (see .seconds)
        return f"{how}; base {self.base_dtypes}, adapter {self.adapter_dtypes}, merged model {self.merged_dtypes}"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field plus the message."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["message"] = self.message
        return d

    def __repr__(self) -> str:
        return f"MergeInfo({self.message})" + "".join(f"\n  warning: {w}" for w in self.warnings)


# --------------------------------------------------------------------------------------------
# merging
# --------------------------------------------------------------------------------------------
_QUANTIZED_MERGE_HELP = (
    "The base model is loaded in {q} (bitsandbytes). Merging adds the LoRA delta to the "
    "dequantized weights and then RE-QUANTIZES the sum: every weight is rounded again to the 4/8-bit "
    "grid, so the delta that arrives is off by up to one quantization step per weight (a LoRA delta "
    "is often smaller than that step) and weights the adapter never touched change too (measured on "
    "course-tiny in 4-bit: the stored change was 27% off the LoRA delta, 97% of the weights changed, "
    "merged logits 100,000x further from the adapter model's than with the dequantize path, relative "
    "mean |Δlogit| 0.058 vs 6e-7). Instead:\n"
    "  merged, info = dequantize_for_merge(peft_model, dtype=torch.bfloat16)   # dequantize, then merge\n"
    "or reload the base unquantized and merge there:\n"
    "  base = AutoModelForCausalLM.from_pretrained(base_id, dtype=torch.bfloat16)\n"
    "  merged, info = safe_merge(load_adapter_checked(base, adapter_dir))\n"
    "Pass allow_quantized=True to merge into the quantized weights anyway."
)


def _check_dtypes(peft_model: torch.nn.Module, layers: list[tuple[str, Any]]) -> tuple[set, set, list[str]]:
    base_dt: set[torch.dtype] = set()
    ad_dt: set[torch.dtype] = set()
    for _, m in layers:
        base = m.get_base_layer()
        w = getattr(base, "weight", None)
        if w is not None and w.is_floating_point():
            base_dt.add(w.dtype)
        ad_dt |= _dtypes(p for n, p in m.named_parameters() if "lora_" in n)
    notes = []
    if base_dt and ad_dt and ad_dt != base_dt:
        notes.append(
            f"adapter weights are {_dtype_names(ad_dt)} but the base layers are {_dtype_names(base_dt)}: "
            f"the delta is rounded to {_dtype_names(base_dt)} when merged (expected, e.g. a float32 "
            "adapter trained on a bfloat16 base); the merged model keeps the base dtype."
        )
    return base_dt, ad_dt, notes


def _merge_layerwise(
    peft_model: torch.nn.Module, adapter_names: list[str] | None, check_finite: bool, chunk_bytes: int = 64 * 2**20
) -> int:
    """Merge every not-yet-merged LoRA layer: delta on the CPU in float32, added in row chunks."""
    from peft.tuners.lora import Linear as LoraLinear

    n = 0
    for name, module in _lora_layers(peft_model):
        names = adapter_names or list(module.active_adapters)
        for an in names:
            if an in module.merged_adapters or an not in getattr(module, "lora_A", {}):
                continue
            simple = (
                type(module) is LoraLinear and an not in module.lora_variant and not module.lora_bias.get(an, False)
            )
            if simple:
                w = module.get_base_layer().weight
                a = module.lora_A[an].weight.detach().to("cpu", torch.float32)
                b = module.lora_B[an].weight.detach().to("cpu", torch.float32)
                delta = (b @ a) * float(module.scaling[an])
                if module.fan_in_fan_out:
                    delta = delta.T
                if check_finite and not torch.isfinite(delta).all():
                    raise ValueError(f"NaN/inf in the LoRA delta of {name} (adapter {an!r}): the adapter is broken.")
                step = max(1, chunk_bytes // (4 * w.shape[1]))
                with torch.no_grad():
                    for s in range(0, w.shape[0], step):
                        rows = w.data[s : s + step]
                        rows.copy_((rows.float() + delta[s : s + step].to(w.device)).to(w.dtype))
                module.merged_adapters.append(an)
            else:  # other layer types / variants: merge this one module on the CPU
                device = next(module.parameters()).device
                module.to("cpu")
                module.merge(safe_merge=check_finite, adapter_names=[an])
                module.to(device)
            n += 1
    return n


def safe_merge(
    peft_model: torch.nn.Module,
    *,
    adapter_names: list[str] | None = None,
    fallback: str | None = "layerwise",
    allow_quantized: bool = False,
    check_finite: bool = True,
    verbose: bool = True,
) -> tuple[torch.nn.Module, MergeInfo]:
    """``merge_and_unload()`` with an out-of-memory fallback, a quantized-base guard and a dtype report.

    Merges on the device the model is on. If that raises ``torch.OutOfMemoryError`` (CUDA OOM,
    a subclass of the ``RuntimeError`` older tutorials catch), the layers not merged yet are
    merged one at a time with ``fallback="layerwise"`` (delta computed on the CPU in float32,
    added to the weight in row chunks: almost no extra GPU memory), or the whole model is moved
    to the CPU and merged there with ``fallback="cpu"`` (it stays on the CPU). Other errors are
    raised as they are. ``fallback=None`` re-raises the OOM.

    The PeftModel is consumed: its base holds the merged weights afterwards.

    Returns:
        ``(merged_model, MergeInfo)``; the info's ``message`` is printed when ``verbose``.

    Raises:
        QuantizedMergeError: the base is 4-bit/8-bit quantized (see :func:`dequantize_for_merge`).
        TypeError: ``peft_model`` is not a PeftModel.

    >>> merged, info = safe_merge(peft_model)   # doctest: +SKIP
    merged 28 LoRA layers with merge_and_unload on cpu; base float32, adapter float32, merged model float32
    """
    if not _is_peft_model(peft_model):
        raise TypeError(
            f"safe_merge needs a PeftModel, got {type(peft_model).__name__}. Load the adapter first: "
            "peft_model = load_adapter_checked(base_model, adapter_dir)."
        )
    if fallback not in ("layerwise", "cpu", None):
        raise ValueError(f"fallback must be 'layerwise', 'cpu' or None, got {fallback!r}.")
    q = quantization_of(peft_model)
    if q is not None and not allow_quantized:
        raise QuantizedMergeError(_QUANTIZED_MERGE_HELP.format(q=q))
    prevent_cpu_repack(peft_model)  # a 4-bit weight bitsandbytes repacked for the CPU dequantizes to garbage
    layers = _lora_layers(peft_model)
    base_dt, ad_dt, notes = _check_dtypes(peft_model, layers)
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    if q is not None:
        notes.append(
            f"merged into a {q} base (allow_quantized=True): the delta was re-quantized with the weights (rounding error up to one step per weight)."
        )
    device = _device_of(peft_model)
    n_layers = sum(1 for _, m in layers if hasattr(m, "merge"))
    info = MergeInfo(
        strategy="merge_and_unload",
        device=str(device),
        base_dtypes=_dtype_names(base_dt),
        adapter_dtypes=_dtype_names(ad_dt),
        n_layers=n_layers,
        warnings=notes,
    )
    t0 = time.perf_counter()
    try:
        merged = peft_model.merge_and_unload(safe_merge=check_finite, adapter_names=adapter_names)  # type: ignore[operator]
    except torch.OutOfMemoryError:
        if fallback is None:
            raise
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        info.fell_back = True
        if fallback == "layerwise":
            if verbose:
                print(
                    "Out of GPU memory while merging: merging the remaining layers one at a time "
                    "(delta on the CPU, added in chunks)."
                )
            _merge_layerwise(peft_model, adapter_names, check_finite)
            merged = peft_model.unload()  # type: ignore[operator]
            info.strategy = "layer-by-layer merge (CPU delta, chunked add)"
        else:
            if verbose:
                print("Out of GPU memory while merging: moving the model to the CPU and merging there.")
            peft_model.to("cpu")
            _merge_layerwise(peft_model, adapter_names, check_finite)
            merged = peft_model.unload()  # type: ignore[operator]
            info.strategy = "merge on CPU (model left on the CPU; .to('cuda') it if it fits)"
            info.device = "cpu"
    info.seconds = time.perf_counter() - t0
    merged_dt = _dtypes(merged.parameters())
    info.merged_dtypes = _dtype_names(merged_dt)
    if base_dt and not base_dt <= merged_dt:
        info.warnings.append(f"the merged weights are {info.merged_dtypes}, the base was {info.base_dtypes}.")
    if verbose:
        print(info.message)
    return merged, info


def _adapter_state(peft_model: torch.nn.Module) -> tuple[str, Any, dict[str, torch.Tensor]]:
    _quiet_bitsandbytes()
    from peft import get_peft_model_state_dict

    name = peft_model.active_adapter  # type: ignore[attr-defined]
    config = peft_model.peft_config[name]  # type: ignore[attr-defined]
    state = {
        k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(peft_model, adapter_name=name).items()
    }
    return name, config, state


def dequantize_for_merge(
    model: torch.nn.Module,
    adapter: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype = torch.bfloat16,
    reload_from: str | os.PathLike | None = None,
    verbose: bool = True,
) -> tuple[torch.nn.Module, MergeInfo]:
    """Merge a QLoRA adapter properly: base in ``dtype`` first, then the adapter, then merge.

    ``model`` is either a PeftModel on a 4-bit/8-bit base (its adapter weights are kept) or a
    quantized base model plus ``adapter`` (an adapter folder). The base is dequantized in place
    with transformers' ``model.dequantize(dtype=...)`` (the weights the adapter was trained
    against, up to rounding), or, with ``reload_from`` (the original checkpoint), reloaded
    unquantized from disk on the CPU. The whole model is cast to ``dtype`` so the merge and the
    result have one dtype. Needs memory for the base in ``dtype`` (2 bytes/param for bfloat16).

    Returns:
        ``(merged_model, MergeInfo)`` like :func:`safe_merge`.

    >>> merged, info = dequantize_for_merge(qlora_model, dtype=torch.bfloat16)   # doctest: +SKIP
    """
    _quiet_bitsandbytes()
    from peft import PeftModel, set_peft_model_state_dict

    prevent_cpu_repack(model)  # a 4-bit weight bitsandbytes repacked for the CPU dequantizes to garbage
    state = config = None
    name = "default"
    if adapter is not None and not _is_peft_model(model):
        _read_adapter_folder(Path(adapter))  # a damaged adapter fails now, before the base is changed
    if _is_peft_model(model):
        name, config, state = _adapter_state(model)
        base = model.unload()  # type: ignore[operator]
    else:
        if adapter is None:
            raise ValueError("Pass the adapter folder (adapter=...) or a PeftModel on the quantized base.")
        base = model
    before = quantization_of(base)
    if reload_from is not None:
        from transformers import AutoModelForCausalLM

        del base
        gc.collect()
        base = AutoModelForCausalLM.from_pretrained(str(reload_from), dtype=dtype)
        how = f"reloaded {reload_from} in {str(dtype).replace('torch.', '')}"
    elif before is None and getattr(base, "hf_quantizer", None) is not None:
        # A quantizer with no quantized layer (Falcon's FalconLinear, which bitsandbytes loading skips):
        # detach it, as dequantize() would (transformers 5.24's dequantize fails when nothing was replaced),
        # or .to(dtype) below refuses.
        base.hf_quantizer.remove_quantization_config(base)
        how = f"base was loaded quantized but no layer was quantized; cast to {str(dtype).replace('torch.', '')}"
    elif before is not None:
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "modules are dequantized in ..." notice
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                base = base.dequantize(dtype=dtype)  # type: ignore[operator]
        finally:
            hf_logging.set_verbosity(level)
        how = f"dequantized the {before} base to {str(dtype).replace('torch.', '')}"
    else:
        how = f"base was not quantized; cast to {str(dtype).replace('torch.', '')}"
    base = base.to(dtype)
    if state is not None:
        pm = PeftModel(base, config, adapter_name=name)
        set_peft_model_state_dict(pm, state, adapter_name=name)
    else:
        pm = load_adapter_checked(base, adapter)  # type: ignore[arg-type]
    if verbose:
        print(f"{how}; adapter attached; merging.")
    merged, info = safe_merge(pm, verbose=verbose)
    info.strategy = f"{how}, then merge_and_unload"
    return merged, info


# --------------------------------------------------------------------------------------------
# loading an adapter with a check
# --------------------------------------------------------------------------------------------
_RESAVE_HINT = (
    "Copy or download the adapter again, or save it again from the model you trained "
    "(save_adapter(peft_model, path, overwrite=True), or peft_model.save_pretrained(path))."
)


def _read_adapter_config(path: Path) -> dict[str, Any]:
    """``adapter_config.json`` of the adapter folder ``path`` as a dict, with errors that name the file.

    peft reads this file with a bare ``json.load``: a damaged file gives a JSONDecodeError that
    names neither the file nor the fix, so the file is read and checked here first.
    """
    cfg_file = path / "adapter_config.json"
    if not cfg_file.exists():
        hint = (
            " It has a config.json: it looks like a full (merged) model; load it with "
            "AutoModelForCausalLM.from_pretrained."
            if (path / "config.json").exists()
            else ""
        )
        raise FileNotFoundError(f"No adapter_config.json in {path}: not an adapter folder.{hint}")
    text = cfg_file.read_text(encoding="utf-8", errors="replace")
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as err:
        raise AdapterFileError(
            f"{cfg_file} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}; the "
            f"file has {len(text)} characters): it is damaged or was cut off while being written or "
            f"copied. {_RESAVE_HINT}"
        ) from None
    if not isinstance(cfg, dict) or "peft_type" not in cfg:
        seen = f"a JSON {type(cfg).__name__}" if not isinstance(cfg, dict) else f"keys {sorted(cfg)[:6]}"
        raise AdapterFileError(
            f"{cfg_file} is not a peft adapter config (expected a JSON object with 'peft_type', "
            f"got {seen}). {_RESAVE_HINT}"
        )
    return cfg


def _adapter_weights_file(path: Path) -> Path:
    """The adapter's weights file (``adapter_model.safetensors``, else ``adapter_model.bin``)."""
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (path / name).exists():
            return path / name
    raise AdapterFileError(
        f"{path} has an adapter_config.json but no adapter_model.safetensors (or adapter_model.bin): "
        f"the adapter's weights are missing, e.g. a copy or upload that stopped half-way. {_RESAVE_HINT}"
    )


def _adapter_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shape of every tensor in the adapter's weights file, read without loading the tensors.

    A truncated or damaged file raises :class:`AdapterFileError` naming it (safetensors and
    torch raise errors that name neither the file nor the fix).
    """
    import pickle

    from safetensors import SafetensorError, safe_open

    weights = _adapter_weights_file(path)
    size = weights.stat().st_size
    try:
        if weights.suffix == ".safetensors":
            # safe_open checks the header against the file size: a truncated file fails here
            with safe_open(str(weights), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not a dict)
        sd = torch.load(str(weights), map_location="cpu", weights_only=True, mmap=True)
        return {k: tuple(v.shape) for k, v in sd.items()}
    except (SafetensorError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise AdapterFileError(
            f"{weights} can't be read ({type(err).__name__}: {err}; the file has {size:,} bytes): it is "
            f"truncated or damaged, e.g. an interrupted download, copy or save (a full disk). {_RESAVE_HINT}"
        ) from None


def _read_adapter_folder(path: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """The adapter's config and tensor shapes; :class:`AdapterFileError` names a damaged file.

    Every place in course_utils that loads an adapter calls this first, so a broken file fails
    with one clear error instead of a parser's.
    """
    return _read_adapter_config(path), _adapter_shapes(path)


def _short_name(name: Any) -> str:
    return Path(str(name or "")).name or str(name)


def load_adapter_checked(
    base_model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    adapter_name: str = "default",
    is_trainable: bool = False,
    **kwargs: Any,
) -> Any:
    """``PeftModel.from_pretrained(base_model, path)`` after checking the adapter fits this base.

    Reads ``adapter_config.json`` and the adapter's tensor shapes (without loading them) and
    checks that every adapted module exists in ``base_model`` with matching in/out sizes. A
    different ``base_model_name_or_path`` with fitting shapes only warns (local paths and hub
    ids name the same model differently).

    Raises:
        FileNotFoundError: ``path`` has no ``adapter_config.json``.
        AdapterFileError: ``adapter_config.json`` is not valid JSON, or the weights file is
            missing, truncated or damaged (the message names the file).
        AdapterBaseMismatchError: the adapter was made for another base model.

    >>> peft_model = load_adapter_checked(base, "out/my-adapter")   # doctest: +SKIP
    """
    _quiet_bitsandbytes()
    from peft import PeftModel

    path = Path(path)
    cfg, shapes = _read_adapter_folder(path)
    target = base_model.get_base_model() if _is_peft_model(base_model) else base_model  # type: ignore[operator]
    expected = cfg.get("base_model_name_or_path")
    given = getattr(getattr(target, "config", None), "_name_or_path", None) or getattr(target, "name_or_path", None)

    problems: list[str] = []
    modules = dict(target.named_modules())
    for key, shape in sorted(shapes.items()):
        mod_key = key.removeprefix("base_model.model.")
        for suffix in (".lora_A.weight", ".lora_B.weight", ".lora_embedding_A", ".lora_embedding_B", ".weight"):
            if mod_key.endswith(suffix):
                mod_name = mod_key[: -len(suffix)]
                break
        else:
            continue
        module = modules.get(mod_name)
        if module is None:
            problems.append(f"{mod_name}: no such module in the base model")
            continue
        in_f = getattr(module, "in_features", None)
        out_f = getattr(module, "out_features", None)
        if isinstance(module, torch.nn.Embedding):
            in_f, out_f = module.num_embeddings, module.embedding_dim
        if suffix == ".lora_A.weight" and in_f is not None and shape[-1] != in_f:
            problems.append(f"{mod_name}: adapter expects {shape[-1]} inputs, base layer has {in_f}")
        elif suffix == ".lora_B.weight" and out_f is not None and shape[0] != out_f:
            problems.append(f"{mod_name}: adapter expects {shape[0]} outputs, base layer has {out_f}")
        elif suffix == ".lora_embedding_A" and in_f is not None and shape[-1] != in_f:
            problems.append(f"{mod_name}: adapter expects a vocabulary of {shape[-1]}, base has {in_f}")
        elif suffix == ".lora_embedding_B" and out_f is not None and shape[0] != out_f:
            problems.append(f"{mod_name}: adapter expects embedding size {shape[0]}, base has {out_f}")
        elif suffix == ".weight":  # modules_to_save: a full copy of the layer
            w = getattr(module, "weight", None)
            if w is not None and tuple(w.shape) != tuple(shape):
                problems.append(f"{mod_name}: adapter stores a {tuple(shape)} weight, base has {tuple(w.shape)}")
    if problems:
        vocab_hint = ""
        if any(("embed" in p or "lm_head" in p or "vocabulary" in p) for p in problems):
            vocab_hint = (
                " If you added tokens before training, load the same tokenizer and call "
                "base_model.resize_token_embeddings(len(tokenizer)) before loading the adapter."
            )
        shown = "\n  ".join(problems[:5]) + (f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else "")
        made_for = repr(expected) if expected else "another model (adapter_config.json does not name it)"
        how = f" (AutoModelForCausalLM.from_pretrained({expected!r}))" if expected else ""
        raise AdapterBaseMismatchError(
            f"The adapter in {path} does not fit this base model: it was made for "
            f"{made_for}, the base you passed is {given!r}.\n  {shown}\n"
            f"Load the base model the adapter was trained on{how} and try again.{vocab_hint}"
        )
    if expected and given and _short_name(expected) != _short_name(given):
        warnings.warn(
            f"The adapter in {path} was trained on {expected!r}; you are loading it on {given!r}. "
            "Shapes fit, so it will load; make sure this is the same (or an intended) base model.",
            UserWarning,
            stacklevel=2,
        )
    if _is_peft_model(base_model):
        base_model.load_adapter(str(path), adapter_name=adapter_name, is_trainable=is_trainable, **kwargs)  # type: ignore[operator]
        return base_model
    return PeftModel.from_pretrained(
        base_model, str(path), adapter_name=adapter_name, is_trainable=is_trainable, **kwargs
    )


# --------------------------------------------------------------------------------------------
# merge and validate; save, reload and validate (the measuring is course_utils.validation's)
# --------------------------------------------------------------------------------------------
def validate_merge(
    peft_model: torch.nn.Module,
    inputs: Any,
    tokenizer: Any = None,
    *,
    tolerance: Tolerance | str | torch.dtype | None = "auto",
    max_new_tokens: int = 16,
    batch_size: int = 8,
    max_length: int = 128,
    max_examples: int = 16,
    merge_fn: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    verbose: bool = True,
) -> tuple[torch.nn.Module, ValidationReport]:
    """Capture the adapter model's outputs, merge it, and compare: the whole workflow in one call.

    :func:`course_utils.validation.capture_reference` runs BEFORE the merge, because
    ``merge_and_unload()`` changes the base in place. Merges with :func:`safe_merge`
    (out-of-memory fallback, quantized-base guard) unless ``merge_fn`` is given (it receives the
    PeftModel and returns the merged model), then judges the merged model with
    :func:`course_utils.validation.compare_to_reference`. The PeftModel is consumed: its base now
    holds the merged weights.

    Returns:
        ``(merged_model, report)``.

    >>> merged, report = validate_merge(peft_model, ["Hello"], tokenizer)   # doctest: +SKIP
    >>> report.passed                                                       # doctest: +SKIP
    True
    """
    ref = capture_reference(
        peft_model,
        inputs,
        tokenizer,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        max_length=max_length,
        max_examples=max_examples,
    )
    notes: list[str] = []
    if merge_fn is None:
        merged, info = safe_merge(peft_model, verbose=verbose)
        notes.append(f"merge: {info.message}")
    else:
        merged = merge_fn(peft_model)
    report = compare_to_reference(merged, ref, tolerance=tolerance, title="merged vs adapter")
    report.notes = notes + report.notes
    return merged, report


def round_trip(
    model: torch.nn.Module,
    path: str | os.PathLike,
    inputs: Any,
    tokenizer: Any = None,
    *,
    overwrite: bool = False,
    tolerance: Tolerance | str | torch.dtype | None = "auto",
    max_new_tokens: int = 16,
    batch_size: int = 8,
    max_length: int = 128,
    max_examples: int = 16,
) -> ValidationReport:
    """Save ``model`` to ``path``, load it back, and report whether the copy reproduces its outputs.

    A PeftModel is saved with :func:`save_adapter` and reloaded as a second adapter on the same
    base (no second copy of the base; the round-trip adapter is deleted afterwards). Any other
    model is saved with :func:`save_merged` and reloaded with
    ``AutoModelForCausalLM.from_pretrained`` in its dtype, on its device.

    Returns:
        The :class:`course_utils.validation.ValidationReport` of the reloaded copy against the
        original (``.passed``; a float32 copy should match exactly).

    Raises:
        OutputExistsError: ``path`` is not empty and ``overwrite`` is False.
        AdapterFileError: the saved adapter can't be read back.

    >>> round_trip(merged, "out/merged", ["Hello"], tokenizer).passed   # doctest: +SKIP
    True
    """
    ref: ReferenceOutputs = capture_reference(
        model,
        inputs,
        tokenizer,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        max_length=max_length,
        max_examples=max_examples,
    )
    if _is_peft_model(model):
        original = model.active_adapter  # type: ignore[attr-defined]
        save_adapter(model, path, overwrite=overwrite, adapter_name=original)
        _read_adapter_folder(Path(path))  # a damaged file fails here, naming the file
        name = "_round_trip"
        grads = {n: p.requires_grad for n, p in model.named_parameters()}
        model.load_adapter(str(path), adapter_name=name, is_trainable=False)  # type: ignore[operator]
        try:
            model.set_adapter(name, inference_mode=True)  # type: ignore[operator]
            report = compare_to_reference(model, ref, tolerance=tolerance, title="reloaded adapter vs original")
        finally:
            model.set_adapter(original, inference_mode=True)  # type: ignore[operator]
            model.delete_adapter(name)  # type: ignore[operator]
            for n, p in model.named_parameters():  # leave trainability exactly as it was
                p.requires_grad_(grads.get(n, False))
        report.candidate = f"adapter reloaded from {path}"
        return report

    from transformers import AutoModelForCausalLM

    save_merged(model, path, overwrite=overwrite, tokenizer=tokenizer)
    dtype = _model_dtype(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    reloaded.to(_device_of(model))
    report = compare_to_reference(reloaded, ref, tolerance=tolerance, title="reloaded model vs original")
    report.candidate = f"{_describe(reloaded)} reloaded from {path}"
    del reloaded
    return report


# --------------------------------------------------------------------------------------------
# saving without overwriting
# --------------------------------------------------------------------------------------------
_MODEL_FILES = (
    "config.json",
    "adapter_config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "model.safetensors",
    "adapter_model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "adapter_model.bin",
)


def _describe_folder(path: Path) -> str:
    names = {p.name for p in path.iterdir()}
    if "adapter_config.json" in names:
        return "an adapter"
    if "config.json" in names:
        return "a model"
    return f"{len(names)} files"


def _save_atomically(path: str | os.PathLike, overwrite: bool, write: Any) -> Path:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} is a file, not a folder: choose another path.")
    existing = path.is_dir() and any(path.iterdir())
    if existing:
        what = _describe_folder(path)
        if not overwrite:
            raise OutputExistsError(
                f"{path} already holds {what}; refusing to overwrite it. Pass overwrite=True to "
                "replace it, or choose another path."
            )
        looks_like_model = all(
            p.name in _MODEL_FILES
            or p.name.endswith((".safetensors", ".json", ".md", ".txt", ".jinja", ".model", ".bin"))
            for p in path.iterdir()
        )
        if not looks_like_model:
            raise OutputExistsError(
                f"{path} holds files that are not a saved model or adapter (e.g. folders or other "
                "files); overwrite=True only replaces model/adapter folders. Choose another path."
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        write(tmp)
        if existing:
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            if path.is_dir():
                path.rmdir()  # empty folder
            tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path


def save_merged(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    tokenizer: Any = None,
    safe_serialization: bool = True,
) -> Path:
    """Save a merged (plain transformers) model, and its tokenizer if given, to a NEW folder.

    Raises:
        OutputExistsError: ``path`` is not empty and ``overwrite`` is False (a ``FileExistsError``).
        TypeError: ``model`` still has LoRA layers (``save_pretrained`` would write only the adapter).

    >>> save_merged(merged, "out/merged", tokenizer=tokenizer)   # doctest: +SKIP
    PosixPath('out/merged')
    """
    if _is_peft_model(model) or _lora_layers(model):
        raise TypeError(
            "This model still has LoRA layers, so save_pretrained would not write a merged model. "
            "Merge first (merged, info = safe_merge(peft_model)), or save the adapter with save_adapter()."
        )
    q = quantization_of(model)
    if q is not None:
        warnings.warn(f"Saving a {q} quantized model: reloading needs bitsandbytes.", UserWarning, stacklevel=2)

    def write(tmp: Path) -> None:
        model.save_pretrained(str(tmp), safe_serialization=safe_serialization)  # type: ignore[operator]
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))

    return _save_atomically(path, overwrite, write)


def save_adapter(
    peft_model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    tokenizer: Any = None,
    adapter_name: str | None = None,
) -> Path:
    """Save only the adapter of a PeftModel (a few MB) to a NEW folder.

    ``adapter_name`` picks one adapter (default: the active one); it is written at the top of
    the folder so ``PeftModel.from_pretrained(base, path)`` finds it.

    Raises:
        OutputExistsError: ``path`` is not empty and ``overwrite`` is False.
        TypeError: ``peft_model`` is not a PeftModel.

    >>> save_adapter(peft_model, "out/adapter")   # doctest: +SKIP
    PosixPath('out/adapter')
    """
    if not _is_peft_model(peft_model):
        raise TypeError(
            f"save_adapter needs a PeftModel, got {type(peft_model).__name__}. To save a merged model "
            "use save_merged()."
        )
    name = adapter_name or peft_model.active_adapter  # type: ignore[attr-defined]

    def write(tmp: Path) -> None:
        peft_model.save_pretrained(str(tmp), selected_adapters=[name])  # type: ignore[operator]
        sub = tmp / name
        if name != "default" and sub.is_dir():  # peft nests non-default adapters; flatten
            for p in sub.iterdir():
                p.rename(tmp / p.name)
            sub.rmdir()
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))

    return _save_atomically(path, overwrite, write)


# --------------------------------------------------------------------------------------------
# what a merge keeps: dequantized weights, merge_with_retention, effect_retained
# (moved here from course_utils/quantization.py, which only configures and inspects bitsandbytes)
# --------------------------------------------------------------------------------------------
__all__ += ["MergeRetention", "dequantized_weight", "effect_retained", "merge_with_retention"]


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
        _quiet_bitsandbytes()
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
    _quiet_bitsandbytes()
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
