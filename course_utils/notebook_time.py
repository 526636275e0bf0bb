"""How long the notebooks' training cells take on this CPU, predicted before running them.

:data:`NOTEBOOK_RUNS` lists every LoRA training run of the notebooks on the default model
(course-tiny): its task, adapter settings, steps and batch size, as the notebooks' parameter cells
and ``course_utils.hyperparameters.suggest`` set them (tests/test_step_time.py checks the table
against the notebooks). `predict_notebook_runs` predicts each with
`course_utils.step_time.predict_step_time` on a measured :class:`~course_utils.step_time.CPU`:
float32, no autocast, a batch padded to its longest row (``DataCollatorForSeq2Seq(padding=True)``),
``Trainer``'s gradient clipping and per-tensor AdamW. Runs the model does not cover (prompt
tuning, prefix tuning, IA3, 4-bit on a CPU, the multi-process run of 07) are listed as not
predicted. `course-utils doctor` prints the minutes per notebook; `benchmarks/planner_time.py`
trains each run and prints the error.

>>> runs = [r for r in NOTEBOOK_RUNS if r.notebook == "02_adapters"]
>>> [(r.task, r.steps, r.r) for r in runs]
[('shout', 150, 8), ('topic', 150, 8)]
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from course_utils.recipe import Recipe
from course_utils.resources import data_dir
from course_utils.step_time import CPU, TimeEstimate, predict_step_time

__all__ = [
    "NOTEBOOK_RUNS",
    "NotebookRun",
    "padded_length",
    "predict_notebook_runs",
    "notebook_minutes",
    "training_time_lines",
]

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
QV = ("q_proj", "v_proj")


@dataclass(frozen=True)
class NotebookRun:
    """One training run of a notebook: what it trains (``kind``: "lora", "dpo", or not modelled), how long.

    >>> NOTEBOOK_RUNS[0].label
    '01_lora_training: Trainer, LoRA r16 on attention'
    """

    notebook: str
    cell: str
    task: str
    kind: str  # "lora" (Trainer / train_adapter / SFTTrainer), "dpo", or "not modelled: <why>"
    steps: int
    batch_size: int
    r: int = 8
    target_modules: str | tuple[str, ...] = QV
    lora_dropout: float = 0.05

    @property
    def label(self) -> str:
        return f"{self.notebook}: {self.cell}"

    @property
    def modelled(self) -> bool:
        return self.kind in ("lora", "dpo")

    def recipe(self, seq_len: int) -> Recipe:
        """The run as a `Recipe` on the CPU: float32 weights, no autocast (DPO: chosen and rejected rows)."""
        rows = 2 * self.batch_size if self.kind == "dpo" else self.batch_size
        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        return Recipe(
            method="lora",
            dtype="float32",
            autocast=False,
            r=self.r,
            lora_alpha=2 * self.r,
            lora_dropout=self.lora_dropout,
            target_modules=targets,
            batch_size=rows,
            seq_len=max(1, seq_len),
        )


def _runs() -> list[NotebookRun]:
    from course_utils.hyperparameters import suggest
    from course_utils.variants import short_budget

    lora, dpo = suggest("course-tiny", "lora"), suggest("course-tiny", "dpo")
    pt, qlora = suggest("course-tiny", "prompt_tuning"), suggest("course-tiny", "qlora")
    runs = [
        NotebookRun(
            "01_lora_training",
            "Trainer, LoRA r16 on attention",
            "shout",
            "lora",
            lora.max_steps,
            lora.batch_size,
            16,
            ATTENTION,
        )
    ]
    runs += [
        NotebookRun(
            "01_lora_training",
            f"sweep, r{r} on {'attention' if t != 'all-linear' else t}",
            "shout",
            "lora",
            40,
            8,
            r,
            t,
        )
        for r, t in [
            (1, ATTENTION),
            (2, ATTENTION),
            (8, ATTENTION),
            (1, "all-linear"),
            (8, "all-linear"),
        ]
    ]
    runs += [NotebookRun("02_adapters", f"{task} adapter", task, "lora", 150, 8, 8, QV) for task in ("shout", "topic")]
    runs.append(
        NotebookRun(
            "03_merging", "LoRA r8 all-linear", "shout", "lora", lora.max_steps, lora.batch_size, 8, "all-linear", 0.0
        )
    )
    runs.append(
        NotebookRun(
            "04_trl",
            "SFTTrainer, LoRA r16 all-linear",
            "terse",
            "lora",
            lora.max_steps,
            lora.batch_size,
            16,
            "all-linear",
        )
    )
    runs.append(
        NotebookRun(
            "04_trl",
            "DPOTrainer, LoRA r8 all-linear",
            "prefs",
            "dpo",
            dpo.max_steps,
            dpo.batch_size,
            8,
            "all-linear",
            0.0,
        )
    )
    runs.append(NotebookRun("05_prompt_tuning", "LoRA r8 on q, v", "terse", "lora", 60, pt.batch_size, 8, QV))
    for cell in ("prompt tuning", "prefix tuning", "IA3"):
        runs.append(NotebookRun("05_prompt_tuning", cell, "terse", "not modelled: no LoRA matmuls", 60, pt.batch_size))
    runs.append(
        NotebookRun(
            "06_qlora",
            "QLoRA r8 all-linear",
            "shout",
            "not modelled: bitsandbytes' 4-bit CPU path",
            qlora.max_steps,
            qlora.batch_size,
        )
    )
    runs += [
        NotebookRun("08_serving", f"{task} adapter", task, "lora", lora.max_steps, lora.batch_size, 16, QV)
        for task in ("shout", "terse")
    ]
    short = short_budget(lora)
    runs.append(
        NotebookRun(
            "09_lora_variants",
            f"7 variants x 3 seeds, {short.max_steps} steps each",
            "shout",
            "not modelled: its own training loop (course_utils.variants.train_steps)",
            short.max_steps,
            short.batch_size,
        )
    )
    runs.append(
        NotebookRun(
            "07_beyond_one_gpu",
            "accelerate launch, 2 processes",
            "shout",
            "not modelled: process start-up dominates",
            lora.max_steps,
            max(1, lora.batch_size // 2),  # per process
        )
    )
    return runs


#: The notebooks' training runs on course-tiny (see the module docstring).
NOTEBOOK_RUNS: list[NotebookRun] = _runs()


@functools.lru_cache(maxsize=32)
def padded_length(task: str, batch_size: int, model: str = "course-tiny", samples: int = 20) -> float:
    """Mean length of a training batch padded to its longest row, over ``samples`` random epochs (seeded).

    >>> 10 < padded_length("shout", 16) < 128
    True
    """
    from course_utils.data import load_task, tokenize_for_sft
    from course_utils.loading import load_tokenizer

    tok = load_tokenizer(model)
    if task == "prefs":  # chosen and rejected answers, each after the prompt
        from course_utils.data import load_task as _load

        rows = _load(task)["train"]
        lengths = []
        for row in rows:
            prompt = row["prompt"] if isinstance(row["prompt"], list) else [{"role": "user", "content": row["prompt"]}]
            for key in ("chosen", "rejected"):
                answer = row[key] if isinstance(row[key], list) else [{"role": "assistant", "content": row[key]}]
                ids = tok.apply_chat_template(prompt + answer, tokenize=True, return_dict=True)["input_ids"]
                lengths.append(len(ids))
    else:
        import datasets

        bars_were_off = datasets.utils.are_progress_bars_disabled()
        datasets.disable_progress_bars()  # a planner's side computation: no "Map" bar in `course-utils doctor`
        try:
            lengths = [len(r["input_ids"]) for r in tokenize_for_sft(load_task(task)["train"], tok)]
        finally:
            if not bars_were_off:
                datasets.enable_progress_bars()
    rng = random.Random(0)
    total, batches = 0, 0
    for _ in range(samples):
        order = list(range(len(lengths)))
        rng.shuffle(order)
        for i in range(0, len(order), batch_size):
            total += max(lengths[j] for j in order[i : i + batch_size])
            batches += 1
    return total / batches


def predict_notebook_runs(cpu: CPU, runs: Sequence[NotebookRun] = NOTEBOOK_RUNS) -> list[dict[str, Any]]:
    """Predicted seconds of each run's ``trainer.train()`` on ``cpu`` (None where not modelled).

    >>> from course_utils.step_time import CPU
    >>> cpu = CPU("demo", 20e9, 5e9, 2e-5, 3e-3, 0.5)
    >>> rows = predict_notebook_runs(cpu, NOTEBOOK_RUNS[:1])
    >>> rows[0]["predicted_s"] > 0
    True
    """
    out = []
    for run in runs:
        row: dict[str, Any] = {"notebook": run.notebook, "run": run.cell, "steps": run.steps, "kind": run.kind}
        if not run.modelled:
            row.update(predicted_s=None, step_ms=None)
            out.append(row)
            continue
        seq = round(padded_length(run.task, run.batch_size))
        est = predict_run(run, cpu, seq)
        row.update(
            seq_len=seq,
            step_ms=round(est.step_s * 1e3, 2),
            predicted_s=round(est.time_for(run.steps * run.batch_size), 2),
        )
        out.append(row)
    return out


def predict_run(run: NotebookRun, cpu: CPU, seq_len: int) -> TimeEstimate:
    """The step-time prediction of one run (DPO: the policy's step on chosen + rejected, plus a reference forward)."""
    est = predict_step_time(data_dir("course-tiny"), run.recipe(seq_len), cpu, trainer=True)
    if run.kind == "dpo":
        # TRL computes the reference log-probs with the adapter disabled: one more forward, no backward,
        # about a third of a step's device work and host launches.
        extra = (est.device_s + est.host_s - cpu.step_overhead_s) / 3
        est.step_s += extra
    return est


def notebook_minutes(cpu: CPU) -> dict[str, tuple[float, list[str]]]:
    """Predicted training minutes per notebook on ``cpu``, and the runs it could not predict.

    >>> from course_utils.step_time import CPU
    >>> minutes = notebook_minutes(CPU("demo", 20e9, 5e9, 2e-5, 3e-3, 0.5))
    >>> sorted(minutes)[:2], minutes["06_qlora"][0]
    (['01_lora_training', '02_adapters'], 0.0)
    """
    out: dict[str, tuple[float, list[str]]] = {}
    for row, run in zip(predict_notebook_runs(cpu), NOTEBOOK_RUNS):
        seconds, missing = out.get(run.notebook, (0.0, []))
        if row["predicted_s"] is None:
            missing = [*missing, run.cell]
        else:
            seconds += row["predicted_s"] / 60
        out[run.notebook] = (seconds, missing)
    return out


def training_time_lines(facts: dict[str, Any], seconds: float = 1.5) -> list[tuple[str, str]]:
    """`course-utils doctor`'s lines, as (found, advice): predicted training minutes per notebook on this CPU.

    A short calibration (:func:`~course_utils.step_time.measure_cpu`) first. On a GPU or Apple MPS the
    notebooks train there, not on the CPU: one line points to ``course-utils plan``.
    ``facts["training_minutes"]`` gets the numbers.

    >>> training_time_lines({"device": "cuda", "gpu": "NVIDIA L4"})[0][0]
    'the notebooks train on NVIDIA L4'
    """
    from course_utils.step_time import measure_cpu

    if facts.get("device") not in (None, "cpu"):
        where = facts.get("gpu") or facts.get("device")
        return [
            (f"the notebooks train on {where}", "predict a recipe's time there: course-utils plan <model> --on <GPU>")
        ]
    cpu = measure_cpu(seconds=seconds)
    minutes = notebook_minutes(cpu)
    facts["training_minutes"] = {k: round(v, 2) for k, (v, _) in minutes.items()}
    facts["cpu_calibration"] = cpu.to_dict()
    lines = []
    kinds = {run.cell: run.kind for run in NOTEBOOK_RUNS}
    for notebook, (value, missing) in minutes.items():
        if value:
            found = f"{notebook}: ~{value:.1f} min of training (predicted)"
            advice = "from a CPU calibration; benchmarks/planner_time.py measures its error"
            if missing:
                advice += f"; not counted: {', '.join(missing)}"
        else:
            found = f"{notebook}: not predicted"
            advice = "; ".join(f"{m} ({kinds[m].removeprefix('not modelled: ')})" for m in missing)
        lines.append((found, advice))
    return lines
