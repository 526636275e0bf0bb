"""A real install outside the clone: build the wheel, install it into a fresh virtual environment,
and use the course from a folder that is not the repository.

This is what a learner gets from ``pip install .`` or from Colab's set-up cell
(``pip install git+<repository>``): the package must carry the default model, the datasets, the
model configs and the reference tables (pyproject.toml maps ``data/`` into the wheel), and find
them with ``importlib.resources`` (course_utils/resources.py) from any working directory.

The virtual environment reuses the libraries of the interpreter running the tests and installs only
the course's wheel (``--no-deps``), so nothing is downloaded. ``--system-site-packages`` is not
enough: from inside a virtual environment (``.ci/run``, a learner's ``.venv``) it exposes the BASE
interpreter's packages, where torch may be missing. The new environment gets a ``.pth`` file that
lists this interpreter's site-packages folders instead (appended after its own, so the wheel wins;
``.pth`` files inside them, such as an editable install of the clone, are not processed). The last test runs
one notebook headless with ``--max-steps 2`` from a temporary folder: the wheel works for a
notebook, and the runner's shortest runs work (``course-utils run --max-steps N`` for N >= 1).
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without anything that would import the clone instead of the wheel."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "COURSE_MODEL", "COURSE_METRICS_PATH"}}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_NO_INPUT": "1",
            **extra,
        }
    )
    return env


def _run(cmd: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=_clean_env(), capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def running_site_dirs() -> list[str]:
    """The site-packages folders of the interpreter running the tests (a venv's own, then its base's if it
    was made with ``--system-site-packages``, then the user's)."""
    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


def make_venv(folder: Path) -> Path:
    """A new virtual environment that sees this interpreter's libraries; returns its python."""
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(folder)
    python = folder / ("Scripts" if os.name == "nt" else "bin") / "python"
    own = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
        env=_clean_env(),
    ).stdout.strip()
    (Path(own) / "_running_interpreter.pth").write_text("\n".join(running_site_dirs()) + "\n")
    return python


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the sources and install it into a new venv; returns its python."""
    tmp = tmp_path_factory.mktemp("wheel")
    # built without isolation (nothing downloaded), so with this interpreter's setuptools: a Python 3.11 venv
    # comes with setuptools 65.5, which cannot read pyproject.toml's `license = "Apache-2.0"` (PEP 639)
    from importlib.metadata import version

    found = version("setuptools")
    if int(found.split(".")[0]) < 77:
        pytest.fail(
            f"setuptools {found} in {sys.prefix} is too old to build the course's wheel (needs >= 77, as "
            'pyproject.toml\'s [build-system] says). Run `pip install -e ".[dev]"` (it brings setuptools>=77), '
            "or `pip install -U 'setuptools>=77'`."
        )
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    for name in ("course_utils", "data"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp / "dist"),
            str(src),
        ],
        cwd=tmp,
    )
    wheels = list((tmp / "dist").glob("peft_course-*.whl"))
    assert len(wheels) == 1, wheels
    python = make_venv(tmp / "venv")
    # --ignore-installed: this environment may hold an editable install of the course; the venv gets its own.
    _run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", str(wheels[0])],
        cwd=tmp,
    )
    return python


# One process from the wheel's venv, in a folder that is not the repository, answers two tests (each such
# process imports torch and transformers: seconds): the facts of the installed package, printed as JSON, then
# `python -m course_utils.tiny_models gpt2 FOLDER`, run as `-m` runs it (runpy, as __main__, its own argv).
FROM_THE_WHEEL = """
import json, runpy, sys, torch, course_utils
from course_utils.loading import load_model, load_tokenizer
from course_utils.data import load_task
from course_utils.planner import load_config
from course_utils.resources import data_root
model = load_model("course-tiny", device="cpu")
print(json.dumps({
    "prefix": sys.prefix, "torch": torch.__file__, "package": course_utils.__file__, "data": str(data_root()),
    "params": sum(p.numel() for p in model.parameters()),
    "vocab": len(load_tokenizer("course-tiny")), "shout": len(load_task("shout", "train")),
    "hidden": load_config("smollm2-1.7b").hidden_size}), flush=True)
sys.argv = ["course_utils.tiny_models", "gpt2", sys.argv[1]]
runpy.run_module("course_utils.tiny_models", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def from_the_wheel(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What a process of the wheel's venv reports (``facts``) and the tiny model folder it wrote (``folder``)."""
    work = tmp_path_factory.mktemp("elsewhere")
    folder = work / "tiny-gpt2"
    done = _run([str(installed), "-c", FROM_THE_WHEEL, str(folder)], cwd=work)
    facts = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))
    return {"facts": facts, "folder": folder}


def test_wheel_carries_the_data_and_works_from_any_folder(installed: Path, from_the_wheel: dict):
    facts = from_the_wheel["facts"]
    import torch

    assert Path(facts["prefix"]) == installed.parent.parent, "the new environment is not the one running"
    assert Path(facts["torch"]) == Path(torch.__file__), "the venv found another torch than this interpreter's"
    assert str(ROOT) not in facts["package"], "imported the clone, not the installed wheel"
    assert "site-packages" in facts["package"] and facts["data"].endswith("_data"), facts
    assert facts["params"] == 1_771_968 and facts["vocab"] == 772 and facts["shout"] == 144
    assert facts["hidden"] == 2048


def test_installed_wheel_writes_a_tiny_model_with_its_tokenizer(from_the_wheel: dict):
    """``python -m course_utils.tiny_models`` from the wheel: the course-tiny tokenizer comes from the package."""
    folder = from_the_wheel["folder"]
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}
    from transformers import AutoTokenizer  # the folder is what the wheel wrote: read here, no second process

    assert len(AutoTokenizer.from_pretrained(folder)) == 772  # course-tiny's vocabulary, not a 1-token stand-in


def test_installed_wheel_runs_a_notebook_headless_with_two_steps(installed: Path, tmp_path: Path):
    work = tmp_path / "my-course"
    work.mkdir()
    shutil.copy(ROOT / "notebooks" / "02_adapters.ipynb", work)
    done = subprocess.run(
        [
            str(installed),
            "-m",
            "course_utils",
            "run",
            str(work / "02_adapters.ipynb"),
            "--max-steps",
            "2",
            "--out",
            str(work / "run"),
            "--json",
            "--no-progress",
        ],
        cwd=work,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = json.loads((work / "run" / "summary.json").read_text())
    rows = summary["results"]
    assert done.returncode == 0, f"{rows}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    # two steps teach nothing: the lesson's claims may print NO, which a short run reports, never as a crash
    assert [r["status"] for r in rows] in (["ok"], ["ran, claims not met (short run)"]), rows
