"""Run a model once and keep what it produced: the inputs of a comparison and its reference outputs.

- :func:`prepare_inputs` turns token ids, texts or a dataset split into :class:`PreparedInputs`
  (unpadded token sequences on the CPU, and the prompts to continue greedily).
- :func:`capture_reference` runs a model ONCE on them and keeps its next-token logits and greedy
  generations on the CPU (:class:`ReferenceOutputs`, a few MB), so the model can be merged in
  place afterwards without holding two copies. :class:`CaptureOptions` says how much to capture;
  every caller in the course passes one.
- :func:`model_outputs` is the run itself; ``course_utils.validation`` runs the candidate with it.

>>> p = prepare_inputs([[5, 6, 7], [8, 9]])
>>> p.n_tokens
5
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from course_utils.devices import model_device, model_dtype
from course_utils.evaluation import generation_use_cache
from course_utils.quantization import prevent_cpu_repack, quantization_of

__all__ = [
    "CaptureOptions",
    "PreparedInputs",
    "ReferenceOutputs",
    "capture_reference",
    "describe_model",
    "model_outputs",
    "prepare_inputs",
]


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


def describe_model(model: torch.nn.Module) -> str:
    """One line naming a model: its class (and the wrapped class of a PeftModel), dtype, quantization, device.

    >>> describe_model(torch.nn.Linear(2, 2))
    'Linear, float32, cpu'
    """
    name = type(model).__name__
    try:
        inner = model.get_base_model()  # type: ignore[operator]
        name = f"{name}({type(inner).__name__})"
    except AttributeError:
        pass
    q = quantization_of(model)
    return f"{name}, {str(model_dtype(model)).replace('torch.', '')}{', ' + q if q else ''}, {model_device(model)}"


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
def model_outputs(
    model: torch.nn.Module,
    inputs: PreparedInputs,
    *,
    batch_size: int,
    max_new_tokens: int,
    generate_kwargs: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, list[list[int]] | None]:
    """Packed float32 CPU logits of every real token of ``inputs``, and greedy generations (None without).

    The model runs in eval mode and goes back to the mode it was in; a 4-bit base keeps
    bitsandbytes' portable layout (:func:`course_utils.quantization.prevent_cpu_repack`).

    >>> from course_utils.tiny_models import tiny_model
    >>> logits, gens = model_outputs(tiny_model("llama"), PreparedInputs([[1, 2, 3]]), batch_size=1, max_new_tokens=0)
    >>> logits.shape[0], gens
    (3, None)
    """
    prevent_cpu_repack(model)  # 4-bit layers keep bitsandbytes' portable layout, so a merge can match them
    was_training = model.training
    model.eval()
    device = model_device(model)
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


@dataclass(frozen=True)
class CaptureOptions:
    """How much of a model's behaviour :func:`capture_reference` keeps.

    ``max_new_tokens`` greedy tokens per prompt (0: no generation), ``batch_size`` sequences per
    forward pass, each input cut to ``max_length`` tokens, at most ``max_examples`` inputs.

    >>> CaptureOptions(max_new_tokens=4).max_length
    128
    >>> CaptureOptions.from_keywords(None, max_examples=2).max_examples
    2
    """

    max_new_tokens: int = 16
    batch_size: int = 8
    max_length: int = 128
    max_examples: int = 16

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            low = 0 if f.name == "max_new_tokens" else 1
            if not isinstance(value, int) or value < low:
                raise ValueError(f"CaptureOptions.{f.name} must be an integer >= {low}, got {value!r}.")

    @classmethod
    def from_keywords(cls, options: CaptureOptions | None = None, **keywords: Any) -> CaptureOptions:
        """``options`` (default: the defaults) with ``keywords`` replacing single fields; unknown names fail.

        What the course's comparison functions do with their ``**capture`` keywords.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(keywords) - names)
        if unknown:
            raise TypeError(f"Unknown capture option(s) {unknown}: the options are {sorted(names)}.")
        return cls(**{**asdict(options or cls()), **keywords})


def capture_reference(
    model: torch.nn.Module,
    inputs: Any,
    tokenizer: Any = None,
    *,
    options: CaptureOptions | None = None,
    generate_kwargs: Mapping[str, Any] | None = None,
    **capture: Any,
) -> ReferenceOutputs:
    """Run ``model`` once and keep its outputs on the CPU, to compare against later.

    Call this on the adapter model BEFORE merging: ``merge_and_unload()`` changes the base model
    in place, and keeping a second copy of a large model is what a learner's GPU can't afford.
    ``options`` (a :class:`CaptureOptions`) or its fields as keywords (``max_new_tokens=0`` skips
    greedy generation; ``batch_size``, ``max_length``, ``max_examples``) say how much to capture.

    Returns:
        A :class:`ReferenceOutputs` (float32 logits of every real token, greedy generations).

    >>> ref = capture_reference(peft_model, ["Hello there"], tokenizer)   # doctest: +SKIP
    >>> merged, info = safe_merge(peft_model)                            # doctest: +SKIP
    >>> compare_to_reference(merged, ref).passed                         # doctest: +SKIP
    True
    """
    opts = CaptureOptions.from_keywords(options, **capture)
    max_new_tokens, batch_size = opts.max_new_tokens, opts.batch_size
    prepared = prepare_inputs(inputs, tokenizer, max_length=opts.max_length, max_examples=opts.max_examples)
    logits, generations = model_outputs(
        model, prepared, batch_size=batch_size, max_new_tokens=max_new_tokens, generate_kwargs=generate_kwargs
    )
    return ReferenceOutputs(
        inputs=prepared,
        logits=logits,
        generations=generations,
        max_new_tokens=max_new_tokens,
        dtype=model_dtype(model),
        description=describe_model(model),
        batch_size=batch_size,
        generate_kwargs=dict(generate_kwargs or {}),
        quantization=quantization_of(model),
    )
