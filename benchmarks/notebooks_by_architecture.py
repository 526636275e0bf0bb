"""Run every notebook with MODEL pointed at a tiny random model of each architecture; print the matrix.

Builds the tiny models of `course_utils.tiny_models` into a temporary folder, then, for each
architecture, runs ``course-utils run --model <folder> --max-steps 60`` on the chosen notebooks
and prints a notebook x architecture table of ok / failed and seconds (plus the first line of
each failure). The full 11 x 6 matrix takes half an hour or more on 2 CPU cores: run it niced.

    nice -n 19 python benchmarks/notebooks_by_architecture.py                   # everything
    nice -n 19 python benchmarks/notebooks_by_architecture.py --arch gpt2 falcon --notebooks 03 06
    python benchmarks/notebooks_by_architecture.py --keep runs/arch-matrix      # keep executed copies
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course_utils.tiny_models import TINY_ARCHITECTURES, save_tiny_model  # noqa: E402

NOTEBOOKS = ("01", "02", "03", "04", "05", "06")


SHORT_RUN = "ran, claims not met (short run)"  # course_utils.runner.STATUS_SHORT: not a failure


def _ran(row: dict) -> bool:
    """The notebook ran to the end (its claims may not hold on a tiny random model)."""
    return row["status"] == "ok" or row["status"].startswith("ran, ")


def run_one(arch: str, model_dir: Path, notebooks: list[str], out: Path, max_steps: int) -> dict[str, dict]:
    """Run ``notebooks`` on one architecture; {notebook: {"status", "seconds", "error"}}."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TQDM_DISABLE": "1",
        "PYTHONHASHSEED": "0",
    }
    cmd = [
        sys.executable,
        "-m",
        "course_utils",
        "run",
        *notebooks,
        "--model",
        str(model_dir),
        "--max-steps",
        str(max_steps),
        "--out",
        str(out),
        "--overwrite",
        "--no-progress",
        "--json",
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )  # failures go in the matrix
    summary_path = out / "summary.json"
    if not summary_path.is_file():
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {nb: {"status": "failed", "seconds": 0.0, "error": err} for nb in notebooks}
    results = json.loads(summary_path.read_text())["results"]
    table = {}
    for r in results:
        key = r["notebook"][:2]
        err = r.get("error") or {}
        text = f"{err.get('ename', '')}: {err.get('evalue', '')}"[:200] if isinstance(err, dict) else str(err)[:200]
        where = f"cell {err.get('cell_index')} " if isinstance(err, dict) and err else ""
        status = r["status"]
        if status == SHORT_RUN:  # ran; the lesson's claims need the default model and a full run
            status = f"ran, {len(r.get('failed_claims', []))} claims NO"
        table[key] = {"status": status, "seconds": r["seconds"], "error": where + text if err else ""}
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--arch",
        nargs="*",
        default=list(TINY_ARCHITECTURES),
        help=f"architectures (default: all of {', '.join(TINY_ARCHITECTURES)})",
    )
    parser.add_argument("--notebooks", nargs="*", default=list(NOTEBOOKS), help="notebook numbers (default: all)")
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--keep", help="folder for the executed notebooks (default: a temporary folder)")
    parser.add_argument("--json", help="also write the matrix as JSON to this file")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="arch-matrix-") as tmp:
        base = Path(args.keep) if args.keep else Path(tmp) / "runs"
        matrix: dict[str, dict[str, dict]] = {}
        for arch in args.arch:
            model_dir = save_tiny_model(arch, Path(tmp) / "models" / arch)
            start = time.perf_counter()
            matrix[arch] = run_one(arch, model_dir, args.notebooks, (base / arch).resolve(), args.max_steps)
            ok = sum(_ran(r) for r in matrix[arch].values())
            print(f"{arch}: {ok}/{len(args.notebooks)} ran in {time.perf_counter() - start:.0f} s", flush=True)

    width = max(len(a) for a in args.arch)
    print()
    print("| notebook | " + " | ".join(args.arch) + " |")
    print("|---|" + "---|" * len(args.arch))
    for nb in args.notebooks:
        cells = []
        for arch in args.arch:
            r = matrix[arch].get(nb, {"status": "missing", "seconds": 0})
            cells.append(f"{r['status']} {r['seconds']:.0f}s")
        print(f"| {nb} | " + " | ".join(cells) + " |")
    failures = [(a, nb, r["error"]) for a in args.arch for nb, r in matrix[a].items() if not _ran(r)]
    if failures:
        print("\nFailures:")
        for arch, nb, err in failures:
            print(f"  {nb} x {arch:<{width}}: {err}")
    if args.json:
        Path(args.json).write_text(json.dumps(matrix, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
