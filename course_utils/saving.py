"""Save models and adapters without clobbering anything: refuse a non-empty folder, write atomically.

- :func:`save_merged` / :func:`save_adapter` never overwrite an existing folder unless asked
  (:class:`OutputExistsError`), and write to a temporary folder first so a failed save leaves
  the old one intact (:func:`save_atomically`).
- :class:`OutputExistsError` is also what ``course_utils.runner`` raises for a run folder that exists.

>>> from course_utils.saving import save_merged        # doctest: +SKIP
>>> save_merged(merged, "out/merged", tokenizer=tokenizer)  # doctest: +SKIP
PosixPath('out/merged')
"""

from __future__ import annotations

import os
import shutil
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only: importing this module needs no torch
    import torch

__all__ = ["OutputExistsError", "save_adapter", "save_atomically", "save_merged"]


class OutputExistsError(FileExistsError):
    """The output folder already holds something: a saved model or adapter, other files, or a
    previous notebook run (:func:`course_utils.runner.new_run_dir` raises it too)."""


_MODEL_FILES = (
    "config.json",
    "adapter_config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "model.safetensors",
    "adapter_model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "adapter_model.bin",
)


def _describe_folder(path: Path) -> str:
    names = {p.name for p in path.iterdir()}
    if "adapter_config.json" in names:
        return "an adapter"
    if "config.json" in names:
        return "a model"
    return f"{len(names)} files"


def save_atomically(path: str | os.PathLike, overwrite: bool, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to create and fill a temporary folder beside ``path``, then move it into place.

    A failed ``write`` leaves ``path`` as it was. A non-empty ``path`` raises
    :class:`OutputExistsError` unless ``overwrite``, and even then only a folder that holds a saved
    model or adapter is replaced.

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "demo"
    >>> def write(tmp: Path) -> None:  # what save_pretrained does
    ...     tmp.mkdir()
    ...     (tmp / "config.json").write_text("{}")
    >>> save_atomically(out, False, write).name
    'demo'
    >>> save_atomically(out, False, lambda tmp: None)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    course_utils.saving.OutputExistsError: ... already holds a model; refusing to overwrite it. Pass overwrite=True to replace it, or choose another path.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} is a file, not a folder: choose another path.")
    existing = path.is_dir() and any(path.iterdir())
    if existing:
        what = _describe_folder(path)
        if not overwrite:
            raise OutputExistsError(
                f"{path} already holds {what}; refusing to overwrite it. Pass overwrite=True to "
                "replace it, or choose another path."
            )
        looks_like_model = all(
            p.name in _MODEL_FILES
            or p.name.endswith((".safetensors", ".json", ".md", ".txt", ".jinja", ".model", ".bin"))
            for p in path.iterdir()
        )
        if not looks_like_model:
            raise OutputExistsError(
                f"{path} holds files that are not a saved model or adapter (e.g. folders or other "
                "files); overwrite=True only replaces model/adapter folders. Choose another path."
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        write(tmp)
        if existing:
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            if path.is_dir():
                path.rmdir()  # empty folder
            tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path


def save_merged(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    tokenizer: Any = None,
    safe_serialization: bool = True,
) -> Path:
    """Save a merged (plain transformers) model, and its tokenizer if given, to a NEW folder.

    Raises:
        OutputExistsError: ``path`` is not empty and ``overwrite`` is False (a ``FileExistsError``).
        TypeError: ``model`` still has LoRA layers (``save_pretrained`` would write only the adapter).

    >>> save_merged(merged, "out/merged", tokenizer=tokenizer)   # doctest: +SKIP
    PosixPath('out/merged')
    """
    from course_utils.adapters import is_peft_model, lora_layers  # these import torch; runner needs none
    from course_utils.quantization import quantization_of

    if is_peft_model(model) or lora_layers(model):
        raise TypeError(
            "This model still has LoRA layers, so save_pretrained would not write a merged model. "
            "Merge first (merged, info = safe_merge(peft_model)), or save the adapter with save_adapter()."
        )
    q = quantization_of(model)
    if q is not None:
        warnings.warn(f"Saving a {q} quantized model: reloading needs bitsandbytes.", UserWarning, stacklevel=2)

    def write(tmp: Path) -> None:
        model.save_pretrained(str(tmp), safe_serialization=safe_serialization)  # type: ignore[operator]
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))

    return save_atomically(path, overwrite, write)


def save_adapter(
    peft_model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    tokenizer: Any = None,
    adapter_name: str | None = None,
) -> Path:
    """Save only the adapter of a PeftModel (a few MB) to a NEW folder.

    ``adapter_name`` picks one adapter (default: the active one); it is written at the top of
    the folder so ``PeftModel.from_pretrained(base, path)`` finds it.

    Raises:
        OutputExistsError: ``path`` is not empty and ``overwrite`` is False.
        TypeError: ``peft_model`` is not a PeftModel.

    >>> save_adapter(peft_model, "out/adapter")   # doctest: +SKIP
    PosixPath('out/adapter')
    """
    from course_utils.adapters import is_peft_model

    if not is_peft_model(peft_model):
        raise TypeError(
            f"save_adapter needs a PeftModel, got {type(peft_model).__name__}. To save a merged model "
            "use save_merged()."
        )
    name = adapter_name or peft_model.active_adapter  # type: ignore[attr-defined]

    def write(tmp: Path) -> None:
        peft_model.save_pretrained(str(tmp), selected_adapters=[name])  # type: ignore[operator]
        sub = tmp / name
        if name != "default" and sub.is_dir():  # peft nests non-default adapters; flatten
            for p in sub.iterdir():
                p.rename(tmp / p.name)
            sub.rmdir()
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))

    return save_atomically(path, overwrite, write)
