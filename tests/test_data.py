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


def test_require_messages_joins_conversational_pairs_and_names_what_is_wrong():
    from datasets import Dataset

    from course_utils.data import require_messages, to_prompt_completion

    shout = load_task("shout", "eval")
    assert require_messages(shout, "x") is shout
    assert require_messages(to_prompt_completion(shout), "x")["messages"] == shout["messages"]
    with pytest.raises(ValueError, match=r"The dataset 'mine' has columns \['question', 'answer'\] \(1 rows\)"):
        require_messages(Dataset.from_list([{"question": "q", "answer": "a"}]), "evaluate_task", name="mine")
