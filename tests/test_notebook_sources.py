"""Each notebook has ONE editable source, and the pieces every notebook shares are the same.

The instructor edits ``notebooks/NN_topic.ipynb`` or its jupytext twin ``notebooks/NN_topic.py``
(percent format, for text diffs and review); ``jupytext --sync notebooks/*.ipynb`` keeps them
equal. These tests fail when:

- the two disagree (someone edited one and did not sync);
- a notebook lacks the shared set-up cell, the ``parameters`` cell or the ``setup(...)`` call;
- a Colab badge or install line points anywhere but ``[project.urls] Repository`` in pyproject.toml.

Stale OUTPUTS are caught by nbval itself: it re-executes the ``.ipynb`` sources and compares
every checked output with the committed one.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def repository_url() -> str:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        tomllib = pytest.importorskip("tomli")
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["project"]["urls"]["Repository"].rstrip("/")


def set_up_cell(url: str) -> str:
    """The first code cell of every notebook, word for word (only it may run before course_utils exists)."""
    return f"""# Set-up: on Colab, install the course first (elsewhere the README's `pip install` did it).
import subprocess
import sys

REPOSITORY = "{url}"
if "google.colab" in sys.modules:  # Colab's kernel imports it at start-up
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"git+{{REPOSITORY}}"], check=True)

from course_utils.loading import model_from_env
from course_utils.notebook import setup"""


def _cells(nb) -> list[tuple[str, str, list[str]]]:
    return [(c.cell_type, c.source.strip(), list(c.metadata.get("tags", []))) for c in nb.cells]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 6, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_ipynb_and_py_twin_are_in_sync(path: Path):
    twin = path.with_suffix(".py")
    assert twin.exists(), f"{twin.name} is missing: run `jupytext --set-formats ipynb,py:percent {path}`"
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent", f"{path.name} is not paired"
    a, b = _cells(nb), _cells(jupytext.read(twin))
    assert len(a) == len(b), f"{path.name} has {len(a)} cells, {twin.name} {len(b)}: run `jupytext --sync {path}`"
    for i, (x, y) in enumerate(zip(a, b)):
        assert x == y, f"cell {i} differs between {path.name} and {twin.name}: run `jupytext --sync {path}`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_shared_structure(path: Path):
    url = repository_url()
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].source.strip() == set_up_cell(url), f"{path.name}: the first code cell is not the shared set-up cell"
    params = [i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", [])]
    assert params == [1], f"{path.name}: the second code cell, and only it, must be tagged `parameters`"
    assert 'MODEL = model_from_env("course-tiny")' in code[1].source
    assert re.match(r"info = setup\(SEED, model=MODEL", code[2].source), (
        f"{path.name}: third code cell must call setup()"
    )
    title = nb.cells[0].source
    badge = f"https://colab.research.google.com/github/{url.split('github.com/')[1]}/blob/main/notebooks/{path.name}"
    assert badge in title, f"{path.name}: the Colab badge must point to {badge}"


def test_readme_links_follow_pyproject():
    url = repository_url()
    readme = (ROOT / "README.md").read_text()
    repo = url.split("github.com/")[1]
    badges = re.findall(r"colab\.research\.google\.com/github/([^)\s]+?)/blob/main/notebooks/", readme)
    assert badges and set(badges) == {repo}, badges
    for name in re.findall(r"\(notebooks/(\d\d_[a-z_]+\.ipynb)\)", readme):
        assert (ROOT / "notebooks" / name).exists(), name
