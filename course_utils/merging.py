"""Merge a LoRA adapter into its base safely, and save the result without clobbering anything.

- :func:`safe_merge` merges on the model's device and, on CUDA out-of-memory, finishes the merge
  layer by layer (delta computed on the CPU, added in row chunks) instead of crashing half-way;
  it refuses a 4-bit/8-bit quantized base (see :class:`QuantizedMergeError`) and reports dtypes.
- :func:`dequantize_for_merge` is the right way to merge a QLoRA adapter: dequantize (or reload)
  the base in bfloat16/float32, attach the adapter, merge.
- :func:`validate_merge` captures the adapter model's outputs, merges and compares in one call;
  :func:`round_trip` saves a model or adapter, reloads it and compares the copy with the
  original. The measuring itself is :mod:`course_utils.validation`'s job.

The neighbours this module builds on, and re-exports for the notebooks: loading an adapter with a
check (:mod:`course_utils.adapters`: ``load_adapter_checked``), saving without clobbering
(:mod:`course_utils.saving`: ``save_merged``, ``save_adapter``, ``OutputExistsError``), and what a
merge keeps (:mod:`course_utils.retention`: ``merge_with_retention``, ``effect_retained``).

>>> from course_utils.merging import safe_merge, save_merged   # doctest: +SKIP
>>> merged, info = safe_merge(peft_model)                      # doctest: +SKIP
>>> save_merged(merged, "out/merged", tokenizer=tokenizer)     # doctest: +SKIP
"""

from __future__ import annotations

import gc
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# Re-exported: the notebooks and tests import these from course_utils.merging.
from course_utils.adapters import (
    AdapterBaseMismatchError,
    AdapterFileError,
    is_peft_model,
    load_adapter_checked,
    lora_layers,
    read_adapter_folder,
)
from course_utils.devices import model_device, model_dtype
from course_utils.quantization import prevent_cpu_repack, quantization_of, quiet_bitsandbytes
from course_utils.reference import CaptureOptions, ReferenceOutputs, capture_reference, describe_model
from course_utils.retention import MergeRetention, dequantized_weight, effect_retained, merge_with_retention
from course_utils.saving import OutputExistsError, save_adapter, save_merged
from course_utils.tolerance import Tolerance
from course_utils.validation import ValidationReport, compare_to_reference

__all__ = [
    "AdapterBaseMismatchError",
    "AdapterFileError",
    "CaptureOptions",
    "MergeInfo",
    "MergeRetention",
    "OutputExistsError",
    "QuantizedMergeError",
    "dequantize_for_merge",
    "dequantized_weight",
    "effect_retained",
    "load_adapter_checked",
    "merge_with_retention",
    "quantization_of",
    "round_trip",
    "safe_merge",
    "save_adapter",
    "save_merged",
    "validate_merge",
]


class QuantizedMergeError(RuntimeError):
    """Merging into a 4-bit/8-bit quantized base would round the adapter's delta away."""


def _dtypes(tensors: Any) -> set[torch.dtype]:
    return {t.dtype for t in tensors if t.is_floating_point()}


def _set_names(dts: set[torch.dtype]) -> str:
    return "/".join(sorted(str(d).replace("torch.", "") for d in dts)) or "none"


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
            f"adapter weights are {_set_names(ad_dt)} but the base layers are {_set_names(base_dt)}: "
            f"the delta is rounded to {_set_names(base_dt)} when merged (expected, e.g. a float32 "
            "adapter trained on a bfloat16 base); the merged model keeps the base dtype."
        )
    return base_dt, ad_dt, notes


def _merge_layerwise(
    peft_model: torch.nn.Module, adapter_names: list[str] | None, check_finite: bool, chunk_bytes: int = 64 * 2**20
) -> int:
    """Merge every not-yet-merged LoRA layer: delta on the CPU in float32, added in row chunks."""
    from peft.tuners.lora import Linear as LoraLinear

    n = 0
    for name, module in lora_layers(peft_model):
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


def _merge_after_oom(
    peft_model: torch.nn.Module,
    adapter_names: list[str] | None,
    check_finite: bool,
    fallback: str,
    info: MergeInfo,
    verbose: bool,
) -> torch.nn.Module:
    """Finish a merge that ran out of GPU memory: layer by layer in place, or on the CPU; updates ``info``."""
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
        info.strategy = "layer-by-layer merge (CPU delta, chunked add)"
    else:
        if verbose:
            print("Out of GPU memory while merging: moving the model to the CPU and merging there.")
        peft_model.to("cpu")
        _merge_layerwise(peft_model, adapter_names, check_finite)
        info.strategy = "merge on CPU (model left on the CPU; .to('cuda') it if it fits)"
        info.device = "cpu"
    return peft_model.unload()  # type: ignore[operator]


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
    if not is_peft_model(peft_model):
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
    layers = lora_layers(peft_model)
    base_dt, ad_dt, notes = _check_dtypes(peft_model, layers)
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    if q is not None:
        notes.append(
            f"merged into a {q} base (allow_quantized=True): the delta was re-quantized with the weights (rounding error up to one step per weight)."
        )
    device = model_device(peft_model)
    n_layers = sum(1 for _, m in layers if hasattr(m, "merge"))
    info = MergeInfo(
        strategy="merge_and_unload",
        device=str(device),
        base_dtypes=_set_names(base_dt),
        adapter_dtypes=_set_names(ad_dt),
        n_layers=n_layers,
        warnings=notes,
    )
    t0 = time.perf_counter()
    try:
        merged = peft_model.merge_and_unload(safe_merge=check_finite, adapter_names=adapter_names)  # type: ignore[operator]
    except torch.OutOfMemoryError:
        if fallback is None:
            raise
        merged = _merge_after_oom(peft_model, adapter_names, check_finite, fallback, info, verbose)
    info.seconds = time.perf_counter() - t0
    merged_dt = _dtypes(merged.parameters())
    info.merged_dtypes = _set_names(merged_dt)
    if base_dt and not base_dt <= merged_dt:
        info.warnings.append(f"the merged weights are {info.merged_dtypes}, the base was {info.base_dtypes}.")
    if verbose:
        print(info.message)
    return merged, info


def _adapter_state(peft_model: torch.nn.Module) -> tuple[str, Any, dict[str, torch.Tensor]]:
    quiet_bitsandbytes()
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
    quiet_bitsandbytes()
    from peft import PeftModel, set_peft_model_state_dict

    prevent_cpu_repack(model)  # a 4-bit weight bitsandbytes repacked for the CPU dequantizes to garbage
    state = config = None
    name = "default"
    if adapter is not None and not is_peft_model(model):
        read_adapter_folder(Path(adapter))  # a damaged adapter fails now, before the base is changed
    if is_peft_model(model):
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


def validate_merge(
    peft_model: torch.nn.Module,
    inputs: Any,
    tokenizer: Any = None,
    *,
    tolerance: Tolerance | str | torch.dtype | None = "auto",
    merge_fn: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    verbose: bool = True,
    **capture: Any,
) -> tuple[torch.nn.Module, ValidationReport]:
    """Capture the adapter model's outputs, merge it, and compare: the whole workflow in one call.

    :func:`course_utils.validation.capture_reference` runs BEFORE the merge, because
    ``merge_and_unload()`` changes the base in place. Merges with :func:`safe_merge`
    (out-of-memory fallback, quantized-base guard) unless ``merge_fn`` is given (it receives the
    PeftModel and returns the merged model), then judges the merged model with
    :func:`course_utils.validation.compare_to_reference`. The PeftModel is consumed: its base now
    holds the merged weights. ``capture``: the fields of
    :class:`course_utils.reference.CaptureOptions` (``max_new_tokens``, ``batch_size``,
    ``max_length``, ``max_examples``) or ``options=CaptureOptions(...)``.

    Returns:
        ``(merged_model, report)``.

    >>> merged, report = validate_merge(peft_model, ["Hello"], tokenizer)   # doctest: +SKIP
    >>> report.passed                                                       # doctest: +SKIP
    True
    """
    ref = capture_reference(peft_model, inputs, tokenizer, **capture)
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
    **capture: Any,
) -> ValidationReport:
    """Save ``model`` to ``path``, load it back, and report whether the copy reproduces its outputs.

    A PeftModel is saved with :func:`save_adapter` and reloaded as a second adapter on the same
    base (no second copy of the base; the round-trip adapter is deleted afterwards). Any other
    model is saved with :func:`save_merged` and reloaded with
    ``AutoModelForCausalLM.from_pretrained`` in its dtype, on its device. ``capture`` as in
    :func:`validate_merge`.

    Returns:
        The :class:`course_utils.validation.ValidationReport` of the reloaded copy against the
        original (``.passed``; a float32 copy should match exactly).

    Raises:
        OutputExistsError: ``path`` is not empty and ``overwrite`` is False.
        AdapterFileError: the saved adapter can't be read back.

    >>> round_trip(merged, "out/merged", ["Hello"], tokenizer).passed   # doctest: +SKIP
    True
    """
    ref: ReferenceOutputs = capture_reference(model, inputs, tokenizer, **capture)
    if is_peft_model(model):
        original = model.active_adapter  # type: ignore[attr-defined]
        save_adapter(model, path, overwrite=overwrite, adapter_name=original)
        read_adapter_folder(Path(path))  # a damaged file fails here, naming the file
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
    dtype = model_dtype(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    reloaded.to(model_device(model))
    report = compare_to_reference(reloaded, ref, tolerance=tolerance, title="reloaded model vs original")
    report.candidate = f"{describe_model(reloaded)} reloaded from {path}"
    del reloaded
    return report
