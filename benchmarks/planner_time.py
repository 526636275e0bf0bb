"""The planner's time error: on every H200 reference recipe, and on the notebooks' training runs on this CPU.

    OMP_NUM_THREADS=2 PYTHONPATH=$PWD python benchmarks/planner_time.py            # everything (~3 min idle)
    OMP_NUM_THREADS=2 PYTHONPATH=$PWD python benchmarks/planner_time.py --gpu-only # the reference table only
    ... --steps-scale 0.25    # train each notebook run for a quarter of its steps (and predict that)

1. H200 reference (`data/reference/h200_smollm2-1.7b.json`, batch 8 x 512): predicted vs measured step
   time for the eight recipes; ``calib`` marks the rows `course_utils.step_time.calibrate` fitted the
   efficiencies to. Then the same recipes at other shapes: predictions only (the reference measures
   one shape). Then how the held-out error depends on which rows are calibrated on.
2. This CPU: `measure_cpu` (a few seconds), then every notebook training run the model covers
   (`course_utils.notebook_time.NOTEBOOK_RUNS`) is predicted, then trained with
   `course_utils.training.train_adapter` for its steps and batch size on its task, and ``run.seconds``
   (``trainer.train()``, wall time) is compared. DPO is predicted only (``--dpo`` trains it with TRL).
   On a busy machine wall times inflate: say so when you report them. With ``OMP_NUM_THREADS=1`` the
   last two columns compare the steps with this process's CPU time, which other processes inflate
   much less (the calibration's medians are taken under the same load).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
import warnings

from course_utils.step_time import calibrate, h200_efficiency, reference_time_errors

OTHER_CALIBRATIONS = [
    ("fft_bfloat16", "lora_r16_all", "lora_r16_all_gc"),
    ("fft_bfloat16", "lora_r16_all", "lora_r16_all_gc", "qlora4_r16_all"),
    ("fft_float32", "fft_bfloat16", "lora_r16_all", "lora_r16_all_gc"),
]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}%"


def gpu_part() -> None:
    eff = h200_efficiency()
    print("== H200 reference: predicted vs measured step time (batch 8 x 512) ==")
    print(f"calibration: {eff.source}")
    print(
        f"  matmul efficiency {eff.matmul:.3f}, memory efficiency {eff.memory:.3f}, "
        f"host {eff.launch_s * 1e6:.1f} us/kernel + {eff.step_overhead_s * 1e3:.1f} ms/step"
    )
    rows = reference_time_errors()
    print(f"{'recipe':<22} {'calib':>5} {'predicted s':>11} {'measured s':>10} {'error':>8}  limited by")
    for r in rows:
        print(
            f"{r['name']:<22} {'yes' if r['calibration'] else '':>5} {r['predicted_s']:11.4f} "
            f"{r['measured_s']:10.4f} {_pct(r['rel_error']):>8}  {r['bound']}"
        )
    held = [abs(r["rel_error"]) for r in rows if not r["calibration"]]
    print(
        f"held-out rows: {len(held)}, largest |error| {100 * max(held):.1f}%, mean {100 * sum(held) / len(held):.1f}%"
    )
    for b, s in ((4, 1024), (16, 512), (2, 2048)):
        print(f"\n-- the same recipes at batch {b} x {s}: predicted only (the reference measures 8 x 512) --")
        for r in reference_time_errors(batch_size=b, seq_len=s):
            print(f"{r['name']:<22} {r['predicted_s']:9.4f} s  {r['predicted_tok_per_s']:>8,} tok/s  {r['bound']}")
    print("\n-- sensitivity: largest held-out |error| with other calibration rows --")
    for rows_ in OTHER_CALIBRATIONS:
        alt = calibrate(rows_)
        errs = reference_time_errors(efficiency=alt)
        worst = max((r for r in errs if r["name"] not in rows_), key=lambda r: abs(r["rel_error"]))
        print(
            f"{', '.join(rows_):<72} matmul {alt.matmul:.2f} memory {alt.memory:.2f}: "
            f"worst {worst['name']} {_pct(worst['rel_error'])}"
        )


def cpu_part(steps_scale: float, dpo: bool) -> None:
    import torch
    from peft import LoraConfig

    from course_utils.data import load_task
    from course_utils.loading import load_model, load_tokenizer
    from course_utils.notebook_time import NOTEBOOK_RUNS, padded_length, predict_run
    from course_utils.step_time import measure_cpu
    from course_utils.training import train_adapter

    print(
        f"\n== this CPU: {torch.get_num_threads()} torch threads, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} =="
    )
    cpu = measure_cpu()
    print("calibration:", cpu.to_dict())
    tok = load_tokenizer("course-tiny")
    print(
        f"{'run':<52} {'steps':>5} {'seq':>4} {'predicted s':>11} {'measured s':>10} {'error':>8} {'CPU s':>7} {'error':>8}"
    )
    errors, cpu_errors = [], []
    for run in NOTEBOOK_RUNS:
        steps = max(1, round(run.steps * steps_scale))
        if not run.modelled:
            print(f"{run.label:<52} {steps:5d}    -           -          -        -  ({run.kind})")
            continue
        seq = round(padded_length(run.task, run.batch_size))
        est = predict_run(run, cpu, seq)
        predicted = est.time_for(steps * run.batch_size)
        measured = cpu_seconds = None
        if run.kind == "lora":
            targets = run.target_modules if isinstance(run.target_modules, str) else list(run.target_modules)
            config = LoraConfig(
                r=run.r,
                lora_alpha=2 * run.r,
                lora_dropout=run.lora_dropout,
                target_modules=targets,
                task_type="CAUSAL_LM",
            )
            model = load_model("course-tiny", dtype="float32", device="cpu")
            clock = _CPUClock()
            with contextlib.redirect_stdout(io.StringIO()):
                result = train_adapter(
                    model,
                    tok,
                    load_task(run.task)["train"],
                    config,
                    max_steps=steps,
                    batch_size=run.batch_size,
                    callbacks=[clock],
                )
            cpu_seconds = clock.seconds
            measured = result.seconds
        elif dpo:
            measured = _train_dpo(run, steps, tok)
        err = None if measured is None else predicted / measured - 1
        # CPU time runs from the first step to the last: compare it with the steps alone (no start-up)
        cpu_err = None if not cpu_seconds else steps * est.step_s / cpu_seconds - 1
        if err is not None:
            errors.append(abs(err))
        if cpu_err is not None:
            cpu_errors.append(abs(cpu_err))
        shown = "-" if measured is None else f"{measured:10.2f}"
        shown_cpu = "-" if not cpu_seconds else f"{cpu_seconds:7.2f}"
        print(
            f"{run.label:<52} {steps:5d} {seq:4d} {predicted:11.2f} {shown:>10} {_pct(err):>8} "
            f"{shown_cpu:>7} {_pct(cpu_err):>8}"
        )
    if errors:
        print(
            f"runs measured: {len(errors)}; wall time: largest |error| {100 * max(errors):.1f}%, "
            f"mean {100 * sum(errors) / len(errors):.1f}% (target: 30%)"
        )
    if cpu_errors and torch.get_num_threads() == 1:
        print(
            "  steps against this process's CPU time (1 thread: close to an idle machine's wall time): largest "
            f"|error| {100 * max(cpu_errors):.1f}%, mean {100 * sum(cpu_errors) / len(cpu_errors):.1f}%"
        )


class _CPUClock:
    """A TrainerCallback-like object: this process's CPU seconds from on_train_begin to on_train_end."""

    def __init__(self) -> None:
        self.start = self.seconds = 0.0

    def on_train_begin(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        self.start = time.process_time()

    def on_train_end(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        self.seconds = time.process_time() - self.start

    def __getattr__(self, name: str):  # noqa: ANN204 - every other callback event: nothing to do
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)


def _train_dpo(run, steps: int, tok) -> float:  # noqa: ANN001
    import time

    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from course_utils.data import load_task
    from course_utils.loading import load_model

    args = DPOConfig(
        output_dir="outputs/benchmark-dpo",
        max_steps=steps,
        per_device_train_batch_size=run.batch_size,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=10,
        dataloader_pin_memory=False,
    )
    trainer = DPOTrainer(
        model=load_model("course-tiny", dtype="float32", device="cpu"),
        args=args,
        train_dataset=load_task("prefs")["train"],
        processing_class=tok,
        peft_config=LoraConfig(
            r=run.r,
            lora_alpha=2 * run.r,
            lora_dropout=run.lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-only", action="store_true", help="only the H200 reference table")
    parser.add_argument(
        "--steps-scale", type=float, default=1.0, help="train each notebook run for this fraction of its steps"
    )
    parser.add_argument("--dpo", action="store_true", help="also train notebook 04's DPO run (TRL) to measure it")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    gpu_part()
    if not args.gpu_only:
        cpu_part(args.steps_scale, args.dpo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
