"""Where a learner's adapters and runs are saved: a folder that outlives the session.

On Colab the working folder (``/content``) is wiped when the runtime ends; Google Drive is not.
:func:`outputs_dir` saves under Drive when it is mounted, and under ``./outputs`` everywhere else
(never a temporary folder, so an adapter trained in one lesson is there for the next).

Mount Drive on Colab with ``from google.colab import drive; drive.mount("/content/drive")``
before calling it.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

__all__ = ["COLAB_DRIVE", "OUTPUTS_ON_DRIVE", "outputs_dir"]

#: Where Colab mounts the learner's Google Drive.
COLAB_DRIVE = Path("/content/drive/MyDrive")
#: The course's outputs folder inside Drive.
OUTPUTS_ON_DRIVE = Path("peft-course") / "outputs"


def outputs_dir(name: str) -> Path:
    """The folder to save ``name`` in (an adapter, a merged model, a run's files); its parents are created.

    - Google Drive mounted on Colab (``/content/drive/MyDrive`` exists):
      ``/content/drive/MyDrive/peft-course/outputs/<name>``, which survives the runtime;
    - anywhere else: ``<current folder>/outputs/<name>``.

    ``name`` is a relative name such as ``"shout-lora"`` or ``"04/dpo"``; the folder itself is not
    created (``save_pretrained`` does that), so a check for an existing output still works.

    >>> import os, tempfile
    >>> here = os.getcwd(); os.chdir(tempfile.mkdtemp())   # (only so that this example leaves no folder behind)
    >>> path = outputs_dir("shout-lora")
    >>> path.parts[-2:], path.parent.is_dir(), path.exists()
    (('outputs', 'shout-lora'), True, False)
    >>> os.chdir(here)
    """
    text = str(name).strip()
    pure = PurePosixPath(text.replace("\\", "/"))
    if not text or pure.is_absolute() or PureWindowsPath(text).drive or ".." in pure.parts:
        raise ValueError(
            f"outputs_dir needs a relative name such as 'shout-lora' or '04/dpo', got {name!r} "
            "(empty, absolute or containing '..')."
        )
    base = COLAB_DRIVE / OUTPUTS_ON_DRIVE if COLAB_DRIVE.is_dir() else Path.cwd() / "outputs"
    path = base.joinpath(*pure.parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
