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

import json
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


# --------------------------------------------------------------------------- deprecations in the outputs
#: Deprecation and future warnings a committed notebook may show, each with why the course cannot avoid it.
#: Any other one means the notebook (or course_utils) uses a name a library has deprecated: use the new
#: name, then re-execute. Matched against the warning's message, after "FutureWarning: ".
KNOWN_DEPRECATIONS = {
    r"`gradient_checkpointing` is deprecated": "TRL 1.16's configs default the old name to True; 04 shows a "
    "default SFTConfig on purpose (its own configs pass activation_checkpointing)",
    r"`past_key_values` is deprecated": "peft's prefix tuning passes past_key_values to the model (05)",
    r"Both `past_key_values` and `cache` are set": "peft's prefix tuning, when it generates (05)",
}
_DEPRECATION = re.compile(r"\b(?:Future|Deprecation|PendingDeprecation)Warning: (.*)")


def unknown_deprecations(nb: dict, name: str = "notebook") -> list[str]:
    """``"<name> cell <i>: <message>"`` for each deprecation warning on stderr not in KNOWN_DEPRECATIONS."""
    found = []
    for index, cell in enumerate(nb["cells"]):
        for output in cell.get("outputs", []):
            if output.get("name") != "stderr":
                continue
            text = output["text"] if isinstance(output["text"], str) else "".join(output["text"])
            for match in _DEPRECATION.finditer(text):
                if not any(re.match(known, match.group(1)) for known in KNOWN_DEPRECATIONS):
                    found.append(f"{name} cell {index}: {match.group(0)[:200]}")
    return found


def test_the_deprecation_check_finds_an_unknown_warning_and_passes_a_known_one():
    def notebook(stderr: str) -> dict:
        output = {"output_type": "stream", "name": "stderr", "text": stderr}
        return {"cells": [{"cell_type": "code", "source": "", "metadata": {}, "outputs": [output]}]}

    old_name = "/x/site-packages/transformers/training_args.py:1541: FutureWarning: `save_total` is deprecated.\n"
    assert unknown_deprecations(notebook(old_name), "nb") == [f"nb cell 0: {old_name.split(': ', 1)[1].strip()}"]
    known = "/x/torch/nn/modules/module.py:1789: FutureWarning: `past_key_values` is deprecated and will go.\n"
    assert unknown_deprecations(notebook(known)) == []
    assert unknown_deprecations(notebook("UserWarning: something else\n")) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_outputs_show_no_deprecation_the_course_could_avoid(path: Path):
    found = unknown_deprecations(json.loads(path.read_text(encoding="utf-8")), path.name)
    assert not found, "deprecated names in the committed outputs (use the new name, then re-execute):\n" + "\n".join(
        found
    )
