"""Helpers for notebook 05 (prompt tuning): look at virtual tokens, probe the KV-cache bug, size adapters.

- :func:`virtual_token_embeddings`: the learned soft prompt of a prompt-tuned ``PeftModel``
  (``num_virtual_tokens x hidden_size``).
- :func:`nearest_tokens`: for each virtual token, the vocabulary tokens whose input embeddings
  are closest by cosine similarity (a rough read: a soft prompt need not be near any word).
- :func:`cache_probe`: the same greedy generations with ``use_cache=True`` and ``False``, and
  where they differ. In peft 0.21 / transformers 5, prompt-learning models (prompt tuning,
  prefix tuning, p-tuning) generate wrong text with the cache on, which is why every course_utils
  generator turns it off for them (``course_utils.evaluation.generation_use_cache``);
  ``tests/test_prompt_tuning.py`` uses this probe to notice the day upstream fixes it.
- :func:`adapter_bytes_on_disk`: save an adapter into a fresh temporary folder and count bytes.

>>> from peft import PromptTuningConfig, get_peft_model
>>> from course_utils.loading import load_model
>>> pm = get_peft_model(load_model(), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
>>> tuple(virtual_token_embeddings(pm).shape)
(4, 192)
"""

from __future__ import annotations

import html
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from course_utils.tables import Html, html_table

__all__ = [
    "CacheProbe",
    "adapter_bytes_on_disk",
    "cache_probe",
    "nearest_tokens",
    "prompt_tuning_parameter_count",
    "virtual_token_embeddings",
]


def virtual_token_embeddings(peft_model: Any, adapter_name: str | None = None) -> torch.Tensor:
    """The learned virtual-token embeddings of a prompt-tuned ``PeftModel``, shape ``(n_virtual, hidden)``.

    Raises ``ValueError`` for adapters that are not prompt tuning (prefix tuning stores keys and
    values per layer, not input embeddings; LoRA has no virtual tokens).
    """
    name = adapter_name or peft_model.active_adapter
    config = peft_model.peft_config[name]
    if getattr(config, "peft_type", None) is None or str(config.peft_type.value) != "PROMPT_TUNING":
        raise ValueError(
            f"Adapter {name!r} is {getattr(config, 'peft_type', type(config).__name__)}, not prompt "
            "tuning: only prompt tuning learns input embeddings that can be compared with the vocabulary."
        )
    with torch.no_grad():
        return peft_model.get_prompt_embedding_to_save(name).detach().float().cpu()


def prompt_tuning_parameter_count(
    num_virtual_tokens: int, hidden_size: int, num_transformer_submodules: int = 1
) -> int:
    """Trainable parameters of prompt tuning: one ``hidden_size`` vector per virtual token.

    ``num_transformer_submodules`` is 1 for decoder-only models (2 for encoder-decoder ones).

    >>> prompt_tuning_parameter_count(8, 192)
    1536
    """
    if num_virtual_tokens < 1 or hidden_size < 1:
        raise ValueError(
            f"Need positive sizes, got num_virtual_tokens={num_virtual_tokens}, hidden_size={hidden_size}."
        )
    return num_virtual_tokens * hidden_size * num_transformer_submodules


def nearest_tokens(
    peft_model: Any, tokenizer: Any, k: int = 3, adapter_name: str | None = None, skip_special: bool = True
) -> list[list[tuple[str, float]]]:
    """For each virtual token, the ``k`` vocabulary tokens with the most similar input embedding.

    Similarity is the cosine between the virtual token and every row of the model's input
    embedding matrix. Returns one list of ``(token, cosine)`` per virtual token; tokens are
    decoded strings (``repr`` them to see spaces). Special tokens are skipped by default.

    A caveat worth repeating: training moves the virtual tokens anywhere in embedding space;
    the nearest word is a hint about direction, not what the prompt "says".
    """
    virtual = virtual_token_embeddings(peft_model, adapter_name)
    vocab = peft_model.get_input_embeddings().weight.detach().float().cpu()
    sims = torch.nn.functional.normalize(virtual, dim=-1) @ torch.nn.functional.normalize(vocab, dim=-1).T
    if skip_special:
        special = [i for i in getattr(tokenizer, "all_special_ids", []) if 0 <= i < sims.shape[1]]
        if special:
            sims[:, special] = -2.0
    values, ids = sims.topk(k, dim=-1)
    return [[(tokenizer.decode([int(i)]), round(float(v), 4)) for v, i in zip(vs, is_)] for vs, is_ in zip(values, ids)]


@dataclass
class CacheProbe:
    """Greedy answers of one model with the KV cache on and off. See :func:`cache_probe`."""

    prompts: list[str]
    cached: list[str]
    uncached: list[str]
    differ: list[int] = field(default_factory=list)

    @property
    def n_differ(self) -> int:
        return len(self.differ)

    @property
    def agree(self) -> bool:
        """True when every cached answer equals its uncached one."""
        return not self.differ

    def to_dict(self) -> dict[str, Any]:
        return {"prompts": self.prompts, "cached": self.cached, "uncached": self.uncached, "differ": self.differ}

    def __repr__(self) -> str:
        head = f"CacheProbe: {self.n_differ}/{len(self.prompts)} answers differ between use_cache=True and False"
        rows = [
            f"  {self.prompts[i]!r}: cache {self.cached[i]!r} | no cache {self.uncached[i]!r}" for i in self.differ[:3]
        ]
        return "\n".join([head, *rows])

    def _repr_html_(self) -> str:
        rows = [
            (
                self.prompts[i],
                Html(f"<code>{html.escape(self.cached[i])}</code>"),
                Html(f"<code>{html.escape(self.uncached[i])}</code>"),
            )
            for i in self.differ[:3]
        ]
        return (
            f"<p><b>{self.n_differ}/{len(self.prompts)}</b> answers differ between <code>use_cache=True</code> "
            "and <code>False</code></p>" + html_table(["question", "cache on", "cache off"], rows)
        )


def cache_probe(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[dict[str, str]]],
    *,
    max_new_tokens: int = 8,
    batch_size: int = 16,
) -> CacheProbe:
    """Generate greedy answers to ``prompts`` (chat message lists) with and without the KV cache.

    Without a bug the two are identical (the cache is only a speed-up). With prompt/prefix
    tuning in peft 0.21 / transformers 5 they are not. The cached run asks for the cache on
    purpose, so the :class:`~course_utils.evaluation.PromptLearningCacheWarning` is silenced here.

    >>> from course_utils.loading import load_model, load_tokenizer
    >>> probe = cache_probe(load_model(), load_tokenizer(), [[{"role": "user", "content": "What color is the fox?"}]])
    >>> probe.agree                  # a plain model: the cache changes nothing
    True
    """
    import warnings

    from course_utils.evaluation import generate_answers

    prompts = list(prompts)
    with warnings.catch_warnings():  # peft/transformers warn about past_key_values and cache both set
        warnings.simplefilter("ignore")
        cached = generate_answers(
            model,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            use_cache=True,
            progress=False,
        )
        uncached = generate_answers(
            model,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            use_cache=False,
            progress=False,
        )
    differ = [i for i, (a, b) in enumerate(zip(cached, uncached)) if a != b]
    return CacheProbe(prompts=[p[-1]["content"] for p in prompts], cached=cached, uncached=uncached, differ=differ)


def adapter_bytes_on_disk(peft_model: Any) -> int:
    """Bytes of the adapter weights file(s) that ``peft_model.save_pretrained`` writes.

    Saved into a fresh temporary folder that is removed afterwards (nothing the learner saved is
    touched). Only ``adapter_model.*`` counts: the config and the model card are a few KiB of text
    whose size depends on library versions.
    """
    import shutil

    folder = tempfile.mkdtemp(prefix="adapter-size-")
    try:
        peft_model.save_pretrained(folder)
        return sum(
            os.path.getsize(os.path.join(root, f))
            for root, _, files in os.walk(folder)
            for f in files
            if f.startswith("adapter_model")
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
