"""The course's datasets: four small tasks that ship in ``data/datasets/`` as JSON Lines.

=========  ===========================================================  ====================
name       what the model must learn                                    format (TRL's names)
=========  ===========================================================  ====================
shout      answer a question about the world in CAPITALS                ``messages``
terse      answer tersely: subject and value (``The fox: red.``)        ``messages``
prefs      prefer the shouted answer over the plain one (for DPO)       ``prompt/chosen/rejected``
topic      name the topic of a sentence: kind, color, home or food      ``messages``
=========  ===========================================================  ====================

Each has a ``train`` and a held-out ``eval`` split with no overlap; datasheets are next to
the files (``data/datasets/README.md``). On Colab a learner may pass any hub dataset with
the same fields instead.

>>> from course_utils.data import load_task
>>> ds = load_task("shout")
>>> sorted(ds), ds["train"].column_names
(['eval', 'train'], ['messages'])
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict

from course_utils.resources import data_dir

__all__ = [
    "TASKS",
    "DATASETS_DIR",
    "load_task",
    "require_messages",
    "split_prompt",
    "to_prompt_completion",
    "tokenize_for_sft",
]

DATASETS_DIR = data_dir("datasets")  # the clone's data/datasets or the wheel's copy
TASKS: dict[str, str] = {
    "shout": "answer questions about the world in CAPITALS (chat, `messages`)",
    "terse": "answer tersely with subject and value, `The fox: red.` (chat, `messages`)",
    "prefs": "preference pairs: shouted answer chosen over the plain one (`prompt`/`chosen`/`rejected`)",
    "topic": "classify a sentence's topic: kind, color, home or food (chat, `messages`)",
}
SPLITS = ("train", "eval")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_task(name: str, split: str | None = None, *, hub_id: str | None = None) -> DatasetDict | Dataset:
    """Load one of the course tasks as a ``DatasetDict`` (or one ``Dataset`` when ``split`` is given).

    Args:
        name: one of :data:`TASKS` (``shout``, ``terse``, ``prefs``, ``topic``).
        split: ``"train"`` or ``"eval"``; ``None`` returns both.
        hub_id: load this hub dataset instead (it must have the same fields). Needs network.

    The shipped files are read with ``Dataset.from_list`` rather than ``load_dataset("json")``:
    same result, but no cache folder and no progress bars on stderr (which break nbval).

    >>> load_task("prefs", "eval").column_names
    ['prompt', 'chosen', 'rejected']
    """
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}. The course's tasks are: {', '.join(TASKS)}.")
    if split is not None and split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}: use 'train', 'eval' or None for both.")
    if hub_id is not None:
        from datasets import load_dataset

        loaded = load_dataset(hub_id)
        return loaded[split] if split else loaded
    wanted = [split] if split else list(SPLITS)
    parts = {}
    for s in wanted:
        path = DATASETS_DIR / f"{name}_{s}.jsonl"
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing. The datasets ship with the course: re-clone the repository or run "
                "`python scripts/build_course_tiny.py` to regenerate them."
            )
        parts[s] = Dataset.from_list(_read_jsonl(path))
    return parts[split] if split else DatasetDict(parts)


def split_prompt(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    """Split a conversation into the prompt messages and the final assistant answer.

    >>> split_prompt([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "HELLO"}])
    ([{'role': 'user', 'content': 'hi'}], 'HELLO')
    """
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("A task row's `messages` must end with the assistant's answer.")
    return list(messages[:-1]), messages[-1]["content"]


def to_prompt_completion(dataset: Dataset) -> Dataset:
    """``messages`` rows -> TRL's conversational prompt/completion format.

    SFTTrainer computes the loss on the completion only for this format, on any model; the
    alternative, ``assistant_only_loss=True``, needs ``{% generation %}`` markers that
    SmolLM2's chat template does not have.

    >>> row = to_prompt_completion(load_task("shout", "train"))[0]
    >>> row["completion"][0]["role"]
    'assistant'
    """

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        prompt, answer = split_prompt(row["messages"])
        return {"prompt": prompt, "completion": [{"role": "assistant", "content": answer}]}

    return dataset.map(convert, remove_columns=dataset.column_names)


def require_messages(dataset: Dataset, purpose: str, *, name: str = "") -> Dataset:
    """``dataset`` as chat rows (a ``messages`` column) for ``purpose``, or one clear error.

    Conversational ``prompt``/``completion`` rows (:func:`to_prompt_completion`'s format) are
    joined back into ``messages``. An empty dataset, or one with neither format, raises
    ValueError naming the dataset (``name`` or its hub name), its columns and row count, what
    ``purpose`` needs and how to get it.

    >>> require_messages(to_prompt_completion(load_task("shout", "eval")), "evaluate_task").column_names
    ['messages']
    >>> require_messages(load_task("prefs", "eval"), "train_lora", name="prefs")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: train_lora needs chat rows: ... The dataset 'prefs' has columns ['prompt', 'chosen', 'rejected'] ...
    """
    label = name or getattr(getattr(dataset, "info", None), "dataset_name", None) or ""
    what = f"The dataset {label!r}" if label else "The dataset"
    columns = list(dataset.column_names)
    if len(dataset) == 0:
        raise ValueError(
            f"{purpose} got an empty dataset: {what} has 0 rows (columns {columns}). Pass a split with rows, "
            "e.g. load_task('shout', 'eval'); check a .select(range(n)) or .filter(...) that kept nothing."
        )
    if "messages" in columns:
        return dataset
    conversational = {"prompt", "completion"} <= set(columns) and isinstance(dataset[0]["prompt"], list)
    if conversational:
        return dataset.map(
            lambda row: {"messages": list(row["prompt"]) + list(row["completion"])}, remove_columns=columns
        )
    raise ValueError(
        f"{purpose} needs chat rows: a `messages` column (a list of {{role, content}} turns ending with the "
        "assistant's answer), or conversational `prompt`/`completion` columns. "
        f"{what} has columns {columns} ({len(dataset)} rows). Load a chat task (load_task('shout'), 'terse' or "
        "'topic'), or rename your columns; preference pairs (prompt/chosen/rejected) are for DPO and "
        "preference_accuracy()."
    )


def tokenize_for_sft(dataset: Dataset, tokenizer: Any, max_length: int = 128) -> Dataset:
    """Tokenize chat rows for a plain ``transformers.Trainer``: loss on the answer only.

    Labels are ``-100`` on the prompt (system + user turns and the assistant header), so the
    model learns to answer, not to repeat the question. This is what TRL's SFTTrainer does
    for prompt/completion data; notebook 1 spells it out with the bare Trainer.

    >>> from course_utils.loading import load_tokenizer
    >>> tok = load_tokenizer()
    >>> row = tokenize_for_sft(load_task("shout", "train"), tok)[0]
    >>> len(row["input_ids"]) == len(row["labels"]) and row["labels"][0] == -100
    True
    """

    def encode(row: dict[str, Any]) -> dict[str, list[int]]:
        prompt, _ = split_prompt(row["messages"])
        prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
        full_ids = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"]
        if full_ids[: len(prompt_ids)] != prompt_ids:
            raise ValueError(
                "The chat template renders the prompt differently inside the full "
                "conversation; cannot mask the prompt for this tokenizer."
            )
        full_ids = full_ids[:max_length]
        labels = [-100] * len(prompt_ids) + full_ids[len(prompt_ids) :]
        return {"input_ids": full_ids, "attention_mask": [1] * len(full_ids), "labels": labels[:max_length]}

    return dataset.map(encode, remove_columns=dataset.column_names)
