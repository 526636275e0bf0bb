"""course_utils.harness: the course's tasks as lm-evaluation-harness YAML, and reading the harness's answers."""

from __future__ import annotations

import importlib.util
import json

import pytest

from course_utils.harness import HARNESS_TASKS, harness_answers, harness_task_yaml, write_harness_tasks
from course_utils.resources import data_dir


def test_yaml_points_at_the_shipped_data_and_scores_exact_match(tmp_path):
    folder = write_harness_tasks(tmp_path / "tasks")
    assert sorted(p.stem for p in folder.glob("*.yaml")) == [f"course_{t}" for t in HARNESS_TASKS]
    text = (folder / "course_terse.yaml").read_text()
    assert json.dumps(str(data_dir("datasets") / "terse_eval.jsonl")) in text
    for expected in ("output_type: generate_until", "metric: exact_match", "remove_whitespace", "max_gen_toks: 24"):
        assert expected in text
    with pytest.raises(ValueError, match="prefs"):
        harness_task_yaml("prefs")
    with pytest.raises(FileNotFoundError, match="validation"):
        harness_task_yaml("shout", split="validation")


def test_yaml_is_valid_and_reads_back():
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load(harness_task_yaml("shout", max_gen_toks=32))
    assert config["task"] == "course_shout"
    assert config["generation_kwargs"] == {"until": [], "do_sample": False, "max_gen_toks": 32}
    path = config["dataset_kwargs"]["data_files"]["test"]
    with open(path) as fh:
        first = json.loads(fh.readline())
    assert first["messages"][0]["role"] == "user"


def test_harness_answers_orders_rows_and_names_a_missing_task():
    out = {
        "samples": {
            "course_shout": [
                {"doc_id": 1, "filtered_resps": ["B"], "exact_match": 0.0},
                {"doc_id": 0, "filtered_resps": [["A"]], "exact_match": 1.0},
            ]
        }
    }
    assert harness_answers(out, "course_shout") == [("A", 1.0), ("B", 0.0)]
    with pytest.raises(KeyError, match="log_samples"):
        harness_answers(out, "course_terse")


@pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="lm-eval is not installed")
def test_the_harness_loads_the_task_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(write_harness_tasks(tmp_path, tasks=("topic",))), include_defaults=False)
    task = manager.load(["course_topic"])["tasks"]["course_topic"]
    docs = list(task.test_docs())
    assert len(docs) == 48
    assert task.doc_to_text(docs[0]).startswith("Is this sentence about")
    assert task.doc_to_target(docs[0]) in {"kind", "color", "home", "food"}
