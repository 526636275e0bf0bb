"""Task evaluation: batched greedy generation, scored by exact match (or containment, or your rule), for any model.

Works the same on a base model, a ``PeftModel`` (with or without active adapters) and a
merged model.

The KV-cache trap: with today's peft (0.21) and transformers (5.x), a prompt-learning model
(prompt tuning, prefix tuning, p-tuning) generates wrong text with ``use_cache=True``
(notebooks/05_prompt_tuning.py shows it; tests/test_prompt_tuning.py notices when upstream fixes
it). :func:`generation_use_cache` is the one place that decides ``use_cache`` for every course_utils
function that generates: off for a prompt-learning ``PeftModel`` (said once per process), on for
everything else, and an explicit ``use_cache=True`` is honoured with a warning.

>>> from course_utils.loading import load_model, load_tokenizer
>>> from course_utils.data import load_task
>>> model, tok = load_model(), load_tokenizer()
>>> result = evaluate_task(model, tok, load_task("shout", "eval"), progress=False)
>>> result.accuracy <= 0.2      # the base model answers in a normal sentence
True
"""

from __future__ import annotations

import html
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import Dataset

from course_utils.data import require_messages, split_prompt

__all__ = [
    "SCORERS",
    "EvalResult",
    "PromptLearningCacheWarning",
    "evaluate_task",
    "generate_answers",
    "generation_use_cache",
    "is_prompt_learning",
    "preference_accuracy",
    "sequence_logprob",
]

_log = logging.getLogger(__name__)
_cache_notice_shown = False  # the "cache turned off" line is printed once per process


class PromptLearningCacheWarning(UserWarning):
    """``use_cache=True`` was asked for a prompt-learning model, whose cached generation is wrong today."""


def is_prompt_learning(model: Any) -> bool:
    """True when ``model`` is a ``PeftModel`` whose active adapter is prompt learning.

    Prompt tuning, prefix tuning and p-tuning (and the other virtual-token methods) say so in their
    peft config: ``peft_config[active_adapter].is_prompt_learning``. Base models, merged models and
    weight adapters (LoRA, IA3, ...) are not.

    >>> from peft import LoraConfig, PromptTuningConfig, get_peft_model
    >>> from course_utils.loading import load_model
    >>> is_prompt_learning(get_peft_model(load_model(), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)))
    True
    >>> is_prompt_learning(get_peft_model(load_model(), LoraConfig(r=2, target_modules=["q_proj"])))
    False
    """
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict) or not configs:
        return False
    active = getattr(model, "active_adapter", None)
    if isinstance(active, (list, tuple)):  # some peft models report several active adapters
        active = active[0] if active else None
    config = configs.get(active) if active is not None else next(iter(configs.values()))
    return bool(getattr(config, "is_prompt_learning", False))


def generation_use_cache(model: Any, use_cache: bool | None = None) -> bool:
    """The ``use_cache`` to pass to ``model.generate``: off for prompt-learning models, else on.

    - ``use_cache=None`` (the default of every course_utils function that generates): ``False``
      for a prompt-learning ``PeftModel`` (the first time, one line says so, once per process),
      ``True`` for every other model (the cache is a large speed-up and changes nothing there).
    - An explicit ``True`` or ``False`` is honoured; ``True`` on a prompt-learning model also
      raises a :class:`PromptLearningCacheWarning` that names the trap.

    Hand-written because neither peft nor transformers guards against it today.

    >>> from course_utils.loading import load_model
    >>> generation_use_cache(load_model())          # a plain model keeps the cache
    True
    """
    prompt_learning = is_prompt_learning(model)
    if use_cache is None:
        if prompt_learning:
            _announce_cache_off(model)
        return not prompt_learning
    if use_cache and prompt_learning:
        warnings.warn(
            f"use_cache=True on a prompt-learning model ({_peft_type(model)}): with today's peft/transformers its "
            "cached generation is wrong (the KV-cache trap, notebooks/05_prompt_tuning.py). Leave use_cache unset "
            "(course_utils then turns the cache off) unless you are showing the trap.",
            PromptLearningCacheWarning,
            stacklevel=2,
        )  # the course_utils caller: quiet() mutes torch's frames
    return bool(use_cache)


def _peft_type(model: Any) -> str:
    active = getattr(model, "active_adapter", None)
    config = getattr(model, "peft_config", {}).get(active)
    peft_type = getattr(config, "peft_type", None)
    return str(getattr(peft_type, "value", peft_type))


def _announce_cache_off(model: Any) -> None:
    global _cache_notice_shown
    if _cache_notice_shown:
        return
    _cache_notice_shown = True
    # logging, not warnings.warn: one plain line (no file path) that reads the same on every machine
    _log.warning(
        "course_utils: %s is prompt learning, so it generates with use_cache=False (its KV-cached "
        "generation is wrong today, see notebooks/05_prompt_tuning.py); said once.",
        _peft_type(model),
    )


def _exact(answer: str, expected: str) -> bool:
    return answer == expected


def _contains(answer: str, expected: str) -> bool:
    return expected.casefold() in answer.casefold()


#: The scorers :func:`evaluate_task` knows by name: each gets the normalized answer and reference.
SCORERS: dict[str, Callable[[str, str], bool]] = {
    "exact": _exact,  # the answer is the reference, character for character
    "contains": _contains,  # the reference appears in the answer, ignoring case (a chatty real model)
}


def _scorer(scorer: str | Callable[[str, str], bool]) -> tuple[str, Callable[[str, str], bool]]:
    if callable(scorer):
        return getattr(scorer, "__name__", type(scorer).__name__), scorer
    if isinstance(scorer, str) and scorer in SCORERS:
        return scorer, SCORERS[scorer]
    raise ValueError(
        f"Unknown scorer {scorer!r}: use 'exact' (the answer equals the reference), 'contains' (the reference "
        "appears in the answer, ignoring case) or a function (answer, expected) -> bool."
    )


@dataclass
class EvalResult:
    """Accuracy on a task's eval split, with a few rows to look at, and the scorer that judged them."""

    accuracy: float
    correct: int
    total: int
    examples: list[dict[str, Any]] = field(default_factory=list)
    name: str = ""
    scorer: str = "exact"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "accuracy": self.accuracy,
            "correct": self.correct,
            "total": self.total,
            "scorer": self.scorer,
            "examples": self.examples,
        }

    def _scored_by(self) -> str:
        return "" if self.scorer == "exact" else f", scorer {self.scorer}"  # exact match: the course's default

    def __repr__(self) -> str:
        head = (
            f"{self.name + ': ' if self.name else ''}accuracy {self.accuracy:.1%} ({self.correct}/{self.total}"
            f"{self._scored_by()})"
        )
        rows = [
            f"  {'ok ' if e['correct'] else 'BAD'} {e['question']!r} -> {e['answer']!r} (expected {e['expected']!r})"
            for e in self.examples
        ]
        return "\n".join([head, *rows])

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{'&#10004;' if e['correct'] else '&#10008;'}</td><td>{html.escape(e['question'])}</td>"
            f"<td><code>{html.escape(e['answer'])}</code></td><td><code>{html.escape(e['expected'])}</code></td></tr>"
            for e in self.examples
        )
        title = html.escape(self.name + ": ") if self.name else ""
        return (
            f"<p><b>{title}accuracy {self.accuracy:.1%}</b> ({self.correct}/{self.total}{html.escape(self._scored_by())})</p>"
            "<table><tr><th></th><th>question</th><th>model's answer</th><th>expected</th></tr>"
            f"{rows}</table>"
        )


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[dict[str, str]]],
    *,
    max_new_tokens: int = 24,
    batch_size: int = 16,
    use_cache: bool | None = None,
    progress: bool = True,
) -> list[str]:
    """Greedy answers to chat prompts (lists of messages), decoded without special tokens.

    ``use_cache=None`` lets :func:`generation_use_cache` decide (off for prompt-learning models).

    >>> from course_utils.loading import load_model, load_tokenizer
    >>> answers = generate_answers(load_model(), load_tokenizer(),
    ...                            [[{"role": "user", "content": "What color is the fox?"}]], progress=False)
    >>> answers[0].startswith("The fox is")  # the colour itself differs between CPU families
    True
    """
    from tqdm.auto import tqdm

    use_cache = generation_use_cache(model, use_cache)
    was_training = model.training
    model.eval()
    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    device = _model_device(model)
    answers: list[str] = []
    batches = range(0, len(prompts), batch_size)
    for start in tqdm(batches, desc="generating", disable=not progress, leave=False):
        chunk = list(prompts[start : start + batch_size])
        enc = tokenizer.apply_chat_template(
            chunk, add_generation_prompt=True, tokenize=True, padding=True, return_dict=True, return_tensors="pt"
        ).to(device)
        try:
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=use_cache,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        except RuntimeError as err:
            if not (use_cache and is_prompt_learning(model)):
                raise
            # The KV-cache bug of prompt/prefix tuning (notebook 05) crashes on some architectures
            # (OPT's learned positions get an empty slice) instead of giving wrong text: no answer.
            _say_once(
                f"note: generate(use_cache=True) fails with this prompt-learning model ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:100]}); its answers are empty. Use use_cache=False."
            )
            answers.extend([""] * len(chunk))
            continue
        new = out[:, enc["input_ids"].shape[1] :]
        answers.extend(t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True))
    model.train(was_training)
    return answers


_SAID: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _SAID:
        _SAID.add(message)
        print(message)


def evaluate_task(
    model: Any,
    tokenizer: Any,
    dataset: Dataset,
    *,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    n_examples: int = 3,
    normalize: Callable[[str], str] = str.strip,
    use_cache: bool | None = None,
    progress: bool = True,
    name: str = "",
    scorer: str | Callable[[str, str], bool] = "exact",
) -> EvalResult:
    """Accuracy of greedy answers on a ``messages`` dataset (e.g. a task's eval split).

    Args:
        max_new_tokens: default: enough for the longest reference answer plus a margin.
        normalize: applied to both the answer and the reference before scoring.
        scorer: ``"exact"`` (default): the answer equals the reference; ``"contains"``: the reference
            appears in the answer, ignoring case (a real instruct model often says more than the
            reference); or a function ``(answer, expected) -> bool``. The result names it (``.scorer``).
        n_examples: how many rows to keep for display (the first ones, so re-runs match).
        use_cache: ``None`` (default): off for prompt-learning models, on for the rest
            (:func:`generation_use_cache`); ``True``/``False`` force it.

    >>> from course_utils.loading import load_model, load_tokenizer
    >>> from course_utils.data import load_task
    >>> evaluate_task(load_model(), load_tokenizer(), load_task("terse", "eval"), progress=False).accuracy
    0.0
    >>> evaluate_task(load_model(), load_tokenizer(), load_task("terse", "eval").select(range(2)),
    ...               progress=False, scorer="contains").scorer
    'contains'
    """
    scorer_name, score = _scorer(scorer)
    dataset = require_messages(dataset, "evaluate_task", name=name)
    pairs = [split_prompt(m) for m in dataset["messages"]]
    prompts = [p for p, _ in pairs]
    references = [r for _, r in pairs]
    if max_new_tokens is None:
        longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references)
        max_new_tokens = longest + 4
    answers = generate_answers(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        use_cache=use_cache,
        progress=progress,
    )
    ok = [bool(score(normalize(a), normalize(r))) for a, r in zip(answers, references)]
    examples = [
        {"question": p[-1]["content"], "answer": a, "expected": r, "correct": c}
        for p, a, r, c in list(zip(prompts, answers, references, ok))[:n_examples]
    ]
    correct = sum(ok)
    return EvalResult(
        accuracy=correct / len(ok), correct=correct, total=len(ok), examples=examples, name=name, scorer=scorer_name
    )


@torch.no_grad()
def sequence_logprob(model: Any, tokenizer: Any, prompt: list[dict[str, str]], answer: str) -> float:
    """Sum of log-probabilities the model gives to ``answer`` (an assistant turn) after ``prompt``.

    >>> from course_utils.loading import load_model, load_tokenizer
    >>> q = [{"role": "user", "content": "What color is the fox?"}]
    >>> m, t = load_model(), load_tokenizer()
    >>> sequence_logprob(m, t, q, "The fox is grey.") > sequence_logprob(m, t, q, "THE FOX IS GREY.")
    True
    """
    device = _model_device(model)
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]
    full_ids = tokenizer.apply_chat_template(
        prompt + [{"role": "assistant", "content": answer}], tokenize=True, return_dict=True
    )["input_ids"]
    ids = torch.tensor([full_ids], device=device)
    logits = model(input_ids=ids).logits.float()
    logprobs = torch.log_softmax(logits[0, :-1], dim=-1)
    targets = ids[0, 1:]
    token_lp = logprobs.gather(-1, targets[:, None])[:, 0]
    return float(token_lp[len(prompt_ids) - 1 :].sum())


def preference_accuracy(model: Any, tokenizer: Any, dataset: Dataset) -> float:
    """Fraction of preference pairs where the model gives the chosen answer a higher log-probability.

    The held-out measure of what DPO changed (generations of a tiny model are a noisy read).

    >>> from course_utils.loading import load_model, load_tokenizer
    >>> from course_utils.data import load_task
    >>> preference_accuracy(load_model(), load_tokenizer(), load_task("prefs", "eval")) < 0.2
    True
    """
    was_training = model.training
    model.eval()
    wins = 0
    for row in dataset:
        chosen = sequence_logprob(model, tokenizer, row["prompt"], row["chosen"][-1]["content"])
        rejected = sequence_logprob(model, tokenizer, row["prompt"], row["rejected"][-1]["content"])
        wins += chosen > rejected
    model.train(was_training)
    return wins / len(dataset)
