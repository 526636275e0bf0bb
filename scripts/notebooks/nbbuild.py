"""Tiny nbformat helpers shared by make_03.py and make_06.py (cells with tags, a Colab badge)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[2]
IGNORE = "nbval-ignore-output"


def md(text: str):
    return new_markdown_cell(textwrap.dedent(text).strip("\n"))


def code(src: str, *tags: str):
    cell = new_code_cell(textwrap.dedent(src).strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def badge(name: str) -> str:
    return ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/peft-course/peft-course/blob/main/notebooks/{name})")


SETUP = '''
import importlib.util
import sys

IN_COLAB = "google.colab" in sys.modules or importlib.util.find_spec("google.colab") is not None
if IN_COLAB:
    %pip install -q "peft-course @ git+https://github.com/peft-course/peft-course"

from course_utils.notebook import setup
'''


def write(cells, name: str) -> Path:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    path = ROOT / "notebooks" / name
    path.parent.mkdir(exist_ok=True)
    nbformat.write(nb, str(path))
    print(f"wrote {path.relative_to(ROOT)}")
    return path
