"""Quantized loading (bitsandbytes 4-bit / 8-bit) and what quantization does to a LoRA merge.

Notebook 6 (QLoRA) and notebook 3 (merging pitfalls) use these helpers:

- :func:`bnb_4bit_config` / :func:`bnb_8bit_config`: a ``BitsAndBytesConfig`` that works on a GPU
  *and* on a CPU (bitsandbytes >= 0.50 runs 4-bit and 8-bit layers on the CPU); the 4-bit compute
  dtype is bfloat16 on a GPU that supports it and float32 on a CPU (bf16 matmuls crawl on CPUs
  without AVX-512/AMX).
- :func:`nf4_weight_bytes` / :func:`int8_weight_bytes`: the bytes a quantized weight matrix
  occupies, absmax overhead included (matches what bitsandbytes allocates).
- :func:`dequantized_weight`: the float weight a (quantized or plain) linear layer computes with.
- :func:`merge_with_retention`: merge a LoRA adapter layer by layer and measure how much of
  each layer's delta ``B @ A * scaling`` really arrived in the stored weights (all of it in
  float32; a fraction in a 4-bit base, which re-quantizes the sum).
- :func:`effect_retained`: the same question asked of the outputs: how far a candidate's logits
  moved from the base's towards the adapter model's.
- :func:`requires_cuda`: ``False`` plus ONE printed sentence when there is no CUDA GPU, so GPU-only
  notebook cells skip with a deterministic message.
- :func:`measure_training_peak`: peak CUDA memory of a few training steps of a recipe
  (full fine-tuning, LoRA, QLoRA, with or without gradient checkpointing).

>>> round(nf4_weight_bytes(2048, 8192) / 2**20, 2)
8.25
"""
from __future__ import annotations

import html
import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "MergeRetention",
    "bnb_4bit_config",
    "bnb_8bit_config",
    "compute_dtype_for",
    "dequantized_weight",
    "effect_retained",
    "int8_weight_bytes",
    "measure_training_peak",
    "merge_with_retention",
    "nf4_weight_bytes",
    "requires_cuda",
]


def _quiet_bitsandbytes() -> None:
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def _bnb_config_class() -> Any:
    _quiet_bitsandbytes()
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
def compute_dtype_for(device: str | torch.device = "auto") -> torch.dtype:
    """The dtype 4-bit layers should compute in: bfloat16 on a GPU that has it, else float16 on a GPU, float32 on CPU.

    >>> compute_dtype_for("cpu")
    torch.float32
    """
    from course_utils.loading import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dev.type == "mps":
        return torch.float16
    return torch.float32


def bnb_4bit_config(
    device: str | torch.device = "auto",
    *,
    quant_type: str = "nf4",
    double_quant: bool = True,
    compute_dtype: torch.dtype | str | None = None,
) -> Any:
    """A 4-bit ``BitsAndBytesConfig`` (the QLoRA recipe: NF4, double quantization).

    Args:
        device: where the model will run; picks the compute dtype when ``compute_dtype`` is None.
        quant_type: ``"nf4"`` (normal-float, the QLoRA default) or ``"fp4"``.
        double_quant: also quantize the per-block absmax constants (saves ~0.37 bit per weight).
        compute_dtype: dtype the weights are dequantized to for each matmul; default
            :func:`compute_dtype_for` (bfloat16 on a GPU, float32 on a CPU).

    >>> cfg = bnb_4bit_config("cpu")
    >>> cfg.bnb_4bit_quant_type, cfg.bnb_4bit_compute_dtype
    ('nf4', torch.float32)
    """
    if quant_type not in ("nf4", "fp4"):
        raise ValueError(f"quant_type must be 'nf4' or 'fp4', got {quant_type!r}.")
    if isinstance(compute_dtype, str):
        compute_dtype = getattr(torch, compute_dtype)
    cls = _bnb_config_class()
    return cls(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype or compute_dtype_for(device),
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
# dequantizing and merging with a measurement
# --------------------------------------------------------------------------------------------
def dequantized_weight(layer: torch.nn.Module) -> torch.Tensor:
    """The float32 CPU copy of the weight a linear layer computes with (4-bit/8-bit dequantized).

    >>> dequantized_weight(torch.nn.Linear(3, 2)).shape
    torch.Size([2, 3])
    """
    w = layer.weight
    cls = type(w).__name__
    if cls in ("Params4bit", "Int8Params") and (w.dtype in (torch.uint8, torch.int8)):
        _quiet_bitsandbytes()
        from peft.utils.integrations import dequantize_bnb_weight

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
        return {"storage": self.storage, "retained": self.retained, "rel_error": self.rel_error,
                "changed_fraction": self.changed_fraction, "passed": self.passed, "rows": list(self.rows),
                "notes": list(self.notes)}

    def __repr__(self) -> str:
        lines = [
            f"MergeRetention (weights stored as {self.storage}, {len(self.rows)} layers): "
            f"relative error of the stored delta {100 * self.rel_error:.1f}%, projection onto the LoRA delta {100 * self.retained:.1f}%, "
            f"{100 * self.changed_fraction:.1f}% of stored weights changed"
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        color = "#1a7f37" if self.passed else "#cf222e"
        return (f"<div><b style='color:{color}'>{100 * self.retained:.1f}% of the LoRA delta retained</b> "
                f"(weights stored as {html.escape(self.storage)}, {len(self.rows)} layers); relative error "
                f"{100 * self.rel_error:.1f}%, {100 * self.changed_fraction:.1f}% of stored weights changed"
                + "".join(f"<br>note: {html.escape(n)}" for n in self.notes) + "</div>")


def _storage_name(layer: torch.nn.Module) -> str:
    cls = type(layer).__name__
    if cls == "Linear4bit":
        return f"4-bit {getattr(layer.weight, 'quant_type', '')}".strip()
    if cls == "Linear8bitLt":
        return "int8"
    return str(layer.weight.dtype).replace("torch.", "")


def merge_with_retention(peft_model: torch.nn.Module, adapter_name: str | None = None) -> tuple[torch.nn.Module, MergeRetention]:
    """Merge the active LoRA adapter layer by layer, measuring what each layer's stored weight gained.

    Works on any base, quantized ones included (it does what ``merge_and_unload()`` does there,
    without peft's per-layer "may get different generations" warning: the result says it once,
    in numbers). Use it to SEE what a merge into a 4-bit base loses; to deploy a QLoRA adapter,
    use :func:`course_utils.merging.dequantize_for_merge`.

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
            rows.append({"layer": name, "adapter": an, "delta_norm": math.sqrt(d_sq),
                         "retained": layer_dot / d_sq if d_sq else float("nan"),
                         "rel_error": math.sqrt(layer_err / d_sq) if d_sq else float("nan"),
                         "changed_fraction": n_changed / max(before.numel(), 1)})
    if not rows:
        raise ValueError("No unmerged LoRA layers found: was the adapter merged already?")
    merged = peft_model.unload()  # type: ignore[operator]
    storage = "/".join(sorted(storages))
    notes = []
    if any(s.startswith(("4-bit", "int8")) for s in storages):
        notes.append("the base is quantized: the sum W + ΔW was re-quantized, so most of ΔW was rounded away")
    report = MergeRetention(rows=rows, retained=dot / delta_sq if delta_sq else float("nan"),
                            rel_error=math.sqrt(err_sq / delta_sq) if delta_sq else float("nan"),
                            changed_fraction=changed / max(total, 1), storage=storage, notes=notes)
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
        raise ValueError(f"Logit shapes differ: base {tuple(b.shape)}, adapter {tuple(a.shape)}, "
                         f"candidate {tuple(c.shape)}: capture all three on the same inputs.")
    scale = float(torch.linalg.vector_norm(b - a))
    if scale == 0.0:
        raise ValueError("The adapter does not change the logits at all (base == adapter): nothing to retain.")
    return round(1.0 - float(torch.linalg.vector_norm(c - a)) / scale, 6)


# --------------------------------------------------------------------------------------------
# GPU-only cells
# --------------------------------------------------------------------------------------------
def requires_cuda(what: str) -> bool:
    """``True`` if a CUDA GPU is available; otherwise print ONE sentence saying what is skipped.

    The sentence is the same on every CPU machine, so notebooks stay deterministic under nbval.

    >>> requires_cuda("Measuring GPU memory")   # doctest: +SKIP
    Skipped: Measuring GPU memory needs a CUDA GPU (torch.cuda.is_available() is False here).
    False
    """
    if torch.cuda.is_available():
        return True
    print(f"Skipped: {what} needs a CUDA GPU (torch.cuda.is_available() is False here).")
    return False


_RECIPE_METHODS = ("full", "lora", "qlora")


def _build_for_recipe(name: str, method: str, *, r: int, target_modules: Any, gradient_checkpointing: bool,
                      device: torch.device, dtype: torch.dtype) -> tuple[torch.nn.Module, list[torch.nn.Parameter]]:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from course_utils.loading import load_model

    if method == "qlora":
        model = load_model(name, device=device, dtype=dtype, quantization_config=bnb_4bit_config(device))
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model = load_model(name, device=device, dtype=dtype)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if method != "full":
                model.enable_input_require_grads()
    if method != "full":
        cfg = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.05, target_modules=target_modules,
                         task_type="CAUSAL_LM")
        model = get_peft_model(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, params


def measure_training_peak(
    name: str,
    method: str,
    *,
    gradient_checkpointing: bool = False,
    batch_size: int = 8,
    seq_len: int = 512,
    r: int = 16,
    target_modules: Any = "all-linear",
    steps: int = 3,
    device: str | torch.device = "auto",
) -> dict[str, Any]:
    """Peak CUDA memory (GiB) of ``steps`` AdamW training steps on random tokens, like the H200 reference.

    ``method`` is ``"full"`` (all weights trainable), ``"lora"`` or ``"qlora"`` (4-bit NF4 base,
    ``prepare_model_for_kbit_training``); weights in the GPU's 16-bit dtype, bf16/fp16 autocast.
    Needs CUDA for the peak reading (on a CPU the steps run and ``peak_GiB`` is NaN).

    >>> measure_training_peak("course-tiny", "qlora", gradient_checkpointing=True)["peak_GiB"]   # doctest: +SKIP
    0.01
    """
    import gc
    import time

    from course_utils.loading import resolve_device

    if method not in _RECIPE_METHODS:
        raise ValueError(f"method must be one of {_RECIPE_METHODS}, got {method!r}.")
    dev = resolve_device(device)
    dtype = compute_dtype_for(dev)
    on_cuda = dev.type == "cuda"
    gc.collect()
    if on_cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model, params = _build_for_recipe(name, method, r=r, target_modules=target_modules,
                                      gradient_checkpointing=gradient_checkpointing, device=dev, dtype=dtype)
    model.train()
    opt = torch.optim.AdamW(params, lr=1e-5)
    vocab = model.get_input_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (batch_size, seq_len), generator=gen).to(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        with torch.autocast(dev.type, dtype=dtype, enabled=on_cuda):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if on_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if on_cuda else float("nan")
    trainable = sum(p.numel() for p in params)
    del model, params, opt, x
    gc.collect()
    if on_cuda:
        torch.cuda.empty_cache()
    return {"method": method, "gradient_checkpointing": gradient_checkpointing, "peak_GiB": peak,
            "step_s": seconds / steps, "trainable": trainable, "loss": float(loss)}
