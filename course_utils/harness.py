"""The course's tasks as lm-evaluation-harness tasks: evaluate an adapter the way the field does, offline.

`lm-evaluation-harness <https://github.com/EleutherAI/lm-evaluation-harness>`_ (``pip install lm-eval``)
reads a task from a YAML file: where the data is, how a row becomes a prompt and a target, how to
generate and how to score. :func:`write_harness_tasks` writes one YAML per course task into a
folder (``course_shout``, ``course_terse``, ``course_topic``), pointing at the JSON Lines files that
ship with the course (:func:`course_utils.resources.data_dir`, so it works from a clone and from an
installed wheel alike). The YAMLs are written, not shipped, because the harness reads
``data_files`` relative to the working directory, not to the YAML: the absolute path of this
install's data goes into them.

Each task: ``generate_until`` (greedy, at most ``max_gen_toks`` new tokens), the user turn as the
prompt (pass ``apply_chat_template=True`` so the model sees the chat template, as in training), the
assistant turn as the target, exact match after stripping white space at both ends: the same
question, answer and score as :func:`course_utils.evaluation.evaluate_task`. One detail to match:
with transformers 5, a model whose ``generation_config.json`` sets ``max_new_tokens`` (course-tiny: 32)
generates that many tokens whatever the harness's ``max_gen_toks`` says (transformers warns that both
were set), so give the task and ``evaluate_task(max_new_tokens=...)`` the same number.

>>> import tempfile
>>> folder = write_harness_tasks(tempfile.mkdtemp(), tasks=("shout",))
>>> sorted(p.name for p in folder.glob("*.yaml"))
['course_shout.yaml']
>>> "output_type: generate_until" in (folder / "course_shout.yaml").read_text()
True
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from course_utils.resources import data_dir

__all__ = ["HARNESS_TASKS", "harness_answers", "harness_task_yaml", "write_harness_tasks"]

#: The course tasks the harness can run (prefs is a preference set, scored by log-likelihoods instead).
HARNESS_TASKS = ("shout", "terse", "topic")


def harness_task_yaml(task: str, *, split: str = "eval", max_gen_toks: int = 24) -> str:
    """The YAML text of the harness task ``course_<task>`` over the shipped ``<task>_<split>.jsonl``.

    >>> print(harness_task_yaml("terse").splitlines()[0])
    task: course_terse
    """
    if task not in HARNESS_TASKS:
        raise ValueError(f"Unknown course task {task!r} for the harness: use one of {', '.join(HARNESS_TASKS)}.")
    path = data_dir("datasets") / f"{task}_{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"No shipped file {path.name} for task {task!r} and split {split!r}.")
    # json.dumps gives a quoted string YAML reads back unchanged (a Windows path's backslashes too)
    return f"""task: course_{task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(str(path))}
test_split: test
output_type: generate_until
doc_to_text: "{{{{messages[0].content}}}}"
doc_to_target: "{{{{messages[1].content}}}}"
target_delimiter: ""
generation_kwargs:
  until: []
  do_sample: false
  max_gen_toks: {int(max_gen_toks)}
filter_list:
  - name: strip
    filter:
      - function: remove_whitespace
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_harness_tasks(
    folder: str | Path, *, tasks: Sequence[str] = HARNESS_TASKS, split: str = "eval", max_gen_toks: int = 24
) -> Path:
    """Write ``course_<task>.yaml`` for each of ``tasks`` into ``folder``; returns the folder.

    Give the folder to the harness: ``lm_eval --include_path <folder> --tasks course_shout ...`` or
    ``lm_eval.simple_evaluate(tasks=["course_shout"], task_manager=TaskManager(include_path=str(folder)))``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        (folder / f"course_{task}.yaml").write_text(harness_task_yaml(task, split=split, max_gen_toks=max_gen_toks))
    return folder


def harness_answers(results: Mapping[str, Any], task: str) -> list[tuple[str, float]]:
    """``(answer after the filter, exact match)`` per row of ``task``, in the data's order.

    ``results`` is what ``lm_eval.simple_evaluate(..., log_samples=True)`` returned; ``task`` a name
    such as ``"course_shout"``.

    >>> harness_answers({"samples": {"t": [{"doc_id": 1, "filtered_resps": [["B"]], "exact_match": 0.0},
    ...                                     {"doc_id": 0, "filtered_resps": ["A"], "exact_match": 1.0}]}}, "t")
    [('A', 1.0), ('B', 0.0)]
    """
    samples = results.get("samples", {})
    if task not in samples:
        raise KeyError(
            f"No logged samples for task {task!r} (have {sorted(samples)}): call simple_evaluate(..., log_samples=True)."
        )
    rows = sorted(samples[task], key=lambda s: s["doc_id"])
    out = []
    for row in rows:
        answer = row["filtered_resps"]
        while isinstance(answer, (list, tuple)):  # one response per request, one request per row
            answer = answer[0]
        out.append((str(answer), float(row["exact_match"])))
    return out
