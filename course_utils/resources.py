"""Where the course's shipped files are: the default model, the datasets, model configs, references.

One job: turn a name such as ``"datasets"`` into a real folder, wherever the course runs.

- In a clone (``pip install -e .``, or the notebooks' kernels, which import this checkout), the
  files are the top-level ``data/`` folder.
- In an installed wheel (``pip install .``, ``pip install git+...`` on Colab) the same files ship
  inside the package as ``course_utils/_data``: pyproject.toml maps ``data/`` there
  (``[tool.setuptools] package-dir``), and ``importlib.resources`` finds them.

Model loading needs real folders on disk (``from_pretrained`` takes a path), which both installs
give: pip unpacks wheels, it never imports them from a zip.

>>> (data_dir("course-tiny") / "config.json").is_file()
True
>>> sorted(p.name for p in data_dir("datasets").glob("shout_*.jsonl"))
['shout_eval.jsonl', 'shout_train.jsonl']
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

__all__ = ["DATA_FOLDERS", "data_dir", "data_root"]

#: The folders under ``data/``, each shipped in the wheel.
DATA_FOLDERS = ("course-tiny", "datasets", "configs", "reference")


def data_root() -> Path:
    """The folder holding ``course-tiny/``, ``datasets/``, ``configs/`` and ``reference/``.

    The wheel's copy (``course_utils/_data``) when it exists, else the clone's ``data/``.
    Raises FileNotFoundError, saying how to install, when neither is there.
    """
    shipped = Path(str(importlib.resources.files("course_utils") / "_data"))
    if (shipped / "course-tiny").is_dir():
        return shipped
    clone = Path(__file__).resolve().parent.parent / "data"
    if (clone / "course-tiny").is_dir():
        return clone
    raise FileNotFoundError(
        f"The course's data files are missing: looked in {shipped} (installed package) and {clone} (a clone). "
        "Reinstall the course with `pip install .` from a clone, or `pip install git+<repository URL>`; "
        "an install that copied only the Python files (e.g. a hand-made zip) lacks them."
    )


def data_dir(name: str) -> Path:
    """The shipped folder ``name`` (one of :data:`DATA_FOLDERS`), as a real path.

    >>> data_dir("configs").name
    'configs'
    """
    if name not in DATA_FOLDERS:
        raise ValueError(f"Unknown data folder {name!r}: the course ships {', '.join(DATA_FOLDERS)}.")
    return data_root() / name
