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
- :func:`compare_served` compares greedy continuations and their log-probs between a model and a
  served copy of it: an OpenAI-compatible endpoint (vLLM, TGI, your own), an engine's outputs, or
  another model (a merged copy); :func:`greedy_completions` is the model's side of it.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from course_utils.devices import model_device, model_dtype
from course_utils.quantization import quantization_of
from course_utils.reference import (  # re-exported: the notebooks and tests import them from here
    CaptureOptions,
    PreparedInputs,
    ReferenceOutputs,
    capture_reference,
    describe_model,
    model_outputs,
    prepare_inputs,
)
from course_utils.serving import Completion, complete
from course_utils.tolerance import DEFAULT_TOLERANCES, Tolerance, tolerance_for  # re-exported too

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.figure import Figure

__all__ = [
    "CaptureOptions",
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
    "compare_served",
    "compare_to_reference",
    "greedy_completions",
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
# model checks
# --------------------------------------------------------------------------------------------
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
    tol = _resolve_tolerance(tolerance, reference.dtype, model_dtype(model))
    notes = []
    if tolerance in (None, "auto") and "8-bit" in f"{reference.quantization} {quantization_of(model)}":
        tol = tolerance_for(torch.bfloat16, tol.name)
        notes.append(
            "An 8-bit (LLM.int8) model quantizes activations too, so its outputs carry "
            "~1% noise of their own: judged with the bfloat16 limits."
        )
    if (
        tolerance in (None, "auto")
        and tol.name == "float32"
        and model_device(model).type == "cuda"
        and torch.get_float32_matmul_precision() != "highest"
    ):
        tol = DEFAULT_TOLERANCES[torch.float16]
        notes.append(
            "TF32 matmuls are on (torch.get_float32_matmul_precision() != 'highest'): "
            "float32 judged with the float16 limits."
        )
    logits, generations = model_outputs(
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
        candidate=describe_model(model),
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
    title: str = "candidate vs reference",
    **capture: Any,
) -> ValidationReport:
    """Compare two live causal LMs on the same inputs (each on its own device and dtype).

    ``capture``: the fields of :class:`course_utils.reference.CaptureOptions` (``max_new_tokens``,
    ``batch_size``, ``max_length``, ``max_examples``), or ``options=CaptureOptions(...)``.

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
    ref = capture_reference(reference_model, inputs, tokenizer, **capture)
    return compare_to_reference(candidate_model, ref, tolerance=tolerance, title=title)


# --------------------------------------------------------------------------------------------
# served vs model
# --------------------------------------------------------------------------------------------
def _cut_at_eos(tokens: list[int], stops: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in stops:
            return tokens[: i + 1]
    return tokens


def _eos_ids(model: Any) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(getattr(model, "config", None), "eos_token_id", None)
    if eos is None:
        return set()
    return {int(eos)} if isinstance(eos, int) else {int(e) for e in eos}


@torch.no_grad()
def greedy_completions(
    model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int = 16
) -> list[Completion]:
    """Each prompt's greedy continuation by ``model`` and the log-prob of each generated token.

    One prompt at a time (no padding), ``generate(do_sample=False)`` up to ``max_new_tokens`` or the
    end-of-sequence token, then one forward pass over prompt + continuation for the log-probs
    (log-softmax of the raw logits, in float32): what an engine returns with ``logprobs``.

    >>> from course_utils.tiny_models import tiny_model
    >>> [len(c.token_ids) for c in greedy_completions(tiny_model("llama"), [[1, 2, 3]], max_new_tokens=4)]
    [4]
    """
    was_training = model.training
    model.eval()
    device = model_device(model)
    stops = _eos_ids(model)
    out = []
    try:
        for prompt in prompts:
            ids = torch.tensor([list(prompt)], device=device)
            seq = model.generate(  # type: ignore[operator]
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=next(iter(stops), 0),
            )
            new = _cut_at_eos(seq[0, ids.shape[1] :].tolist(), stops)
            full = torch.tensor([list(prompt) + new], device=device)
            logits = model(input_ids=full).logits[0, ids.shape[1] - 1 : -1].float()
            lp = F.log_softmax(logits, -1).gather(-1, full[0, ids.shape[1] :, None]).squeeze(-1)
            out.append(Completion(token_ids=new, logprobs=[float(x) for x in lp.cpu()]))
    finally:
        model.train(was_training)
    return out


def _served_side(
    side: Any, prompts: list[list[int]], model_name: str | None, max_new_tokens: int, timeout: float, tokenizer: Any
) -> tuple[list[Completion], str]:
    """Completions from a model, an endpoint (URL or an object with ``.url``), or given completions."""
    if isinstance(side, torch.nn.Module):
        return greedy_completions(side, prompts, max_new_tokens), describe_model(side)
    url = side if isinstance(side, str) else getattr(side, "url", None)
    if isinstance(url, str):
        if not model_name:
            raise ValueError(
                f"Name the served model to ask {url} for: model_name='shout' (an adapter's --lora-modules name) "
                "or the base model's name (see the server's /v1/models)."
            )
        send = getattr(side, "complete", None) if not isinstance(side, str) else None
        rows = []
        for p in prompts:
            if send is not None:  # a VLLMServer: a dead server is named as such
                rows.append(send(model_name, p, max_tokens=max_new_tokens, timeout=timeout, tokenizer=tokenizer))
            else:
                rows.append(
                    complete(url, model_name, p, max_tokens=max_new_tokens, timeout=timeout, tokenizer=tokenizer)
                )
        return rows, f"{model_name} at {url}"
    if isinstance(side, Sequence) and not isinstance(side, (str, bytes)):
        rows = [
            c if isinstance(c, Completion) else Completion(token_ids=list(c["token_ids"]), logprobs=c.get("logprobs"))
            for c in side
        ]
        if len(rows) != len(prompts):
            raise ValueError(f"{len(rows)} completions were given for {len(prompts)} prompts: pass one per prompt.")
        return rows, f"{len(rows)} given completions"
    raise TypeError(
        f"Can't compare with a {type(side).__name__}: pass a model, an endpoint URL (or a VLLMServer), or a list "
        "of completions (token_ids and logprobs, one per prompt)."
    )


def compare_served(
    reference: Any,
    served: Any,
    prompts: Any,
    *,
    model_name: str | None = None,
    max_new_tokens: int = 16,
    tolerance: Tolerance | str | torch.dtype | None = "auto",
    dtype: str | torch.dtype | None = None,
    tokenizer: Any = None,
    timeout: float = 30.0,
    title: str = "served vs adapter",
) -> ValidationReport:
    """Compare greedy continuations and their log-probs: a model (the reference) against a served copy.

    ``reference`` and ``served`` are each a model (run here with :func:`greedy_completions`), an
    OpenAI-compatible endpoint (its URL, or a :class:`course_utils.serving.VLLMServer`, asked for
    ``model_name`` through ``/v1/completions``) or a list of completions already produced (vLLM's
    offline engine: one ``{"token_ids", "logprobs"}`` per prompt). ``prompts``: token-id lists (or
    texts with ``tokenizer``), so no chat template can differ between the two sides.

    Judged, with the tolerance of the least precise dtype (``dtype``: the served side's; default
    float32, or the model's dtype): ``generation_match`` (the fraction of prompts whose greedy tokens
    are identical, up to the end-of-sequence token) and ``max_abs_logprob_diff`` (the largest
    ``|Δ log-prob|`` of a generated token, over the tokens before the first difference). Where the
    server returns no log-probs the second is reported as missing, not judged.

    Returns:
        A :class:`ValidationReport`, as :func:`compare_to_reference` returns.

    >>> from course_utils.tiny_models import tiny_model
    >>> model = tiny_model("llama")
    >>> compare_served(model, greedy_completions(model, [[1, 2, 3]], 4), [[1, 2, 3]], max_new_tokens=4).passed
    True
    """
    if isinstance(prompts, str) or (prompts and isinstance(prompts[0], str)):
        if tokenizer is None:
            raise ValueError("Text prompts need a tokenizer: pass tokenizer=..., or pass token ids.")
        prompts = [
            tokenizer(t, add_special_tokens=False)["input_ids"]
            for t in ([prompts] if isinstance(prompts, str) else prompts)
        ]
    prompts = [[int(t) for t in p] for p in prompts]
    if not prompts:
        raise ValueError("No prompts to compare on: pass at least one list of token ids.")
    ref_rows, ref_name = _served_side(reference, prompts, model_name, max_new_tokens, timeout, tokenizer)
    cand_rows, cand_name = _served_side(served, prompts, model_name, max_new_tokens, timeout, tokenizer)
    dtypes = [
        d for d in (getattr(reference, "dtype", None), getattr(served, "dtype", None)) if isinstance(d, torch.dtype)
    ]
    if dtype is not None:
        dtypes.append(dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype).replace("torch.", "")))
    tol = _resolve_tolerance(tolerance, *(dtypes or [torch.float32]))

    first_diffs: list[int | None] = []
    diffs: list[float] = []
    missing_logprobs = False
    for a, b in zip(ref_rows, cand_rows):
        same = a.token_ids == b.token_ids
        k = (
            None
            if same
            else next(
                (i for i, (x, y) in enumerate(zip(a.token_ids, b.token_ids)) if x != y),
                min(len(a.token_ids), len(b.token_ids)),
            )
        )
        first_diffs.append(k)
        if a.logprobs is None or b.logprobs is None:
            missing_logprobs = True
            continue
        n = len(a.token_ids) if k is None else k
        diffs += [abs(x - y) for x, y in zip(a.logprobs[:n], b.logprobs[:n])]
    n_same = sum(d is None for d in first_diffs)
    max_diff = max(diffs) if diffs else float("nan")
    mean_diff = sum(diffs) / len(diffs) if diffs else float("nan")

    def m(name: str, value: float, limit: float | None, kind: str, desc: str) -> MetricResult:
        judged = limit is not None and not (missing_logprobs and "logprob" in name)
        return MetricResult(name, float(value), limit if judged else None, kind if judged else "info", desc)

    metrics = [
        m(
            "generation_match",
            n_same / len(prompts),
            tol.generation_match,
            "min",
            f"fraction of prompts whose greedy continuation (up to {max_new_tokens} tokens) is identical",
        ),
        m(
            "max_abs_logprob_diff",
            max_diff,
            tol.max_abs_logprob,
            "max",
            "largest |Δ log-prob| of a generated token, before the first differing token",
        ),
        m("mean_abs_logprob_diff", mean_diff, None, "info", "mean |Δ log-prob| over the same tokens"),
    ]
    notes = []
    if missing_logprobs:
        notes.append("One side returned no log-probs: only the greedy tokens are judged.")
    n_diff = len(prompts) - n_same
    if n_diff:
        shown = ", ".join(str(d) for d in first_diffs if d is not None)
        notes.append(f"{n_diff}/{len(prompts)} greedy continuations differ; first differing token: {shown}")
    return ValidationReport(
        metrics=metrics,
        tolerance=tol,
        reference=ref_name,
        candidate=cand_name,
        n_sequences=len(prompts),
        n_tokens=sum(len(r.token_ids) for r in ref_rows),
        first_differences=first_diffs,
        title=title,
        notes=notes,
    )
