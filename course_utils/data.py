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
the files (``data/datasets/README.md``). A learner may pass their own data instead, in the same
formats: a JSON Lines, CSV or Parquet file, a ``datasets.Dataset`` or a hub id (:func:`load_task`).

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
    "DATASETS_DIR",
    "FORMATS",
    "TASKS",
    "TaskFormatError",
    "load_task",
    "require_messages",
    "split_prompt",
    "to_course_format",
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


class TaskFormatError(ValueError):
    """A dataset's rows are in none of the course's formats (the message names the source and the columns)."""


#: What :func:`load_task` reads, for error messages.
FORMATS = (
    "`messages` (a list of {role, content} turns ending with the assistant's answer); "
    "`prompt` + `completion` (text, or lists of turns; in CSV, text); "
    "`prompt` + `chosen` + `rejected` (preference pairs, text or lists of turns)"
)
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_EVAL_NAMES = ("eval", "test", "validation", "valid")  # a hub dataset's held-out split, in order of preference


def load_task(
    name: str | Path | Dataset | DatasetDict,
    split: str | None = None,
    *,
    hub_id: str | None = None,
    eval_fraction: float = 0.2,
    seed: int = 0,
) -> DatasetDict | Dataset:
    """Load a task as a ``DatasetDict`` with ``train`` and ``eval`` (or one ``Dataset`` when ``split`` is given).

    Args:
        name: one of :data:`TASKS` (``shout``, ``terse``, ``prefs``, ``topic``); or your own data:
            a local ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file, a ``datasets.Dataset`` or
            ``DatasetDict``, or a hub dataset id (any name with a ``/`` that is not a local file).
        split: ``"train"`` or ``"eval"``; ``None`` returns both.
        hub_id: load this hub dataset (same as passing it as ``name``). Needs network.
        eval_fraction, seed: for data without a held-out split (a file, a ``Dataset``, a hub dataset
            with ``train`` only), ``eval`` is this fraction of the rows, drawn with ``seed`` by
            ``Dataset.train_test_split``: the same rows on every run, never also in ``train``. A hub
            dataset's own ``eval``/``test``/``validation`` split is used as it is.

    Your data may be in any of the course's formats (TRL's names): ``messages``; ``prompt`` and
    ``completion``; ``prompt``, ``chosen`` and ``rejected``. Text fields become chat turns (the prompt a
    ``user`` turn, the answers ``assistant`` turns), and ``prompt``/``completion`` rows become ``messages``,
    the format :func:`course_utils.evaluation.evaluate_task` and :func:`course_utils.training.train_lora`
    read. Rows in none of these raise :class:`TaskFormatError`, naming the source, the columns seen and
    the formats accepted.

    The shipped files are read with ``Dataset.from_list`` rather than ``load_dataset("json")``:
    same result, but no cache folder and no progress bars on stderr (which break nbval).

    >>> load_task("prefs", "eval").column_names
    ['prompt', 'chosen', 'rejected']
    >>> rows = [{"prompt": f"What does the carp {i} eat?", "completion": "NUTS."} for i in range(10)]
    >>> mine = load_task(Dataset.from_list(rows))
    >>> len(mine["train"]), len(mine["eval"]), mine["eval"][0]["messages"][1]
    (8, 2, {'role': 'assistant', 'content': 'NUTS.'})
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}: use 'train', 'eval' or None for both.")
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be between 0 and 1 (exclusive), got {eval_fraction!r}; 0.2 is usual.")
    if hub_id is not None:
        return _own_data(_load_hub(hub_id), f"hub dataset {hub_id!r}", split, eval_fraction, seed)
    if isinstance(name, (Dataset, DatasetDict)):
        return _own_data(name, f"the {type(name).__name__} passed", split, eval_fraction, seed)
    if not isinstance(name, (str, Path)):
        raise TypeError(
            f"load_task got a {type(name).__name__}; pass a task name ({', '.join(TASKS)}), a file path, "
            "a datasets.Dataset or a hub id."
        )
    text = str(name)
    if isinstance(name, str) and name in TASKS:
        return _load_shipped(name, split)
    path = Path(text).expanduser()
    if path.is_file():
        return _own_data(_read_file(path), str(path), split, eval_fraction, seed)
    if path.suffix.lower() in FILE_SUFFIXES or isinstance(name, Path):
        raise FileNotFoundError(f"No such file: {path} (resolved to {path.resolve()}). Check the path.")
    if "/" in text:
        return _own_data(_load_hub(text), f"hub dataset {text!r}", split, eval_fraction, seed)
    raise ValueError(
        f"Unknown task {name!r}. The course's tasks are: {', '.join(TASKS)}. For your own data pass a "
        f"{'/'.join(FILE_SUFFIXES)} file path, a datasets.Dataset, or a hub id such as 'owner/name'."
    )


def _load_shipped(name: str, split: str | None) -> DatasetDict | Dataset:
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


def _load_hub(hub_id: str) -> Dataset | DatasetDict:
    from datasets import load_dataset

    return load_dataset(hub_id)


def _read_file(path: Path) -> Dataset:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return Dataset(pq.read_table(path))
    if suffix == ".csv":
        import csv

        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    elif suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")
        try:
            whole = json.loads(text)  # a .json file may hold one list of rows
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, list):
            rows = whole
        else:
            try:
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            except json.JSONDecodeError as err:
                raise TaskFormatError(
                    f"{path}: line {err.lineno if whole is None else 1} is not JSON ({err.msg}). JSON Lines holds "
                    'one object per line, e.g. {"prompt": "...", "completion": "..."}.'
                ) from None
    else:
        raise ValueError(f"{path}: unknown file type {suffix!r}; load_task reads {', '.join(FILE_SUFFIXES)} files.")
    if not rows:
        raise TaskFormatError(f"{path} holds no rows.")
    return Dataset.from_list(rows)


def _own_data(
    data: Dataset | DatasetDict, source: str, split: str | None, eval_fraction: float, seed: int
) -> DatasetDict | Dataset:
    if isinstance(data, DatasetDict):
        held_out = next((k for k in _EVAL_NAMES if k in data), None)
        if "train" in data and held_out is not None:
            parts = DatasetDict({"train": data["train"], "eval": data[held_out]})
        elif "train" in data or len(data) == 1:
            parts = _hold_out(data["train" if "train" in data else next(iter(data))], source, eval_fraction, seed)
        else:
            raise ValueError(
                f"{source} has splits {sorted(data)}: none is 'train', and there are several. "
                "Pick one yourself, e.g. load_task(ds['yours'])."
            )
    else:
        parts = _hold_out(data, source, eval_fraction, seed)
    parts = DatasetDict({k: to_course_format(v, source=f"{source} ({k})") for k, v in parts.items()})
    return parts[split] if split else parts


def _hold_out(dataset: Dataset, source: str, eval_fraction: float, seed: int) -> DatasetDict:
    if len(dataset) < 2:
        raise ValueError(f"{source} has {len(dataset)} row(s): at least 2 are needed for a train and an eval split.")
    halves = dataset.train_test_split(test_size=eval_fraction, seed=seed, shuffle=True)
    return DatasetDict({"train": halves["train"], "eval": halves["test"]})


def _turns(value: Any, role: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _valid_turns(value: Any) -> bool:
    if isinstance(value, str):
        return True
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
        )
    )


def to_course_format(dataset: Dataset, source: str = "this dataset") -> Dataset:
    """Bring rows to the course's chat formats: ``messages``, or ``prompt``/``chosen``/``rejected`` turns.

    ``prompt``/``completion`` rows become ``messages`` (the prompt turns, then the answer); text becomes a
    ``user`` turn (prompts) or an ``assistant`` turn (answers). Other columns are dropped. Raises
    :class:`TaskFormatError` naming ``source``, the columns seen and the formats accepted.

    >>> to_course_format(Dataset.from_list([{"prompt": "Hi?", "completion": "HELLO."}]))[0]["messages"][0]
    {'role': 'user', 'content': 'Hi?'}
    """
    columns = dataset.column_names
    if "messages" in columns:
        kind, needed = "messages", ["messages"]
    elif {"prompt", "chosen", "rejected"} <= set(columns):
        kind, needed = "preference", ["prompt", "chosen", "rejected"]
    elif {"prompt", "completion"} <= set(columns):
        kind, needed = "prompt/completion", ["prompt", "completion"]
    else:
        raise TaskFormatError(
            f"{source}: no course format in its columns {columns}. The course reads {FORMATS}. "
            "Rename your columns to one of these."
        )
    for i, row in enumerate(dataset.select_columns(needed)):
        for key in needed:
            value = row[key]
            if kind == "messages" and isinstance(value, str):
                raise TaskFormatError(
                    f"{source}: row {i}'s `messages` is text ({value[:60]!r}), not a list of turns; CSV cannot hold "
                    "lists, so write `prompt` and `completion` columns of text instead, or use JSON Lines."
                )
            if value is None or not _valid_turns(value):
                raise TaskFormatError(
                    f"{source}: row {i}'s `{key}` is {value!r:.80}; expected text or a list of {{role, content}} "
                    f"turns. The course reads {FORMATS}."
                )
        if kind == "messages" and row["messages"][-1]["role"] != "assistant":
            raise TaskFormatError(f"{source}: row {i}'s `messages` does not end with the assistant's answer.")

    if kind == "messages":
        convert = lambda row: {"messages": _turns(row["messages"], "user")}  # noqa: E731
    elif kind == "preference":
        convert = lambda row: {  # noqa: E731
            "prompt": _turns(row["prompt"], "user"),
            "chosen": _turns(row["chosen"], "assistant"),
            "rejected": _turns(row["rejected"], "assistant"),
        }
    else:
        convert = lambda row: {  # noqa: E731
            "messages": _turns(row["prompt"], "user") + _turns(row["completion"], "assistant")
        }
    return dataset.map(convert, remove_columns=columns)


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
