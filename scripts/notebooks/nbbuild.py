"""Shared by the notebook generators (make_NN.py): cells, tags and writing a notebook.

Each generator builds its notebook's cells in teaching order and writes
``notebooks/<NAME>``; the notebook is then executed (``course-utils run --inplace``) so it is
committed with outputs.
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[2]
IGNORE = "nbval-ignore-output"  # tag: nbval runs the cell but does not compare its output

# Every notebook's first code cell: installs the course only on Colab (never an interactive login), quiets
# bitsandbytes' machine-dependent log lines before peft imports it, and imports what the next cells use.
SETUP_CODE = '''
import sys

IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:  # install the course (and its pinned libraries) only on Colab
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "peft-course @ git+https://github.com/peft-course/peft-course"], check=True)

import logging

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its CPU-kernel messages differ between machines
from course_utils.loading import model_from_env
from course_utils.notebook import setup
'''


def colab_badge(name: str) -> str:
    return ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/peft-course/peft-course/blob/main/notebooks/{name})")


def markdown_cell(text: str):
    return new_markdown_cell(textwrap.dedent(text).strip())


def code_cell(src: str, *tags: str):
    cell = new_code_cell(textwrap.dedent(src).strip())
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def write_notebook(cells: list, name: str) -> Path:
    """Write ``cells`` to notebooks/<name> (or to $NB_OUT_DIR/<name>, to diff a change without executing)."""
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    path = Path(os.environ.get("NB_OUT_DIR", ROOT / "notebooks")) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


class NotebookBuilder:
    """Collect cells in order: ``nb.md(text)``, ``nb.code(src, IGNORE)``, then ``nb.write()``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cells: list = []

    def md(self, text: str) -> None:
        self.cells.append(markdown_cell(text))

    def code(self, src: str, tags: list[str] | str | None = None) -> None:
        tag_list = [tags] if isinstance(tags, str) else list(tags or [])
        self.cells.append(code_cell(src, *tag_list))

    def write(self) -> Path:
        return write_notebook(self.cells, self.name)
