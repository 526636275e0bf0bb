"""course_utils.data: the four shipped tasks, their formats and their splits."""

from __future__ import annotations

import json

import pytest

from course_utils.data import TASKS, load_task, split_prompt, to_prompt_completion, tokenize_for_sft


def _key(row: dict) -> str:
    return json.dumps(row.get("messages") or row["prompt"], sort_keys=True)


@pytest.mark.parametrize("name", list(TASKS))
def test_task_has_train_and_eval_with_no_overlap(name):
    ds = load_task(name)
    assert set(ds) == {"train", "eval"}
    assert len(ds["train"]) == 144 and len(ds["eval"]) == 48
    train = {_key(r) for r in ds["train"]}
    held_out = {_key(r) for r in ds["eval"]}
    assert len(held_out) == 48 and not (train & held_out)


@pytest.mark.parametrize("name", ["shout", "terse", "topic"])
def test_chat_tasks_use_trl_messages_format(name):
    row = load_task(name, "train")[0]
    assert list(row) == ["messages"]
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]


def test_preferences_use_trl_prompt_chosen_rejected_format():
    row = load_task("prefs", "train")[0]
    assert set(row) == {"prompt", "chosen", "rejected"}
    assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    assert row["chosen"][0]["content"] == row["rejected"][0]["content"].upper()


def test_tasks_teach_what_their_names_say():
    shout = load_task("shout", "eval")[0]["messages"][-1]["content"]
    terse = load_task("terse", "eval")[0]["messages"][-1]["content"]
    topic_labels = {r["messages"][-1]["content"] for r in load_task("topic", "train")}
    assert shout == shout.upper() and shout.endswith(".")
    assert terse.startswith("The ") and ": " in terse and terse.endswith(".")
    assert topic_labels == {"kind", "color", "home", "food"}


def _content_words(text: str) -> set[str]:
    stop = {"the", "a", "is", "in", "of", "what", "does", "do", "where", "which", "kind", "creature", "this"}
    words = {w.strip(".,:?!").lower() for w in text.split()}
    return {w for w in words if w and w not in stop}


def _answer_prompt_pairs():
    for name in TASKS:
        for split in ("train", "eval"):
            for row in load_task(name, split):
                if "messages" in row:
                    yield name, row["messages"][0]["content"], row["messages"][-1]["content"]
                else:
                    prompt = row["prompt"][-1]["content"]
                    yield name, prompt, row["chosen"][0]["content"]
                    yield name, prompt, row["rejected"][0]["content"]


def test_every_answer_is_derivable_from_its_prompt():
    """The fact is in the prompt: every content word of every answer appears there.

    So a real instruct model can answer before training, and an adapter only changes the form.
    """
    missing = [
        (name, prompt, answer, sorted(_content_words(answer) - _content_words(prompt)))
        for name, prompt, answer in _answer_prompt_pairs()
        if _content_words(answer) - _content_words(prompt)
    ]
    assert not missing, f"{len(missing)} answers need words their prompt lacks, e.g. {missing[:3]}"


def test_derivability_check_catches_a_question_without_its_fact():
    answer = "THE CARP EATS NUTS."
    assert _content_words(answer) - _content_words("What does the carp eat?") == {"eats", "nuts"}
    assert not _content_words(answer) - _content_words("The carp eats nuts. What does the carp eat?")


def test_unknown_task_and_split_are_clear_errors():
    with pytest.raises(ValueError, match="shout, terse, prefs, topic"):
        load_task("sentiment")
    with pytest.raises(ValueError, match="'train', 'eval'"):
        load_task("shout", "test")


def test_prompt_completion_conversion():
    row = to_prompt_completion(load_task("terse", "train"))[0]
    assert set(row) == {"prompt", "completion"}
    assert row["prompt"][-1]["role"] == "user" and row["completion"][0]["role"] == "assistant"


def test_split_prompt_requires_an_assistant_answer():
    with pytest.raises(ValueError, match="must end with the assistant"):
        split_prompt([{"role": "user", "content": "hi"}])


def test_sft_tokenization_masks_the_prompt(tiny_tokenizer):
    ds = load_task("shout", "train").select(range(4))
    rows = tokenize_for_sft(ds, tiny_tokenizer)
    for row, src in zip(rows, ds):
        answer_ids = [t for t in row["labels"] if t != -100]
        text = tiny_tokenizer.decode(answer_ids)
        assert text == src["messages"][-1]["content"] + "<|im_end|>\n"


# --------------------------------------------------------------------------- a learner's own data

CARP = [
    {"prompt": f"The carp {i} eats nuts. What does the carp {i} eat?", "completion": f"THE CARP {i} EATS NUTS."}
    for i in range(10)
]


def _write(path, rows, kind):
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "json":
        path.write_text(json.dumps(rows))
    elif kind == "csv":
        import csv

        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        from datasets import Dataset

        Dataset.from_list(rows).to_parquet(str(path))
    return path


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "parquet"])
def test_local_prompt_completion_files_become_messages(tmp_path, kind):
    path = _write(tmp_path / f"carp.{kind}", CARP, kind)
    ds = load_task(path)
    assert set(ds) == {"train", "eval"} and (len(ds["train"]), len(ds["eval"])) == (8, 2)
    row = ds["train"][0]
    assert list(row) == ["messages"] and [m["role"] for m in row["messages"]] == ["user", "assistant"]
    train = {_key(r) for r in ds["train"]}
    assert not train & {_key(r) for r in ds["eval"]}
    # the same held-out rows on every call, as a str path too; another seed draws others
    assert load_task(str(path), "eval")["messages"] == ds["eval"]["messages"]
    assert load_task(path, "eval", seed=1)["messages"] != ds["eval"]["messages"]


def test_local_messages_and_preference_files(tmp_path):
    chat = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"A{i}"}]}
        for i in range(5)
    ]
    ds = load_task(_write(tmp_path / "chat.jsonl", chat, "jsonl"), "train", eval_fraction=0.4)
    assert len(ds) == 3 and ds.column_names == ["messages"]
    pairs = [{"prompt": f"q{i}", "chosen": f"A{i}", "rejected": f"a{i}"} for i in range(5)]
    pref = load_task(_write(tmp_path / "prefs.csv", pairs, "csv"), "eval")
    assert pref.column_names == ["prompt", "chosen", "rejected"]
    assert pref[0]["prompt"][0]["role"] == "user" and pref[0]["chosen"][0]["role"] == "assistant"


def test_a_dataset_and_a_hub_id_are_accepted(monkeypatch):
    from datasets import Dataset, DatasetDict

    ds = Dataset.from_list(CARP)
    assert len(load_task(ds, "train")) == 8
    loaded = []

    def fake_load_dataset(hub_id):
        loaded.append(hub_id)
        return DatasetDict({"train": ds, "test": ds.select(range(3))})

    monkeypatch.setattr("datasets.load_dataset", fake_load_dataset)
    both = load_task("someone/carp-facts")
    assert loaded == ["someone/carp-facts"] and (len(both["train"]), len(both["eval"])) == (10, 3)
    assert len(load_task("shout", "eval", hub_id="someone/carp-facts")) == 3
    assert loaded == ["someone/carp-facts"] * 2


def test_the_shipped_tasks_are_unchanged():
    from course_utils.data import DATASETS_DIR

    rows = [json.loads(line) for line in (DATASETS_DIR / "shout_train.jsonl").read_text().splitlines() if line]
    assert load_task("shout", "train").to_list() == rows


def test_a_missing_field_is_one_clear_error(tmp_path):
    from course_utils.data import TaskFormatError

    path = _write(tmp_path / "qa.csv", [{"question": "q", "answer": "a"}] * 4, "csv")
    with pytest.raises(TaskFormatError) as err:
        load_task(path)
    message = str(err.value)
    assert str(path) in message and "['question', 'answer']" in message
    assert "`messages`" in message and "`prompt` + `completion`" in message and "`chosen`" in message


@pytest.mark.parametrize(
    "rows, match",
    [
        ([{"messages": "user: hi / assistant: HI"}] * 3, "CSV cannot hold lists"),
        ([{"messages": [{"role": "user", "content": "hi"}]}] * 3, "does not end with the assistant"),
        ([{"prompt": "hi", "completion": None}] * 3, "row 0's `completion` is None"),
    ],
)
def test_bad_rows_name_the_row_and_field(tmp_path, rows, match):
    from course_utils.data import TaskFormatError

    with pytest.raises(TaskFormatError, match=match):
        load_task(_write(tmp_path / "bad.jsonl", rows, "jsonl"))


def test_bad_sources_and_fractions_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such file"):
        load_task(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="eval_fraction"):
        load_task(_write(tmp_path / "carp.jsonl", CARP, "jsonl"), eval_fraction=1.0)
    with pytest.raises(ValueError, match="at least 2"):
        load_task(_write(tmp_path / "one.jsonl", CARP[:1], "jsonl"))
    with pytest.raises(TypeError, match="task name"):
        load_task(42)


def test_require_messages_joins_conversational_pairs_and_names_what_is_wrong():
    from datasets import Dataset

    from course_utils.data import require_messages, to_prompt_completion

    shout = load_task("shout", "eval")
    assert require_messages(shout, "x") is shout
    assert require_messages(to_prompt_completion(shout), "x")["messages"] == shout["messages"]
    with pytest.raises(ValueError, match=r"The dataset 'mine' has columns \['question', 'answer'\] \(1 rows\)"):
        require_messages(Dataset.from_list([{"question": "q", "answer": "a"}]), "evaluate_task", name="mine")
