"""Root pytest set-up: the notebooks under nbval (strict), reproducibly.

`pytest` from the repository root runs the unit tests in ``tests/`` and executes every
``notebooks/*.ipynb`` under nbval (options in pyproject.toml: ``--nbval``, the sanitize file
``nbval_sanitize.cfg``, a per-cell timeout). Strict means every cell's output is compared with
the committed one, except cells tagged ``nbval-ignore-output`` (timings, memory, versions,
generated text) or ``nbval-skip``.

What this file adds, and why (each item fixed a strict re-run that failed on another machine):

- the kernels' environment, set here at import, BEFORE nbval starts any kernel (kernels inherit
  this process's environment): ``PYTHONHASHSEED=0`` (set order), ``TQDM_DISABLE=1`` (no bars),
  offline hub (``course_utils.runner.KERNEL_ENV`` and ``OFFLINE_ENV``, imported, not copied),
  and this checkout first on ``PYTHONPATH`` so the kernels import this ``course_utils`` even
  without ``pip install -e .``. The same environment is used by ``course-utils run --inplace``,
  which writes the committed outputs, and exported by ``.ci/run``.
- stderr is not compared: warnings and log lines differ between machines and library
  versions (bitsandbytes' CPU-kernel notices, transformers' deprecation messages) and are not
  what a lesson checks. stdout, text and HTML are.
- two sanitize patterns that depend on the machine: this checkout's path and $HOME.
- ``gpu``-marked tests skip cleanly without CUDA.
- the files run longest first (:data:`SECONDS_PER_FILE`): under ``-n auto --dist loadfile`` a long
  notebook handed out last keeps one worker busy while the others idle.
- a test marked ``notebook_covers("08_serving")`` checks what that notebook's claims check with the
  same real engine; it is skipped when the notebook runs in the same session (one check per fact,
  and the minute it takes), and runs when the notebook does not (``pytest tests/``).
- notebook 08's vLLM runs in an environment of its own (``.venv-serve``): a session that runs 08
  builds it first when it is missing (``course_utils.serving.create_serve_env``, a few minutes,
  once; ``COURSE_SERVE_ENV=skip`` opts out), and 08's cells tagged ``vllm`` are skipped, with the
  reason, where vLLM cannot run.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent

# --------------------------------------------------------------------------- kernel environment
# Written once, in course_utils.runner (torch-free to import): the kernels of `course-utils run
# --inplace`, which writes the committed outputs, get exactly this environment too.
from course_utils.runner import KERNEL_ENV as _RUNNER_KERNEL_ENV  # noqa: E402
from course_utils.runner import OFFLINE_ENV  # noqa: E402

KERNEL_ENV = {**_RUNNER_KERNEL_ENV, **OFFLINE_ENV}
for _key, _value in KERNEL_ENV.items():
    os.environ.setdefault(_key, _value)
# Under pytest-xdist (pyproject's addopts run `-n auto`), each worker and every kernel it starts uses
# ONE OpenMP thread: N workers x N threads on N cores thrash (measured: 2 workers with 2 threads each
# ran slower than no xdist at all). The user's own setting wins.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.pop("COURSE_MODEL", None)  # the committed outputs come from the default model
os.environ.pop("COURSE_METRICS_PATH", None)
# Kernels must use Jupyter's inline backend, which emits the figures the committed notebooks hold.
# A MPLBACKEND such as Agg (common in CI) would make plt.show() emit nothing and fail every plot cell.
# Without it, the unit tests still get Agg: matplotlib picks it when there is no display.
os.environ.pop("MPLBACKEND", None)
_paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
if str(ROOT) not in _paths:
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), *_paths] if p)

# Never collect helper scripts that sit next to the notebooks, nor executed copies of runs.
collect_ignore_glob = ["notebooks/*.py", "notebooks/**/*.py", "runs/*", "runs/**", "course_utils/__main__.py"]

# Output keys nbval must not compare (on top of its own: metadata, traceback, images, widget views).
NBVAL_SKIP_COMPARE = ("stderr", "application/vnd.jupyter.widget-state+json")


def pytest_configure(config: pytest.Config) -> None:
    """Make the sanitize file's path work from any working directory (it is relative to the root);
    let xdist hand out the files in this file's order (longest first), not by their number of tests."""
    config.addinivalue_line(
        "markers",
        "notebook_covers(name): the notebook `name` (stem) checks the same; skipped when it runs in this session",
    )
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False
    path = getattr(config.option, "nbval_sanitize_with", None)
    if path and not Path(path).is_absolute() and not Path(path).exists():
        candidate = Path(config.rootpath) / path
        if candidate.exists():
            config.option.nbval_sanitize_with = str(candidate)


SERVING_NOTEBOOK = ROOT / "notebooks" / "08_serving.ipynb"
VLLM_TAG = "vllm"  # 08's cells that need vLLM


def _runs_serving_notebook(config: pytest.Config) -> bool:
    if not config.option.nbval or not SERVING_NOTEBOOK.exists():
        return False
    args = [Path(a.split("::")[0]).resolve() for a in config.args] or [ROOT]
    return any(a == SERVING_NOTEBOOK or a in SERVING_NOTEBOOK.parents for a in args)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Build notebook 08's vLLM environment before the notebooks run, once (the controller only)."""
    config = session.config
    if hasattr(config, "workerinput") or os.environ.get("COURSE_SERVE_ENV") == "skip":
        return
    if not _runs_serving_notebook(config):
        return
    import platform

    from course_utils.serving import create_serve_env, serve_python

    if serve_python() is not None or platform.system() != "Linux":
        return
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\nnotebook 08: building vLLM's own environment (.venv-serve; once, a few minutes) ...", flush=True)
        try:
            create_serve_env()
        except Exception as err:  # the notebook's vLLM cells are then skipped, with the reason
            print(f"notebook 08: the vLLM environment could not be built ({err}); its vLLM cells are skipped.")


def _machine_patterns() -> dict[str, str]:
    patterns = {re.escape(str(ROOT)): "<REPO>"}
    home = os.path.expanduser("~")
    if home not in {"", "/"}:
        patterns[re.escape(home)] = "<HOME>"
    return patterns


#: Seconds each file took in a whole `pytest` on 2 cores (xdist, one thread per worker), as printed by
#: `python benchmarks/suite_time.py` (2026-12-02, a 2-core AMD EPYC); files not listed take a few seconds.
#: Only the ORDER matters (longest first); a stale figure costs a little balance, never a result.
SECONDS_PER_FILE = {
    "09_lora_variants.ipynb": 166,
    "08_serving.ipynb": 127,
    "05_prompt_tuning.ipynb": 105,
    "01_lora_training.ipynb": 86,
    "02_adapters.ipynb": 83,
    "03_merging.ipynb": 74,
    "04_trl.ipynb": 73,
    "07_beyond_one_gpu.ipynb": 65,
    "test_packaging.py": 51,
    "06_qlora.ipynb": 44,
    "test_distributed.py": 38,
    "test_site.py": 35,
    "test_runner.py": 19,
    "test_evaluation.py": 18,
    "test_doctor.py": 17,
}


def _longest_files_first(items: list[pytest.Item]) -> None:
    """Reorder in place: whole files, longest first (:data:`SECONDS_PER_FILE`); a file's items keep their order."""
    position = {}
    for index, item in enumerate(items):
        position.setdefault(item.path, index)
    items.sort(key=lambda item: (-SECONDS_PER_FILE.get(item.path.name, 0), position[item.path]))


def _skip_what_a_notebook_covers(items: list[pytest.Item]) -> None:
    running = {item.path.stem for item in items if item.path.suffix == ".ipynb"}
    for item in items:
        marker = item.get_closest_marker("notebook_covers")
        if marker and marker.args[0] in running:
            item.add_marker(
                pytest.mark.skip(reason=f"notebooks/{marker.args[0]}.ipynb checks the same in this session")
            )


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    _longest_files_first(items)
    _skip_what_a_notebook_covers(items)
    seen = set()
    for item in items:
        parent = item.parent
        if type(parent).__name__ == "IPyNbFile" and id(parent) not in seen:
            seen.add(id(parent))
            parent.skip_compare = tuple(parent.skip_compare) + NBVAL_SKIP_COMPARE
            # machine-specific patterns first; nbval adds the sanitize file's patterns at setup
            parent.sanitize_patterns.update(_machine_patterns())
    vllm_cells = [
        item
        for item in items
        if type(item).__name__ == "IPyNbCell"
        and VLLM_TAG in getattr(item, "cell", {}).get("metadata", {}).get("tags", [])
    ]
    if vllm_cells:
        from course_utils.serving import vllm_available

        ok, why = vllm_available()
        if not ok:
            for item in vllm_cells:
                item.add_marker(pytest.mark.skip(reason=why))
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_items:
        import torch

        if not torch.cuda.is_available():
            skip = pytest.mark.skip(reason="needs a CUDA GPU")
            for item in gpu_items:
                item.add_marker(skip)
