"""Validate a merged model against its adapter version, with numbers a learner can read.

Every deployment tutorial says "compare the merged model with the adapter model before you ship
it". This module makes that one call:

- :func:`capture_reference` runs the adapter model ONCE and keeps its next-token logits and
  greedy generations on the CPU (a few MB), so you can merge in place afterwards without holding
  two copies of the model.
- :func:`compare_to_reference` runs the merged model on the same inputs and returns a
  :class:`ValidationReport`: max/mean ``|Δlogit|``, per-token KL divergence, top-1 agreement,
  greedy-generation exact match and perplexity, each with a pass/fail verdict against a
  dtype-aware :class:`Tolerance`.
- :func:`compare_models` compares two live models.

Merging and saving are :mod:`course_utils.merging`'s job: its ``validate_merge`` (capture, merge,
compare in one call) and ``round_trip`` (save, reload, compare) are built on these functions.

Padding positions are masked out of every metric. All comparisons happen in float32 on the CPU,
whatever device or dtype the models use.

>>> import torch
>>> from course_utils.validation import DEFAULT_TOLERANCES
>>> DEFAULT_TOLERANCES[torch.bfloat16].mean_kl
0.005
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.figure import Figure

__all__ = [
    "DEFAULT_TOLERANCES",
    "MetricResult",
    "PreparedInputs",
    "ReferenceOutputs",
    "SameModelError",
    "Tolerance",
    "ValidationError",
    "ValidationReport",
    "VocabularyMismatchError",
    "capture_reference",
    "compare_models",
    "compare_to_reference",
    "prepare_inputs",
    "tolerance_for",
]


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------
class ValidationError(ValueError):
    """Base class for the errors this module raises (a ``ValueError``)."""


class VocabularyMismatchError(ValidationError):
    """The two models (or tokenizers) do not share a vocabulary, so their logits can't be compared."""


class SameModelError(ValidationError):
    """Both sides of a comparison are the same model (same object or the very same weights)."""


# --------------------------------------------------------------------------------------------
# tolerances
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tolerance:
    """Limits that an honest merge stays within, for one dtype.

    ``None`` means "report, don't judge". Relative limits divide by the reference model's logit
    scale (the standard deviation of its logits over the vocabulary, averaged over tokens), so
    they mean the same thing for a flat random model and for a sharp trained one.

    Args:
        name: label shown in reports (usually the dtype).
        max_abs_logit: largest allowed ``max |Δlogit|``; a single outlier, so only judged in float32.
        rel_mean_abs_logit: largest allowed ``mean |Δlogit| / logit scale``.
        rel_max_abs_logit: largest allowed ``max |Δlogit| / logit scale``.
        mean_kl: largest allowed mean per-token KL(reference || candidate), in nats.
        max_kl: largest allowed per-token KL, in nats.
        top1_agreement: smallest allowed fraction of positions with the same argmax token.
        generation_match: smallest allowed fraction of prompts whose greedy generations match exactly.
        rel_perplexity: largest allowed ``|ppl_candidate / ppl_reference - 1|``.
        reason: why these numbers (shown in reports).

    >>> Tolerance(name="mine", mean_kl=1e-4).mean_kl
    0.0001
    """

    name: str = "custom"
    max_abs_logit: float | None = None
    rel_mean_abs_logit: float | None = None
    rel_max_abs_logit: float | None = None
    mean_kl: float | None = None
    max_kl: float | None = None
    top1_agreement: float | None = None
    generation_match: float | None = None
    rel_perplexity: float | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        for key in ("max_abs_logit", "rel_mean_abs_logit", "rel_max_abs_logit", "mean_kl", "max_kl", "rel_perplexity"):
            value = getattr(self, key)
            if value is not None and not value >= 0:
                raise ValueError(f"Tolerance.{key} must be >= 0 or None, got {value!r}.")
        for key in ("top1_agreement", "generation_match"):
            value = getattr(self, key)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"Tolerance.{key} is a fraction in [0, 1], got {value!r}.")

    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain dict."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# How these were chosen (issue 4; numbers in the tolerance reasons). Honest merges: all-linear
# r=16 LoRA with lora_B ~ N(0, 0.02), adapter model vs merged model in the same dtype, measured on
# course-tiny (CPU), on a SmolLM2-1.7B-shaped random model (H200, 24 layers) and on a 2-layer
# SmolLM2-shaped copy (CPU). Wrong merges: one layer's delta off by 1-10%, every delta off by 10%
# (lora_alpha slip), the adapter merged twice, another adapter merged. Rounding noise grows with
# depth, so each limit sits ~3x above the deepest honest merge measured (SmolLM2-1.7B shape) and,
# where the dtype allows, well below the wrong merges. Judged: the metrics that average the
# rounding noise (mean |Δlogit| relative to the logit scale, mean KL, perplexity); the single
# worst token (max |Δ|, max KL) and greedy text are judged only where rounding can't move them.
DEFAULT_TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float32: Tolerance(
        name="float32",
        max_abs_logit=None,
        rel_mean_abs_logit=5e-5,
        rel_max_abs_logit=5e-4,
        mean_kl=1e-8,
        max_kl=1e-6,
        top1_agreement=0.995,
        generation_match=1.0,
        rel_perplexity=1e-4,
        reason=(
            "float32 merges are exact up to summation order: relative mean |Δlogit| 5e-7 on "
            "course-tiny and 5e-6 on the SmolLM2-1.7B shape (H200: max |Δ| 3e-5, top-1 100%), "
            "mean KL ~1e-12. A 1% slip in one layer's delta already gives 5e-5 to 3e-4. If TF32 "
            "matmuls are on (CUDA), float32 is judged with the float16 limits."
        ),
    ),
    torch.float16: Tolerance(
        name="float16",
        rel_mean_abs_logit=0.012,
        rel_max_abs_logit=0.1,
        mean_kl=1e-4,
        max_kl=None,
        top1_agreement=0.95,
        generation_match=None,
        rel_perplexity=0.01,
        reason=(
            "float16 rounds every merged weight to 11 significant bits: relative mean |Δlogit| "
            "7e-4 on course-tiny, 4e-3 on the SmolLM2-1.7B shape (H200: max |Δ| 0.027, top-1 "
            "100%). Catches an adapter merged twice, a wrong adapter, or every delta off by 10% "
            "(0.015-0.2); one layer off by a few percent (~1e-3) is below the rounding. Max KL and "
            "greedy text are reported, not judged."
        ),
    ),
    torch.bfloat16: Tolerance(
        name="bfloat16",
        rel_mean_abs_logit=0.1,
        rel_max_abs_logit=None,
        mean_kl=5e-3,
        max_kl=None,
        top1_agreement=0.8,
        generation_match=None,
        rel_perplexity=0.05,
        reason=(
            "bfloat16 keeps 8 significant bits, so merging moves each weight by up to 0.4%: "
            "relative mean |Δlogit| 7e-3 on course-tiny and 0.034 on the SmolLM2-1.7B shape (H200: "
            "max |Δ| 0.21, top-1 89% on flat random logits). Judged on relative mean |Δ|, mean KL "
            "(honest ~1e-4 to ~1e-3, merged twice or wrong adapter 0.04-0.07) and perplexity. An "
            "error smaller than the rounding (one layer, or every delta, off by 10%) cannot be "
            "seen in bfloat16: merge and validate a float32 copy when that matters."
        ),
    ),
}


def tolerance_for(*dtypes: torch.dtype | str) -> Tolerance:
    """The default tolerance for the least precise of ``dtypes``.

    Comparing a float32 adapter model with a bfloat16 merged model is judged as bfloat16.

    >>> import torch
    >>> tolerance_for(torch.float32, torch.bfloat16).name
    'bfloat16'
    >>> tolerance_for("float16").name
    'float16'
    """
    order = [torch.bfloat16, torch.float16, torch.float32]
    chosen = torch.float32
    for dt in dtypes:
        if isinstance(dt, str):
            dt = getattr(torch, dt.replace("torch.", ""), None)
            if not isinstance(dt, torch.dtype):
                raise ValueError(f"Unknown dtype name {dtypes!r}; use e.g. 'float32', 'float16', 'bfloat16'.")
        if dt not in order:  # float64 and friends are at least as precise as float32
            continue
        if order.index(dt) < order.index(chosen):
            chosen = dt
    return DEFAULT_TOLERANCES[chosen]


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
@dataclass
class PreparedInputs:
    """Token sequences to compare on, unpadded, on the CPU.

    ``sequences`` are scored (logits, KL, perplexity); ``prompts`` are continued greedily.

    >>> p = PreparedInputs(sequences=[[1, 2, 3], [4, 5]])
    >>> p.n_tokens
    5
    """

    sequences: list[list[int]]
    prompts: list[list[int]] | None = None
    pad_token_id: int = 0
    eos_token_id: int | list[int] | None = None
    texts: list[str] | None = None

    def __post_init__(self) -> None:
        if not self.sequences:
            raise ValueError("No inputs to compare on: pass at least one text or token sequence.")
        if any(len(s) == 0 for s in self.sequences):
            raise ValueError("An input sequence is empty after tokenization; drop empty texts.")
        if self.prompts is None:
            self.prompts = [list(s) for s in self.sequences]

    @property
    def n_tokens(self) -> int:
        """Number of real (non-padding) tokens over all sequences."""
        return sum(len(s) for s in self.sequences)

    def batches(self, batch_size: int, *, prompts: bool = False, padding_side: str = "right"):
        """Yield ``(input_ids, attention_mask)`` CPU tensors, padded to the batch's longest row."""
        rows = self.prompts if prompts else self.sequences
        assert rows is not None
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            width = max(len(r) for r in chunk)
            ids = torch.full((len(chunk), width), self.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, r in enumerate(chunk):
                sl = slice(width - len(r), width) if padding_side == "left" else slice(0, len(r))
                ids[i, sl] = torch.tensor(r, dtype=torch.long)
                mask[i, sl] = 1
            yield ids, mask


def _rows_from_tensor(ids: torch.Tensor, mask: torch.Tensor | None) -> list[list[int]]:
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
        mask = None if mask is None else mask.reshape(1, -1)
    if mask is None:
        return [row.tolist() for row in ids.cpu()]
    return [row[m.bool()].tolist() for row, m in zip(ids.cpu(), mask.cpu())]


def prepare_inputs(
    inputs: Any,
    tokenizer: Any = None,
    *,
    max_length: int = 128,
    max_examples: int = 16,
    messages_column: str = "messages",
    text_column: str = "text",
) -> PreparedInputs:
    """Turn token ids, texts or a dataset split into :class:`PreparedInputs`.

    Accepted ``inputs``: a :class:`PreparedInputs`; a tensor of token ids (1-D or 2-D) or a dict /
    ``BatchEncoding`` with ``input_ids`` (and ``attention_mask``, whose zeros are dropped); a list
    of lists of ids; a string or list of strings (needs ``tokenizer``); a ``datasets.Dataset``
    with a ``messages`` column (rendered with the tokenizer's chat template; greedy prompts stop
    before the last assistant turn) or a ``text`` column. At most ``max_examples`` rows, each cut
    to ``max_length`` tokens.

    >>> p = prepare_inputs([[5, 6, 7], [8, 9]])
    >>> [len(s) for s in p.sequences]
    [3, 2]
    """
    if isinstance(inputs, PreparedInputs):
        return inputs
    pad = eos = None
    if tokenizer is not None:
        pad = tokenizer.pad_token_id
        eos = tokenizer.eos_token_id
        if pad is None:
            pad = eos
    texts: list[str] | None = None
    prompt_texts: list[str] | None = None

    if isinstance(inputs, torch.Tensor):
        sequences = _rows_from_tensor(inputs, None)
    elif isinstance(inputs, Mapping) and "input_ids" in inputs:
        ids = inputs["input_ids"]
        ids = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(ids)
        mask = inputs.get("attention_mask")
        mask = None if mask is None else (mask if isinstance(mask, torch.Tensor) else torch.as_tensor(mask))
        sequences = _rows_from_tensor(ids, mask)
    elif isinstance(inputs, str):
        texts = [inputs]
    elif hasattr(inputs, "column_names"):  # datasets.Dataset
        n = min(len(inputs), max_examples)
        rows = inputs.select(range(n))
        if messages_column in inputs.column_names:
            if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
                raise ValueError(
                    f"The dataset has a {messages_column!r} column: pass a tokenizer with a chat "
                    "template (e.g. load_tokenizer('course-tiny')) to render it."
                )
            texts, prompt_texts = [], []
            for msgs in rows[messages_column]:
                texts.append(tokenizer.apply_chat_template(msgs, tokenize=False))
                if msgs and msgs[-1].get("role") == "assistant" and len(msgs) > 1:
                    prompt_texts.append(
                        tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
                    )
                else:
                    prompt_texts.append(texts[-1])
        elif text_column in inputs.column_names:
            texts = list(rows[text_column])
        else:
            raise ValueError(
                f"The dataset has columns {inputs.column_names}; expected {messages_column!r} or "
                f"{text_column!r}. Pass messages_column= or text_column= to name yours."
            )
    elif isinstance(inputs, Sequence) and inputs and all(isinstance(t, str) for t in inputs):
        texts = list(inputs)
    elif isinstance(inputs, Sequence) and inputs and all(isinstance(r, Sequence) for r in inputs):
        sequences = [[int(t) for t in r] for r in inputs]
    else:
        raise TypeError(
            f"Can't compare on inputs of type {type(inputs).__name__}: pass token ids (tensor, "
            "list of lists, or a tokenizer's output), texts with a tokenizer, or a dataset split."
        )

    if texts is not None:
        if tokenizer is None:
            raise ValueError("Texts need a tokenizer: pass tokenizer=load_tokenizer(...) as well.")
        texts = texts[:max_examples]
        templated = prompt_texts is not None
        enc = tokenizer(texts, add_special_tokens=not templated)["input_ids"]
        sequences = [list(r) for r in enc]
        prompts = None
        if prompt_texts is not None:
            penc = tokenizer(prompt_texts[:max_examples], add_special_tokens=False)["input_ids"]
            prompts = [list(r)[:max_length] for r in penc]
    else:
        prompts = None
    sequences = [s[:max_length] for s in sequences[:max_examples]]
    return PreparedInputs(
        sequences=sequences,
        prompts=prompts,
        pad_token_id=int(pad) if pad is not None else 0,
        eos_token_id=eos,
        texts=texts,
    )


# --------------------------------------------------------------------------------------------
# model helpers
# --------------------------------------------------------------------------------------------
def _input_device(model: torch.nn.Module) -> torch.device:
    try:
        return model.get_input_embeddings().weight.device  # type: ignore[operator,union-attr]
    except (AttributeError, NotImplementedError):
        return next(model.parameters()).device


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the model's floating-point weights (the most common one)."""
    counts: dict[torch.dtype, int] = {}
    for p in model.parameters():
        if p.is_floating_point():
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    if not counts:  # fully quantized; fall back on the compute dtype
        return getattr(model, "dtype", torch.float32)
    return max(counts, key=counts.__getitem__)


def _quantization(model: torch.nn.Module) -> str | None:
    from course_utils.merging import quantization_of

    return quantization_of(model)


def _describe(model: torch.nn.Module) -> str:
    name = type(model).__name__
    try:
        inner = model.get_base_model()  # type: ignore[operator]
        name = f"{name}({type(inner).__name__})"
    except AttributeError:
        pass
    q = _quantization(model)
    return f"{name}, {str(_model_dtype(model)).replace('torch.', '')}{', ' + q if q else ''}, {_input_device(model)}"


def _vocab_size(model: torch.nn.Module) -> int | None:
    try:
        out = model.get_output_embeddings()  # type: ignore[operator]
        if out is not None and getattr(out, "weight", None) is not None:
            return int(out.weight.shape[0])
    except (AttributeError, NotImplementedError):
        pass
    cfg = getattr(model, "config", None)
    return getattr(cfg, "vocab_size", None)


def _check_not_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    if a is b:
        raise SameModelError(
            "Both models are the same object, so the comparison would always pass. Capture the "
            "adapter model's outputs BEFORE merging (ref = capture_reference(peft_model, inputs)), "
            "then merge and call compare_to_reference(merged, ref)."
        )
    pa = {p.data_ptr() for p in a.parameters()}
    pb = {p.data_ptr() for p in b.parameters()}
    if pa and pa == pb:
        raise SameModelError(
            "The two models share every weight tensor: they are the same model. This is what "
            "happens after merge_and_unload(): it merges INTO the base in place, so the PeftModel "
            "and the merged model are now one model. Capture the adapter's outputs before merging "
            "with capture_reference(peft_model, inputs), or compare against a separately loaded copy."
        )


def _check_tokenizers(tok_a: Any, tok_b: Any) -> None:
    if tok_a is None or tok_b is None or tok_a is tok_b:
        return
    va, vb = tok_a.get_vocab(), tok_b.get_vocab()
    if va != vb:
        only_a = len(set(va) - set(vb))
        only_b = len(set(vb) - set(va))
        raise VocabularyMismatchError(
            f"The tokenizers differ: {len(va)} vs {len(vb)} tokens ({only_a} only in the first, "
            f"{only_b} only in the second, or the same tokens with other ids). Logits can only be "
            "compared between models that share a tokenizer: load both with the base model's "
            "tokenizer (the one saved next to the adapter)."
        )


# --------------------------------------------------------------------------------------------
# reference capture
# --------------------------------------------------------------------------------------------
@dataclass
class ReferenceOutputs:
    """What a model produced on some inputs, kept on the CPU in float32.

    ``logits`` holds one row per real (non-padding) token, concatenated over sequences, so its
    size is ``n_tokens x vocab x 4`` bytes; ``generations`` holds the greedy continuation of each
    prompt (cut after the first end-of-sequence token).

    >>> import torch
    >>> ref = ReferenceOutputs(inputs=PreparedInputs([[1, 2]]), logits=torch.zeros(2, 4),
    ...                        generations=None, max_new_tokens=0, dtype=torch.float32, description="demo")
    >>> ref.vocab_size
    4
    """

    inputs: PreparedInputs
    logits: torch.Tensor
    generations: list[list[int]] | None
    max_new_tokens: int
    dtype: torch.dtype
    description: str
    batch_size: int = 8
    generate_kwargs: dict[str, Any] = field(default_factory=dict)
    quantization: str | None = None

    @property
    def vocab_size(self) -> int:
        """Width of the captured logits."""
        return int(self.logits.shape[-1])

    @property
    def nbytes(self) -> int:
        """Memory held by the captured logits, in bytes."""
        return self.logits.numel() * self.logits.element_size()

    def __repr__(self) -> str:
        n_gen = 0 if self.generations is None else len(self.generations)
        return (
            f"ReferenceOutputs({self.description}; {len(self.inputs.sequences)} sequences, "
            f"{self.inputs.n_tokens} tokens x vocab {self.vocab_size} = {self.nbytes / 2**20:.1f} MiB; "
            f"{n_gen} greedy generations of up to {self.max_new_tokens} tokens)"
        )


def _trim(tokens: list[int], eos: int | list[int] | None) -> list[int]:
    if eos is None:
        return tokens
    stops = {eos} if isinstance(eos, int) else set(eos)
    for i, t in enumerate(tokens):
        if t in stops:
            return tokens[: i + 1]
    return tokens


@torch.no_grad()
def _run(
    model: torch.nn.Module,
    inputs: PreparedInputs,
    *,
    batch_size: int,
    max_new_tokens: int,
    generate_kwargs: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, list[list[int]] | None]:
    """Packed float32 CPU logits of every real token, and greedy generations."""
    from course_utils.quantization import prevent_cpu_repack

    prevent_cpu_repack(model)  # 4-bit layers keep bitsandbytes' portable layout, so a merge can match them
    was_training = model.training
    model.eval()
    device = _input_device(model)
    out: list[torch.Tensor] = []
    try:
        for ids, mask in inputs.batches(batch_size):
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            logits = logits[:, logits.shape[1] - ids.shape[1] :]  # prompt/p-tuning prepend virtual-token logits
            out.append(logits.float().cpu()[mask.bool()])
            del logits
        generations: list[list[int]] | None = None
        if max_new_tokens > 0:
            from transformers import GenerationConfig

            from course_utils.evaluation import generation_use_cache

            kwargs = dict(generate_kwargs or {})  # use_cache: off for prompt-learning models (KV-cache trap)
            gen_cfg = GenerationConfig(
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=inputs.pad_token_id,
                eos_token_id=inputs.eos_token_id,
                use_cache=generation_use_cache(model, kwargs.pop("use_cache", None)),
            )
            generations = []
            for ids, mask in inputs.batches(batch_size, prompts=True, padding_side="left"):
                seq = model.generate(  # type: ignore[operator]
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    generation_config=gen_cfg,
                    **kwargs,
                )
                for row in seq[:, ids.shape[1] :].cpu().tolist():
                    generations.append(_trim(row, inputs.eos_token_id))
    finally:
        model.train(was_training)
    return torch.cat(out), generations


def capture_reference(
    model: torch.nn.Module,
    inputs: Any,
    tokenizer: Any = None,
    *,
    max_new_tokens: int = 16,
    batch_size: int = 8,
    max_length: int = 128,
    max_examples: int = 16,
    generate_kwargs: Mapping[str, Any] | None = None,
) -> ReferenceOutputs:
    """Run ``model`` once and keep its outputs on the CPU, to compare against later.

    Call this on the adapter model BEFORE merging: ``merge_and_unload()`` changes the base model
    in place, and keeping a second copy of a large model is what a learner's GPU can't afford.
    ``max_new_tokens=0`` skips greedy generation.

    Returns:
        A :class:`ReferenceOutputs` (float32 logits of every real token, greedy generations).

    >>> ref = capture_reference(peft_model, ["Hello there"], tokenizer)   # doctest: +SKIP
    >>> merged, info = safe_merge(peft_model)                            # doctest: +SKIP
    >>> compare_to_reference(merged, ref).passed                         # doctest: +SKIP
    True
    """
    prepared = prepare_inputs(inputs, tokenizer, max_length=max_length, max_examples=max_examples)
    logits, generations = _run(
        model, prepared, batch_size=batch_size, max_new_tokens=max_new_tokens, generate_kwargs=generate_kwargs
    )
    return ReferenceOutputs(
        inputs=prepared,
        logits=logits,
        generations=generations,
        max_new_tokens=max_new_tokens,
        dtype=_model_dtype(model),
        description=_describe(model),
        batch_size=batch_size,
        generate_kwargs=dict(generate_kwargs or {}),
        quantization=_quantization(model),
    )


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------
@dataclass
class MetricResult:
    """One number of a comparison and its verdict.

    ``kind`` is ``"max"`` (value must be <= limit), ``"min"`` (value must be >= limit) or
    ``"info"`` (reported, not judged; ``passed`` is then ``None``).

    >>> MetricResult("mean_kl", 1e-9, 1e-7, "max").passed
    True
    """

    name: str
    value: float
    limit: float | None
    kind: str
    description: str = ""

    @property
    def passed(self) -> bool | None:
        """``True``/``False`` against the limit, ``None`` when not judged."""
        if self.limit is None or self.kind == "info":
            return None
        if math.isnan(self.value):
            return False
        return self.value <= self.limit if self.kind == "max" else self.value >= self.limit

    @property
    def verdict(self) -> str:
        """``"pass"``, ``"FAIL"`` or ``"info"``."""
        return {True: "pass", False: "FAIL", None: "info"}[self.passed]

    def limit_text(self) -> str:
        """The limit written as ``<= x`` / ``>= x``, or ``-`` when not judged."""
        if self.passed is None:
            return "-"
        return f"{'<=' if self.kind == 'max' else '>='} {_fmt(self.limit)}"  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (name, value, limit, kind, passed, description)."""
        return {
            "name": self.name,
            "value": self.value,
            "limit": self.limit,
            "kind": self.kind,
            "passed": self.passed,
            "description": self.description,
        }


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.2e}"
    return f"{x:.4g}"


@dataclass
class ValidationReport:
    """The result of comparing a candidate model with a reference: metrics and verdicts.

    ``passed`` is True when every judged metric is within its limit; ``failed`` names the ones
    that are not. Print it, show it in a notebook (HTML table), or ``to_dict()`` it.

    >>> r = ValidationReport(metrics=[MetricResult("mean_kl", 0.5, 0.01, "max")],
    ...                      tolerance=Tolerance(name="demo"), reference="adapter", candidate="merged")
    >>> r.passed, r.failed
    (False, ['mean_kl'])
    """

    metrics: list[MetricResult]
    tolerance: Tolerance
    reference: str
    candidate: str
    n_sequences: int = 0
    n_tokens: int = 0
    per_token_kl: torch.Tensor | None = None
    first_differences: list[int | None] = field(default_factory=list)
    title: str = "merged vs adapter"
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when no judged metric failed."""
        return not self.failed

    @property
    def failed(self) -> list[str]:
        """Names of the metrics outside their limits."""
        return [m.name for m in self.metrics if m.passed is False]

    def __getitem__(self, name: str) -> MetricResult:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(f"No metric {name!r}; have {[m.name for m in self.metrics]}")

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready dict of the verdict, metrics and tolerance."""
        return {
            "title": self.title,
            "passed": self.passed,
            "failed": self.failed,
            "reference": self.reference,
            "candidate": self.candidate,
            "n_sequences": self.n_sequences,
            "n_tokens": self.n_tokens,
            "metrics": {m.name: m.to_dict() for m in self.metrics},
            "first_differences": list(self.first_differences),
            "tolerance": self.tolerance.to_dict(),
            "notes": list(self.notes),
        }

    def __repr__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL (" + ", ".join(self.failed) + ")"
        lines = [
            f"ValidationReport [{self.title}]: {verdict}",
            f"  reference: {self.reference}",
            f"  candidate: {self.candidate}",
            f"  {self.n_sequences} sequences, {self.n_tokens} tokens; tolerance: {self.tolerance.name}",
        ]
        width = max(len(m.name) for m in self.metrics) if self.metrics else 10
        lines.append(f"  {'metric'.ljust(width)}  {'value':>10}  {'limit':>11}  verdict")
        for m in self.metrics:
            lines.append(f"  {m.name.ljust(width)}  {_fmt(m.value):>10}  {m.limit_text():>11}  {m.verdict}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        color = "#1a7f37" if self.passed else "#cf222e"
        verdict = "PASS" if self.passed else "FAIL: " + ", ".join(self.failed)
        rows = "".join(
            "<tr><td><code>{}</code></td><td style='text-align:right'>{}</td><td>{}</td>"
            "<td style='color:{}'>{}</td><td>{}</td></tr>".format(
                html.escape(m.name),
                _fmt(m.value),
                html.escape(m.limit_text()),
                {"pass": "#1a7f37", "FAIL": "#cf222e", "info": "#57606a"}[m.verdict],
                m.verdict,
                html.escape(m.description),
            )
            for m in self.metrics
        )
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        return (
            f"<div><b>ValidationReport [{html.escape(self.title)}]: "
            f"<span style='color:{color}'>{html.escape(verdict)}</span></b><br>"
            f"reference: {html.escape(self.reference)}<br>candidate: {html.escape(self.candidate)}<br>"
            f"{self.n_sequences} sequences, {self.n_tokens} tokens; tolerance "
            f"<code>{html.escape(self.tolerance.name)}</code>: {html.escape(self.tolerance.reason)}"
            "<table><tr><th>metric</th><th>value</th><th>limit</th><th>verdict</th><th>what it is</th></tr>"
            f"{rows}</table>{'<ul>' + notes + '</ul>' if notes else ''}</div>"
        )

    def plot(self, ax: Any = None, bins: int = 50) -> Figure:
        """Histogram of the per-token KL divergence (log-scaled x axis); returns the figure.

        >>> fig = report.plot()   # doctest: +SKIP
        """
        import matplotlib.pyplot as plt

        if self.per_token_kl is None:
            raise ValueError("This report holds no per-token KL values to plot.")
        kl = self.per_token_kl.double().clamp_min(1e-12).numpy()
        if ax is None:
            fig, ax = plt.subplots(figsize=(6, 3.5))
        else:
            fig = ax.figure
        lo, hi = math.log10(kl.min()), math.log10(kl.max())
        edges = [10 ** (lo + (hi - lo + 1e-9) * i / bins) for i in range(bins + 1)]
        ax.hist(kl, bins=edges, color="#4c72b0")
        ax.set_xscale("log")
        limit = self.tolerance.mean_kl
        if limit is not None:
            ax.axvline(limit, color="#cf222e", linestyle="--", label=f"mean-KL limit ({_fmt(limit)})")
            ax.legend()
        ax.set_xlabel("KL(reference || candidate) per token, nats (clamped at 1e-12)")
        ax.set_ylabel("tokens")
        ax.set_title(f"Per-token KL, {self.title}: {'PASS' if self.passed else 'FAIL'}")
        fig.tight_layout()
        return fig


# --------------------------------------------------------------------------------------------
# comparison
# --------------------------------------------------------------------------------------------
def _resolve_tolerance(tolerance: Tolerance | str | torch.dtype | None, *dtypes: torch.dtype) -> Tolerance:
    if isinstance(tolerance, Tolerance):
        return tolerance
    if tolerance is None or tolerance == "auto":
        return tolerance_for(*dtypes)
    return tolerance_for(tolerance)


def _metrics(
    ref: ReferenceOutputs, logits: torch.Tensor, generations: list[list[int]] | None, tol: Tolerance
) -> tuple[list[MetricResult], torch.Tensor, list[int | None]]:
    """All metrics between captured reference logits and candidate logits (both packed, CPU).

    KL is computed in float64: in float32 the log-softmax rounding alone gives ~1e-7 nats.
    """
    a, b = ref.logits, logits
    n = a.shape[0]
    chunk = max(1, 2**23 // max(1, a.shape[-1]))  # ~64 MB of float64 per chunk
    max_abs = 0.0
    sum_abs = 0.0
    kls = []
    top1 = 0
    scale_sum = 0.0
    for s in range(0, n, chunk):
        ca, cb = a[s : s + chunk].float(), b[s : s + chunk].float()
        d = (ca - cb).abs()
        max_abs = max(max_abs, float(d.max()))
        sum_abs += float(d.sum(dtype=torch.float64))
        la, lb = F.log_softmax(ca.double(), -1), F.log_softmax(cb.double(), -1)
        kls.append((la.exp() * (la - lb)).sum(-1).clamp_min(0.0).float())
        top1 += int((ca.argmax(-1) == cb.argmax(-1)).sum())
        scale_sum += float(ca.std(-1).sum(dtype=torch.float64))
    kl = torch.cat(kls)
    mean_abs = sum_abs / a.numel()
    scale = scale_sum / n

    # perplexity of the next real token (positions whose successor is real)
    lens = [len(s) for s in ref.inputs.sequences]
    idx, targets = [], []
    offset = 0
    for seq, ln in zip(ref.inputs.sequences, lens):
        idx.extend(range(offset, offset + ln - 1))
        targets.extend(seq[1:])
        offset += ln
    ppl_a = ppl_b = float("nan")
    if idx:
        ii, tt = torch.tensor(idx), torch.tensor(targets)
        ppl_a = math.exp(float(F.cross_entropy(a[ii].float(), tt)))
        ppl_b = math.exp(float(F.cross_entropy(b[ii].float(), tt)))

    def m(name: str, value: float, limit: float | None, kind: str, desc: str) -> MetricResult:
        return MetricResult(name, float(value), limit, kind if limit is not None else "info", desc)

    metrics = [
        m("max_abs_logit_diff", max_abs, tol.max_abs_logit, "max", "largest |Δlogit| over all tokens and vocabulary"),
        m("mean_abs_logit_diff", mean_abs, None, "info", "mean |Δlogit|"),
        m("logit_scale", scale, None, "info", "reference logits' std over the vocabulary (divides the rel_ metrics)"),
        m(
            "rel_mean_abs_logit_diff",
            mean_abs / scale if scale else float("nan"),
            tol.rel_mean_abs_logit,
            "max",
            "mean |Δlogit| / logit scale",
        ),
        m(
            "rel_max_abs_logit_diff",
            max_abs / scale if scale else float("nan"),
            tol.rel_max_abs_logit,
            "max",
            "max |Δlogit| / logit scale",
        ),
        m("mean_kl", float(kl.mean()), tol.mean_kl, "max", "mean per-token KL(reference || candidate), nats"),
        m("max_kl", float(kl.max()), tol.max_kl, "max", "largest per-token KL, nats"),
        m("top1_agreement", top1 / n, tol.top1_agreement, "min", "fraction of tokens with the same argmax"),
        m("ppl_reference", ppl_a, None, "info", "perplexity of the reference on the inputs"),
        m("ppl_candidate", ppl_b, None, "info", "perplexity of the candidate on the inputs"),
        m(
            "rel_perplexity_diff",
            abs(ppl_b / ppl_a - 1) if idx else float("nan"),
            tol.rel_perplexity,
            "max",
            "|ppl_candidate / ppl_reference - 1|",
        ),
    ]
    first_diffs: list[int | None] = []
    if ref.generations is not None and generations is not None:
        same = 0
        for ga, gb in zip(ref.generations, generations):
            if ga == gb:
                same += 1
                first_diffs.append(None)
            else:
                k = next((i for i, (x, y) in enumerate(zip(ga, gb)) if x != y), min(len(ga), len(gb)))
                first_diffs.append(k)
        metrics.append(
            m(
                "generation_match",
                same / len(ref.generations),
                tol.generation_match,
                "min",
                f"fraction of prompts whose {ref.max_new_tokens}-token greedy continuation is identical",
            )
        )
    return metrics, kl, first_diffs


def compare_to_reference(
    model: torch.nn.Module,
    reference: ReferenceOutputs,
    *,
    tolerance: Tolerance | str | torch.dtype | None = "auto",
    title: str = "merged vs adapter",
) -> ValidationReport:
    """Run ``model`` on the reference's inputs and judge it against the captured outputs.

    ``tolerance="auto"`` picks the default for the less precise of the two dtypes
    (:data:`DEFAULT_TOLERANCES`); pass a dtype, a dtype name or your own :class:`Tolerance`.

    Raises:
        VocabularyMismatchError: the model's vocabulary differs from the reference's.

    >>> report = compare_to_reference(merged, ref)   # doctest: +SKIP
    >>> report.passed, report.failed                 # doctest: +SKIP
    (True, [])
    """
    vocab = _vocab_size(model)
    if vocab is not None and vocab != reference.vocab_size:
        raise VocabularyMismatchError(
            f"The model's vocabulary has {vocab} tokens but the reference logits have "
            f"{reference.vocab_size}: they are different models or one was resized. Compare "
            "models built on the same base and tokenizer."
        )
    tol = _resolve_tolerance(tolerance, reference.dtype, _model_dtype(model))
    notes = []
    if tolerance in (None, "auto") and "8-bit" in f"{reference.quantization} {_quantization(model)}":
        tol = tolerance_for(torch.bfloat16, tol.name)
        notes.append(
            "An 8-bit (LLM.int8) model quantizes activations too, so its outputs carry "
            "~1% noise of their own: judged with the bfloat16 limits."
        )
    if (
        tolerance in (None, "auto")
        and tol.name == "float32"
        and _input_device(model).type == "cuda"
        and torch.get_float32_matmul_precision() != "highest"
    ):
        tol = DEFAULT_TOLERANCES[torch.float16]
        notes.append(
            "TF32 matmuls are on (torch.get_float32_matmul_precision() != 'highest'): "
            "float32 judged with the float16 limits."
        )
    logits, generations = _run(
        model,
        reference.inputs,
        batch_size=reference.batch_size,
        max_new_tokens=reference.max_new_tokens,
        generate_kwargs=reference.generate_kwargs,
    )
    if logits.shape != reference.logits.shape:
        raise VocabularyMismatchError(
            f"Logit shapes differ: reference {tuple(reference.logits.shape)} vs model {tuple(logits.shape)}."
        )
    metrics, kl, first_diffs = _metrics(reference, logits, generations, tol)
    n_diff = sum(d is not None for d in first_diffs)
    if n_diff:
        shown = ", ".join(str(d) for d in first_diffs if d is not None)
        notes.append(f"{n_diff}/{len(first_diffs)} greedy generations differ; first differing token: {shown}")
    return ValidationReport(
        metrics=metrics,
        tolerance=tol,
        reference=reference.description,
        candidate=_describe(model),
        n_sequences=len(reference.inputs.sequences),
        n_tokens=reference.inputs.n_tokens,
        per_token_kl=kl,
        first_differences=first_diffs,
        title=title,
        notes=notes,
    )


def compare_models(
    reference_model: torch.nn.Module,
    candidate_model: torch.nn.Module,
    inputs: Any,
    tokenizer: Any = None,
    *,
    candidate_tokenizer: Any = None,
    tolerance: Tolerance | str | torch.dtype | None = "auto",
    max_new_tokens: int = 16,
    batch_size: int = 8,
    max_length: int = 128,
    max_examples: int = 16,
    title: str = "candidate vs reference",
) -> ValidationReport:
    """Compare two live causal LMs on the same inputs (each on its own device and dtype).

    Raises:
        SameModelError: both arguments are one model (e.g. a PeftModel after merge_and_unload
            and the model it returned).
        VocabularyMismatchError: different vocabularies or tokenizers.

    >>> report = compare_models(peft_model, merged_copy, ["Hello"], tokenizer)   # doctest: +SKIP
    """
    _check_not_same(reference_model, candidate_model)
    _check_tokenizers(tokenizer, candidate_tokenizer)
    va, vb = _vocab_size(reference_model), _vocab_size(candidate_model)
    if va is not None and vb is not None and va != vb:
        raise VocabularyMismatchError(
            f"The models have different vocabularies ({va} vs {vb} tokens), so their logits can't be "
            "compared. Compare an adapter with a model merged from the same base (and tokenizer)."
        )
    ref = capture_reference(
        reference_model,
        inputs,
        tokenizer,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        max_length=max_length,
        max_examples=max_examples,
    )
    return compare_to_reference(candidate_model, ref, tolerance=tolerance, title=title)
