"""Where the README's `pytest` spends its time: wall, CPU, each worker's files, and CPU by kind of process.

Runs `python -m pytest` (the README's command, with pyproject's addopts: xdist workers, nbval) with this
file loaded as a pytest plugin in every worker, and prints:

- the wall time, the CPU time of pytest and everything it started, and how many cores that kept busy;
- the time before the first test (start-up and collection) and after the last;
- per xdist worker, its files in the order it ran them (start, end, seconds): the balance between workers;
- the seconds of each file, longest first, ready to paste into conftest.py's ``SECONDS_PER_FILE``
  (the order in which files are handed out);
- on Linux, CPU seconds by kind of process (notebook kernels, pytest workers, vLLM, launched
  training processes, the browser...), read from /proc twice a second.

When the suite is CPU-bound (cores busy close to the core count), its wall time is its CPU time
divided by the cores: only less work makes it shorter, not more parallelism.

    python benchmarks/suite_time.py                          # the whole suite (~9-10 min on 2 cores)
    python benchmarks/suite_time.py -- tests/test_data.py notebooks/06_qlora.ipynb   # some files
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOG_DIR_ENV = "SUITE_TIME_DIR"  # where the plugin (this file, inside pytest) writes one line per test


# --------------------------------------------------------------------------- the plugin (inside pytest)
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):  # noqa: ANN001, ANN201 - pytest's hook signature
    """Writes ``nodeid, start, end`` of each test to ``$SUITE_TIME_DIR/<worker>.tsv``."""
    start = time.time()
    yield
    folder = os.environ.get(LOG_DIR_ENV)
    if folder:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        with open(Path(folder) / f"{worker}.tsv", "a", encoding="utf-8") as log:
            log.write(f"{item.nodeid}\t{start:.3f}\t{time.time():.3f}\n")


# --------------------------------------------------------------------------- CPU by kind of process
KINDS = (  # (kind, pattern of the command line), first match wins
    ("notebook kernels", r"ipykernel_launcher"),
    ("vLLM (08)", r"vllm|\.venv-serve"),
    (
        "launched training (07, test_distributed)",
        r"train_sft\.py|fsdp_cpu_probe|accelerate\.commands\.launch|torch\.distributed\.run",
    ),
    ("browser (test_site)", r"chromium|chrome|playwright"),
    ("pytest workers", r"-c import sys;exec\(eval\(sys\.stdin\.readline\(\)\)\)"),
    ("pytest (controller)", r"-m pytest"),
    ("other python (wheel, CLI, pip, doctor)", r"python"),
)


def _kind(command: str) -> str:
    return next((kind for kind, pattern in KINDS if re.search(pattern, command)), "other")


class ProcessCPU:
    """Polls /proc: the latest CPU seconds of process ``root`` and its descendants, by kind (Linux only).

    A descendant counts when its parent was seen first (one started and gone between two polls is missed).
    """

    def __init__(self, root: int, interval_s: float = 0.5) -> None:
        self.interval_s, self.seen, self._stop = interval_s, {}, threading.Event()
        self.family = {str(root)}  # pids of root and the descendants seen so far
        self.ticks = os.sysconf("SC_CLK_TCK")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text()
                    fields = stat[stat.rfind(")") + 2 :].split()
                    if pid not in self.family and fields[1] not in self.family:  # fields[1]: the parent's pid
                        continue
                    self.family.add(pid)
                    seconds = (int(fields[11]) + int(fields[12])) / self.ticks  # utime + stime
                    key = (pid, fields[19])  # pid and start time: a reused pid is another process
                    if key not in self.seen:
                        command = (
                            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                        )
                        self.seen[key] = [seconds, _kind(command)]
                    self.seen[key][0] = seconds
                except (OSError, IndexError, ValueError):  # the process ended between listing and reading
                    continue

    def __enter__(self) -> ProcessCPU:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def by_kind(self) -> dict[str, tuple[float, int]]:
        """kind -> (CPU seconds, number of processes), most CPU first."""
        total: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        for seconds, kind in self.seen.values():
            total[kind][0] += seconds
            total[kind][1] += 1
        return {k: (v[0], int(v[1])) for k, v in sorted(total.items(), key=lambda kv: -kv[1][0])}


# --------------------------------------------------------------------------- the report
def read_logs(folder: Path) -> dict[str, list[tuple[str, float, float]]]:
    """worker -> [(nodeid, start, end)] in the order the worker ran them."""
    logs = {}
    for path in sorted(folder.glob("*.tsv")):
        rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines() if line]
        logs[path.stem] = [(node, float(start), float(end)) for node, start, end in rows]
    return logs


def file_spans(rows: list[tuple[str, float, float]]) -> list[tuple[str, float, float, float]]:
    """(file, first start, last end, seconds in its tests) for one worker, in the order they ran.

    >>> file_spans([("a.py::x", 0.0, 1.0), ("a.py::y", 1.0, 3.0), ("b.ipynb::Cell 0", 3.5, 4.0)])
    [('a.py', 0.0, 3.0, 3.0), ('b.ipynb', 3.5, 4.0, 0.5)]
    """
    spans: dict[str, list[float]] = {}
    for node, start, end in rows:
        span = spans.setdefault(node.split("::")[0], [start, end, 0.0])
        span[0], span[1], span[2] = min(span[0], start), max(span[1], end), span[2] + end - start
    return [(name, *values) for name, values in spans.items()]  # type: ignore[misc]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pytest_args", nargs="*", help="after `--`: what to pass to pytest (default: nothing)")
    parser.add_argument("--min-seconds", type=float, default=5.0, help="files shorter than this are summed up")
    args = parser.parse_args()

    logs = Path(tempfile.mkdtemp(prefix="suite-time-"))
    here = str(Path(__file__).resolve().parent)
    env = {**os.environ, LOG_DIR_ENV: str(logs)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    command = [sys.executable, "-m", "pytest", "-p", "suite_time", "-q", *args.pytest_args]
    print("$", " ".join(command[2:]), flush=True)
    start = time.time()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watch = ProcessCPU(process.pid) if sys.platform == "linux" else None
    with watch or contextlib.nullcontext():
        output, _ = process.communicate()
    end = time.time()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = children.ru_utime + children.ru_stime

    print(output.strip().splitlines()[-1] if output.strip() else "(no output)", f"(exit {process.returncode})")
    wall = end - start
    cores = os.cpu_count() or 1
    print(f"wall {wall:.1f} s; CPU {cpu:.0f} s (user {children.ru_utime:.0f} + system {children.ru_stime:.0f}):")
    print(f"  {cpu / wall:.2f} of {cores} cores busy on average")
    workers = read_logs(logs)
    if not workers:
        print("no test ran")
        return process.returncode or 1
    first = min(rows[0][1] for rows in workers.values())
    last = max(rows[-1][2] for rows in workers.values())
    print(f"before the first test: {first - start:.1f} s (start-up, collection); after the last: {end - last:.1f} s")
    per_file: dict[str, float] = {}
    for worker, rows in workers.items():
        busy = sum(e - s for _, s, e in rows)
        print(f"\n{worker}: busy {busy:.1f} s, ends at {rows[-1][2] - start:.1f} s")
        short = 0.0
        for name, s, e, seconds in file_spans(rows):
            per_file[Path(name).name] = per_file.get(Path(name).name, 0.0) + seconds
            if seconds >= args.min_seconds:
                print(f"  {s - start:6.1f} -> {e - start:6.1f}  {seconds:6.1f} s  {name}")
            else:
                short += seconds
        print(f"  {'':16}  {short:6.1f} s  (files under {args.min_seconds:g} s)")
    print("\nseconds per file, longest first (conftest.SECONDS_PER_FILE):")
    for name, seconds in sorted(per_file.items(), key=lambda kv: -kv[1]):
        if seconds >= args.min_seconds:
            print(f'    "{name}": {seconds:.0f},')
    if watch:
        print("\nCPU seconds by kind of process (from /proc, twice a second; short-lived ones are missed):")
        for kind, (seconds, count) in watch.by_kind().items():
            print(f"  {seconds:7.1f} s  {count:3d} process(es)  {kind}")
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
