"""Plan training memory before you download weights.

`estimate_training_memory(config, recipe)` predicts the peak GPU memory of one training step
(what `torch.cuda.max_memory_allocated()` reports) from the architecture numbers in a model
config and a `Recipe` (full fine-tuning, LoRA, QLoRA, 8-bit LoRA; dtype, batch, sequence length,
gradient checkpointing, optimizer). It does not fit the reference table: every term models one
mechanism of transformers' Llama code, peft's LoRA layers, bitsandbytes and torch autocast, and the
comment beside each term says which. `benchmarks/planner_vs_reference.py` checks it against peak
memory measured on an H200 (`data/reference/`); all eight recipes land within 15%.

Any decoder: the shapes are read from an empty (meta-device) model built from the config, so
parameter counts, trainable counts (fused projections such as Phi-3's `qkv_proj`, GPT-2's `Conv1D`,
biases, norms with biases, tied or untied heads, grouped- or multi-query attention) and the
weight, gradient and optimizer terms are exact for every architecture transformers can build
(tests/test_architectures.py checks them against real byte counts). The activation terms model
Llama's code path; for other layer designs (LayerNorm, plain GELU MLPs, parallel attention/MLP
blocks) the estimate says in one sentence that it is approximate (`MemoryEstimate.notes`), and a
config transformers cannot build is estimated as a Llama-shaped decoder of its sizes, marked so.

Assumptions (those of the reference measurement and of `Trainer(bf16=True)`): for the activations
a Llama-style decoder (RMSNorm, rotary embeddings, SwiGLU MLP), `attn_implementation="sdpa"` with a
flash/memory-efficient kernel (no T x T attention matrix is kept), labels on every token,
`optimizer.zero_grad(set_to_none=True)`, LoRA adapters in float32 (peft's default
`autocast_adapter_dtype=True`), QLoRA / 8-bit LoRA prepared with
`peft.prepare_model_for_kbit_training` (it casts the non-quantized weights to float32).

The terms themselves live in `course_utils.memory_terms` (one function per mechanism), the
architecture's numbers in `course_utils.model_shape` and the `Recipe` in `course_utils.recipe`. Also
re-exported here: `load_config`, `list_configs` and `random_model_from_config`, so a learner can
build a random-weight model of the real shape and measure it before downloading anything.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from course_utils.memory_terms import (
    activation_bytes_per_token,
    autocast_weight_copy_bytes,
    dora_weight_copy_bytes,
    gradient_bytes,
    logits_bytes,
    norm_bytes_per_token,
    optimizer_bytes,
    parameter_counts,
    precisions,
    weight_bytes,
)
from course_utils.model_shape import (  # load_config & co re-exported: the notebooks import them from here
    CONFIG_DIR,
    ModelShape,
    adapted_targets,
    list_configs,
    load_config,
    random_model_from_config,
)
from course_utils.recipe import DTYPE_BYTES, Recipe  # Recipe re-exported too
from course_utils.resources import data_dir
from course_utils.sharding import per_gpu_terms, smallest_gpu_count
from course_utils.tables import Html, html_table

__all__ = [
    "Recipe",
    "MemoryEstimate",
    "FitTable",
    "estimate_training_memory",
    "fit_table",
    "load_config",
    "list_configs",
    "random_model_from_config",
    "CONFIG_DIR",
    "REFERENCE_PATH",
    "reference_recipes",
    "compare_with_reference",
]

GiB = 2**30
REFERENCE_PATH = data_dir("reference") / "h200_smollm2-1.7b.json"


# --------------------------------------------------------------------------- estimate


@dataclass
class MemoryEstimate:
    """Predicted peak training memory, split into weights, trainable state, activations and logits.

    The split is the one at the moment of the peak (``peak_phase``); ``phases`` gives the total at
    each candidate moment. ``suggestions`` names knobs that make the recipe fit on GPUs it does
    not fit (filled in by `fit_table` and by `estimate_training_memory(..., gpu_gib=...)`).

    >>> est = estimate_training_memory("smollm2-135m", Recipe(batch_size=1, seq_len=128))
    >>> est.fits(16)
    True
    """

    recipe: Recipe
    model: str
    n_params: int
    trainable_params: int
    weights_bytes: int
    trainable_state_bytes: int
    activations_bytes: int
    logits_bytes: int
    peak_phase: str
    phases: dict[str, int]
    details: dict[str, int]
    suggestions: dict[float, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def approximate(self) -> bool:
        """True when the planner could not model part of this architecture (``notes`` says what)."""
        return bool(self.notes)

    @property
    def peak_bytes(self) -> int:
        return self.weights_bytes + self.trainable_state_bytes + self.activations_bytes + self.logits_bytes

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GiB

    def required_gib(self, overhead_gib: float = 1.0, fragmentation: float = 0.05) -> float:
        """Peak plus what the allocator and CUDA context need beyond ``max_memory_allocated``."""
        return self.peak_gib * (1.0 + fragmentation) + overhead_gib

    def fits(self, gpu_gib: float, overhead_gib: float = 1.0, fragmentation: float = 0.05) -> bool:
        """True if the peak, plus ~5% allocator slack and ~1 GiB CUDA context, fits in ``gpu_gib``."""
        return self.required_gib(overhead_gib, fragmentation) <= gpu_gib

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "recipe": self.recipe.to_dict(),
            "n_params": self.n_params,
            "trainable_params": self.trainable_params,
            "weights_GiB": round(self.weights_bytes / GiB, 3),
            "trainable_state_GiB": round(self.trainable_state_bytes / GiB, 3),
            "activations_GiB": round(self.activations_bytes / GiB, 3),
            "logits_GiB": round(self.logits_bytes / GiB, 3),
            "peak_GiB": round(self.peak_gib, 3),
            "peak_phase": self.peak_phase,
            "phases_GiB": {k: round(v / GiB, 3) for k, v in self.phases.items()},
            "details_GiB": {k: round(v / GiB, 4) for k, v in self.details.items()},
            "suggestions": {str(k): v for k, v in self.suggestions.items()},
            "approximate": self.approximate,
            "notes": list(self.notes),
        }

    def _rows(self) -> list[tuple[str, float]]:
        return [
            ("weights", self.weights_bytes / GiB),
            ("trainable state (grads + optimizer)", self.trainable_state_bytes / GiB),
            ("activations", self.activations_bytes / GiB),
            ("logits / loss", self.logits_bytes / GiB),
            ("peak", self.peak_gib),
        ]

    def __repr__(self) -> str:
        lines = [
            f"MemoryEstimate({self.model}, {self.recipe.name}): peak {self.peak_gib:.2f} GiB at {self.peak_phase}"
            + (" (approximate)" if self.approximate else ""),
            f"  trainable {self.trainable_params:,} of {self.n_params:,} parameters "
            f"({100 * self.trainable_params / max(self.n_params, 1):.2f}%)",
        ]
        lines += [f"  {k:<38} {v:8.2f} GiB" for k, v in self._rows()]
        lines += [f"  approximate: {note}" for note in self.notes]
        for gpu, knobs in self.suggestions.items():
            lines.append(f"  to fit {gpu:g} GiB: " + ("; ".join(knobs) if knobs else "no single knob is enough"))
        return "\n".join(lines)

    __str__ = __repr__

    def _repr_html_(self) -> str:
        table = html_table(["part", "GiB"], [(k, f"{v:.2f}") for k, v in self._rows()], align=["left", "right"])
        sugg = "".join(
            f"<li>to fit {gpu:g} GiB: {html.escape('; '.join(k) if k else 'no single knob is enough')}</li>"
            for gpu, k in self.suggestions.items()
        )
        return (
            f"<div><b>{html.escape(self.model)}</b> &mdash; {html.escape(str(self.recipe.name))}: "
            f"peak {self.peak_gib:.2f} GiB at {html.escape(self.peak_phase)}; trainable "
            f"{self.trainable_params:,} / {self.n_params:,}"
            f"{table}"
            + "".join(f"<p><i>approximate: {html.escape(n)}</i></p>" for n in self.notes)
            + (f"<ul>{sugg}</ul>" if sugg else "")
            + "</div>"
        )


def _model_name(config: Any) -> str:
    return (
        str(getattr(config, "_name_or_path", "") or getattr(config, "model_type", "model")).rstrip("/").split("/")[-1]
    )


def estimate_training_memory(config: Any, recipe: Recipe, gpu_gib: float | None = None) -> MemoryEstimate:
    """Estimate peak GPU memory of a training step (what ``torch.cuda.max_memory_allocated`` reports).

    ``config`` is anything `load_config` accepts. If ``gpu_gib`` is given and the recipe does not
    fit, ``suggestions[gpu_gib]`` lists the single knobs that would make it fit.

    >>> est = estimate_training_memory("smollm2-1.7b", Recipe(method="lora", target_modules=["q_proj", "v_proj"]))
    >>> round(est.peak_gib)
    14
    """
    config = load_config(config)
    s = ModelShape.from_config(config)
    est = _estimate(s, recipe, _model_name(config))
    if gpu_gib is not None and not est.fits(gpu_gib):
        est.suggestions[gpu_gib] = _suggest(s, recipe, gpu_gib, est.model)
    return est


# --------------------------------------------------------------------------- the sum


def _peak(
    weights: int, grads: int, opt_state: int, opt_temp: int, acts: int, logits: int, recompute: int | None
) -> tuple[dict[str, int], str, tuple[int, int, int, int]]:
    """The candidate peaks, the largest one, and its split into (weights, trainable state, activations, logits).

    Optimizer states exist from step 2 on; gradients are None during the forward pass.
    """
    phases = {
        "start of backward": weights + opt_state + acts + logits,
        "optimizer step": weights + grads + opt_state + opt_temp,
    }
    if recompute is not None:
        phases["backward recompute"] = recompute
    peak_phase = max(phases, key=phases.get)  # type: ignore[arg-type]
    if peak_phase == "start of backward":
        return phases, peak_phase, (weights, opt_state, acts, logits)
    if peak_phase == "optimizer step":
        return phases, peak_phase, (weights, grads + opt_state + opt_temp, 0, 0)
    assert recompute is not None
    return phases, peak_phase, (weights, opt_state + grads, recompute - weights - opt_state - grads, 0)


def _estimate(s: ModelShape, rc: Recipe, model: str) -> MemoryEstimate:
    """Sum the terms at each moment a peak can happen; the largest is the estimate."""
    tokens = rc.batch_size * rc.seq_len
    full = rc.method == "full"
    notes = list(s.notes)
    targets = [] if full else adapted_targets(rc, s, notes)
    counts = parameter_counts(s, rc, targets)

    d: dict[str, int] = dict(weight_bytes(s, rc, counts))
    weights = sum(d.values())
    grads = gradient_bytes(rc, counts.trainable)
    opt_state, opt_temp = optimizer_bytes(rc, counts.trainable)
    d["grads"], d["optimizer state"], d["optimizer step temporaries"] = grads, opt_state, opt_temp

    if rc.sharding != "none":  # what ONE of n_gpus GPUs holds under DDP / FSDP / ZeRO-3 (course_utils/sharding.py)
        sh = per_gpu_terms(
            rc.n_gpus,
            rc.sharding,
            weights=weights,
            grads=grads,
            opt_state=opt_state,
            opt_temp=opt_temp,
            root_weights=d["weights: embeddings, norms, head"],
            layers=s.layers,
        )
        d["per GPU: weights (own shard)"], d["per GPU: grads"], d["per GPU: optimizer state"] = (
            sh.weights,
            sh.grads,
            sh.opt_state,
        )
        d["per GPU: gathered weights (FSDP/ZeRO-3 units)"], d["per GPU: DDP gradient buckets"] = sh.gathered, sh.buckets
        weights, grads, opt_state, opt_temp = sh.weights + sh.gathered + sh.buckets, sh.grads, sh.opt_state, sh.opt_temp

    layer_tok = activation_bytes_per_token(s, rc, targets)
    d["activations per layer"] = layer_tok * tokens
    # Final norm + lm_head input (saved when lm_head is trainable).
    final_tok = norm_bytes_per_token(s, rc) + (precisions(rc).compute * s.hidden if full else 0)
    weight_copies = autocast_weight_copy_bytes(s, rc, counts)
    dora_copies = dora_weight_copy_bytes(s, rc, targets)  # 0 unless DoRA with dropout (memory_terms)
    logits = logits_bytes(s, rc)
    d["logits (loss)"] = logits

    if rc.gradient_checkpointing:
        # Checkpointing (train mode only) keeps just each decoder layer's input hidden states ...
        ckpt = s.layers * precisions(rc).residual * s.hidden * tokens
        # ... fp32 trainable weights are still held in autocast's cache during the forward pass ...
        fwd_cache = 2 * counts.linear if (full and rc.autocast and DTYPE_BYTES[rc.dtype] == 4) else 0
        head_copy = 2 * s.vocab * s.hidden if weight_copies else 0
        acts_at_logits = ckpt + final_tok * tokens + max(fwd_cache, head_copy)
        # ... and recomputes one layer at a time in backward (its activations plus its 16-bit
        # weight copies), while gradients accumulate.
        quantized = rc.method in ("qlora", "lora-8bit")
        layer_copies = 2 * counts.linear_per_layer if weight_copies and not quantized else 0
        recompute = weights + opt_state + grads + ckpt + layer_tok * tokens + layer_copies + dora_copies // s.layers
        d["checkpointed layer inputs"] = ckpt
    else:
        acts_at_logits = s.layers * layer_tok * tokens + final_tok * tokens + weight_copies + dora_copies
        recompute = 0
    d["16-bit weight copies (autocast)"] = weight_copies
    if dora_copies:
        d["DoRA weight copies (dropout)"] = dora_copies

    phases, peak_phase, split = _peak(
        weights, grads, opt_state, opt_temp, acts_at_logits, logits, recompute if rc.gradient_checkpointing else None
    )
    return MemoryEstimate(
        recipe=rc,
        model=model,
        n_params=counts.total,
        trainable_params=counts.trainable,
        weights_bytes=split[0],
        trainable_state_bytes=split[1],
        activations_bytes=split[2],
        logits_bytes=split[3],
        peak_phase=peak_phase,
        phases=phases,
        details=d,
        notes=notes,
    )


def _knobs(rc: Recipe) -> list[tuple[str, Recipe]]:
    knobs: list[tuple[str, Recipe]] = []
    if not rc.gradient_checkpointing:
        knobs.append(("gradient_checkpointing=True", rc.replace(gradient_checkpointing=True)))
    b = rc.batch_size // 2
    while b >= 1:
        knobs.append((f"batch_size={b}", rc.replace(batch_size=b)))
        b //= 2
    if rc.method == "full":
        knobs.append(
            (
                "method='lora' (bfloat16, all-linear)",
                rc.replace(method="lora", dtype="bfloat16", target_modules="all-linear"),
            )
        )
    if rc.method in ("full", "lora"):
        knobs.append(
            (
                "method='qlora'",
                rc.replace(method="qlora", target_modules="all-linear" if rc.method == "full" else rc.target_modules),
            )
        )
    if rc.method == "full" and rc.optimizer == "adamw":
        knobs.append(("optimizer='adamw-8bit'", rc.replace(optimizer="adamw-8bit")))
    return knobs


def _suggest(s: ModelShape, rc: Recipe, gpu_gib: float, model: str) -> list[str]:
    """Re-estimate with each single knob changed; keep those that fit (largest batch only)."""
    out: list[str] = []
    batch_done = False
    for label, alt in _knobs(rc):
        if label.startswith("batch_size="):
            if batch_done:
                continue
            if _estimate(s, alt, model).fits(gpu_gib):
                out.append(label + " (or gradient accumulation)")
                batch_done = True
            continue
        if _estimate(s, alt, model).fits(gpu_gib):
            out.append(label)
    if not out and not rc.gradient_checkpointing:
        both = rc.replace(gradient_checkpointing=True, method="qlora" if rc.method != "lora-8bit" else rc.method)
        if _estimate(s, both, model).fits(gpu_gib):
            out.append("gradient_checkpointing=True together with method='qlora'")
    # More GPUs: the smallest count that fits when FSDP splits the model (course_utils/sharding.py).
    split = rc.sharding if rc.sharding in ("fsdp", "zero3") else "fsdp"
    n = smallest_gpu_count(
        lambda k: k > rc.n_gpus and _estimate(s, rc.replace(n_gpus=k, sharding=split), model).fits(gpu_gib)
    )
    if n is not None:
        out.append(f"n_gpus={n}, sharding='{split}'")
    return out


# --------------------------------------------------------------------------- fit table


@dataclass
class FitTable:
    """Does each recipe fit on each GPU size? Rows of estimates, columns of GPU memory (GiB, as torch counts it).

    >>> t = fit_table("smollm2-135m", [Recipe(method="full", dtype="float32")], gpus=(16, 80))
    >>> t.to_dict()["rows"][0]["fits"]["80"]
    True
    """

    model: str
    gpus: tuple[float, ...]
    estimates: list[MemoryEstimate]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "gpus_GiB": list(self.gpus),
            "rows": [
                {
                    "recipe": e.recipe.name,
                    "peak_GiB": round(e.peak_gib, 2),
                    "fits": {f"{g:g}": e.fits(g) for g in self.gpus},
                    "suggestions": {f"{g:g}": k for g, k in e.suggestions.items()},
                }
                for e in self.estimates
            ],
        }

    def __repr__(self) -> str:
        width = max([len(str(e.recipe.name)) for e in self.estimates] + [6])
        head = f"{'recipe':<{width}}  {'peak GiB':>8}  " + "  ".join(f"{g:>4g}GiB" for g in self.gpus)
        lines = [f"Fit table for {self.model} (peak + ~5% + 1 GiB context must fit)", head, "-" * len(head)]
        for e in self.estimates:
            cells = "  ".join(f"{'yes' if e.fits(g) else 'no':>7}" for g in self.gpus)
            lines.append(f"{str(e.recipe.name):<{width}}  {e.peak_gib:8.2f}  {cells}")
        for e in self.estimates:
            for g, knobs in e.suggestions.items():
                lines.append(
                    f"  {e.recipe.name} on {g:g} GiB: " + ("; ".join(knobs) if knobs else "no single knob is enough")
                )
        return "\n".join(lines)

    __str__ = __repr__

    def _repr_html_(self) -> str:
        rows = [
            (
                str(e.recipe.name),
                f"{e.peak_gib:.2f}",
                *(Html("&#10003;" if e.fits(g) else "&#10007;") for g in self.gpus),
            )
            for e in self.estimates
        ]
        table = html_table(
            ["recipe", "peak GiB", *(f"{g:g} GiB" for g in self.gpus)],
            rows,
            align=["left", "right", *["center"] * len(self.gpus)],
        )
        notes = "".join(
            f"<li>{html.escape(str(e.recipe.name))} on {g:g} GiB: "
            f"{html.escape('; '.join(k) if k else 'no single knob is enough')}</li>"
            for e in self.estimates
            for g, k in e.suggestions.items()
        )
        return (
            f"<div><b>Fit table for {html.escape(self.model)}</b> (peak + ~5% + 1 GiB context must fit)"
            f"{table}" + (f"<ul>{notes}</ul>" if notes else "") + "</div>"
        )


def fit_table(config: Any, recipes: Iterable[Recipe], gpus: Sequence[float] = (16, 24, 40, 80)) -> FitTable:
    """Estimate every recipe and say whether it fits each GPU; name the knobs that would make it fit.

    A recipe that does not fit a GPU gets, for that GPU, the single changes (gradient
    checkpointing, a smaller batch, LoRA instead of full, QLoRA, 8-bit AdamW) that make it fit,
    found by re-estimating with each change.

    >>> print(fit_table("smollm2-360m", [Recipe(method="lora")], gpus=(24,)))  # doctest: +ELLIPSIS
    Fit table for smollm2-360m ...
    """
    config = load_config(config)
    s = ModelShape.from_config(config)
    name = _model_name(config)
    estimates = []
    for rc in recipes:
        if not isinstance(rc, Recipe):
            raise TypeError(f"fit_table expects Recipe objects, got {type(rc).__name__}.")
        est = _estimate(s, rc, name)
        for g in gpus:
            if not est.fits(g):
                est.suggestions[g] = _suggest(s, rc, g, name)
        estimates.append(est)
    return FitTable(model=name, gpus=tuple(gpus), estimates=estimates)


# --------------------------------------------------------------------------- reference check


def reference_recipes(batch_size: int = 8, seq_len: int = 512) -> dict[str, Recipe]:
    """The eight recipes measured in ``data/reference/h200_smollm2-1.7b.json``, keyed by its row names.

    >>> reference_recipes()["lora_r16_qv"].target_modules
    ['q_proj', 'v_proj']
    """
    shape = dict(batch_size=batch_size, seq_len=seq_len, r=16, lora_alpha=32, lora_dropout=0.05)
    return {
        "fft_float32": Recipe(method="full", dtype="float32", **shape),
        "fft_bfloat16": Recipe(method="full", dtype="bfloat16", **shape),
        "lora_r16_qv": Recipe(method="lora", target_modules=["q_proj", "v_proj"], **shape),
        "lora_r16_all": Recipe(method="lora", **shape),
        "lora_r16_all_gc": Recipe(method="lora", gradient_checkpointing=True, **shape),
        "lora_r16_all_nodrop": Recipe(method="lora", **{**shape, "lora_dropout": 0.0}),
        "qlora4_r16_all": Recipe(method="qlora", **shape),
        "qlora4_r16_all_gc": Recipe(method="qlora", gradient_checkpointing=True, **shape),
    }


def compare_with_reference(path: str | Path = REFERENCE_PATH) -> list[dict[str, Any]]:
    """Estimate each measured reference recipe; rows of name, estimate, measurement, relative error.

    >>> max(abs(r["rel_error"]) for r in compare_with_reference()) < 0.15
    True
    """
    ref = json.loads(Path(path).read_text())
    recipes = reference_recipes(ref["shape"]["batch"], ref["shape"]["seq_len"])
    rows = []
    for name, measured in ref["train"].items():
        est = estimate_training_memory("smollm2-1.7b", recipes[name])
        rows.append(
            {
                "name": name,
                "estimate_GiB": round(est.peak_gib, 3),
                "measured_GiB": measured["peak_GiB"],
                "rel_error": round(est.peak_gib / measured["peak_GiB"] - 1.0, 4),
                "peak_phase": est.peak_phase,
                "trainable_estimate": est.trainable_params,
                "trainable_measured": measured["trainable"],
            }
        )
    return rows
