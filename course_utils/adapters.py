"""Adapters in a model and on disk: recognize them, read their files, load one onto the right base.

- :func:`is_peft_model` and :func:`lora_layers`: is this a PeftModel, and which layers carry adapters.
- :func:`read_adapter_folder`: ``adapter_config.json`` and the tensor shapes of an adapter folder, with
  :class:`AdapterFileError` naming a damaged or truncated file (peft's own errors name neither).
- :func:`load_adapter_checked`: ``PeftModel.from_pretrained`` after checking that the adapter's module
  names and shapes fit this base (:class:`AdapterBaseMismatchError` says what to load instead).

>>> from course_utils.adapters import load_adapter_checked   # doctest: +SKIP
>>> peft_model = load_adapter_checked(base, "out/my-adapter")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from course_utils.quantization import quiet_bitsandbytes

__all__ = [
    "AdapterBaseMismatchError",
    "AdapterFileError",
    "is_peft_model",
    "load_adapter_checked",
    "lora_layers",
    "read_adapter_folder",
]


class AdapterBaseMismatchError(ValueError):
    """The adapter was made for another base model (its module names or shapes don't fit)."""


class AdapterFileError(ValueError):
    """A file of an adapter folder can't be read: ``adapter_config.json`` is not valid JSON, or the
    weights file is truncated or damaged. The message names the file and what to do."""


def is_peft_model(model: Any) -> bool:
    """True for a peft ``PeftModel`` (a base model with adapters attached).

    >>> is_peft_model(torch.nn.Linear(2, 2))
    False
    """
    quiet_bitsandbytes()
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def lora_layers(model: torch.nn.Module) -> list[tuple[str, Any]]:
    """``(name, module)`` of every peft tuner layer (LoRA and friends) in ``model``; empty for a plain model.

    >>> lora_layers(torch.nn.Linear(2, 2))
    []
    """
    quiet_bitsandbytes()
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


_RESAVE_HINT = (
    "Copy or download the adapter again, or save it again from the model you trained "
    "(save_adapter(peft_model, path, overwrite=True), or peft_model.save_pretrained(path))."
)


def _read_adapter_config(path: Path) -> dict[str, Any]:
    """``adapter_config.json`` of the adapter folder ``path`` as a dict, with errors that name the file.

    peft reads this file with a bare ``json.load``: a damaged file gives a JSONDecodeError that
    names neither the file nor the fix, so the file is read and checked here first.
    """
    cfg_file = path / "adapter_config.json"
    if not cfg_file.exists():
        hint = (
            " It has a config.json: it looks like a full (merged) model; load it with "
            "AutoModelForCausalLM.from_pretrained."
            if (path / "config.json").exists()
            else ""
        )
        raise FileNotFoundError(f"No adapter_config.json in {path}: not an adapter folder.{hint}")
    text = cfg_file.read_text(encoding="utf-8", errors="replace")
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as err:
        raise AdapterFileError(
            f"{cfg_file} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}; the "
            f"file has {len(text)} characters): it is damaged or was cut off while being written or "
            f"copied. {_RESAVE_HINT}"
        ) from None
    if not isinstance(cfg, dict) or "peft_type" not in cfg:
        seen = f"a JSON {type(cfg).__name__}" if not isinstance(cfg, dict) else f"keys {sorted(cfg)[:6]}"
        raise AdapterFileError(
            f"{cfg_file} is not a peft adapter config (expected a JSON object with 'peft_type', "
            f"got {seen}). {_RESAVE_HINT}"
        )
    return cfg


def _adapter_weights_file(path: Path) -> Path:
    """The adapter's weights file (``adapter_model.safetensors``, else ``adapter_model.bin``)."""
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (path / name).exists():
            return path / name
    raise AdapterFileError(
        f"{path} has an adapter_config.json but no adapter_model.safetensors (or adapter_model.bin): "
        f"the adapter's weights are missing, e.g. a copy or upload that stopped half-way. {_RESAVE_HINT}"
    )


def _adapter_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shape of every tensor in the adapter's weights file, read without loading the tensors.

    A truncated or damaged file raises :class:`AdapterFileError` naming it (safetensors and
    torch raise errors that name neither the file nor the fix).
    """
    import pickle

    from safetensors import SafetensorError, safe_open

    weights = _adapter_weights_file(path)
    size = weights.stat().st_size
    try:
        if weights.suffix == ".safetensors":
            # safe_open checks the header against the file size: a truncated file fails here
            with safe_open(str(weights), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not a dict)
        sd = torch.load(str(weights), map_location="cpu", weights_only=True, mmap=True)
        return {k: tuple(v.shape) for k, v in sd.items()}
    except (SafetensorError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise AdapterFileError(
            f"{weights} can't be read ({type(err).__name__}: {err}; the file has {size:,} bytes): it is "
            f"truncated or damaged, e.g. an interrupted download, copy or save (a full disk). {_RESAVE_HINT}"
        ) from None


def read_adapter_folder(path: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """The adapter's config and tensor shapes; :class:`AdapterFileError` names a damaged file.

    Every place in course_utils that loads an adapter calls this first, so a broken file fails
    with one clear error instead of a parser's.

    >>> read_adapter_folder(Path("no-such-adapter"))
    Traceback (most recent call last):
    ...
    FileNotFoundError: No adapter_config.json in no-such-adapter: not an adapter folder.
    """
    return _read_adapter_config(path), _adapter_shapes(path)


def _short_name(name: Any) -> str:
    return Path(str(name or "")).name or str(name)


def _shape_problems(target: torch.nn.Module, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """One line per adapter tensor whose module is missing from ``target`` or whose size does not fit it."""
    problems: list[str] = []
    modules = dict(target.named_modules())
    for key, shape in sorted(shapes.items()):
        mod_key = key.removeprefix("base_model.model.")
        for suffix in (".lora_A.weight", ".lora_B.weight", ".lora_embedding_A", ".lora_embedding_B", ".weight"):
            if mod_key.endswith(suffix):
                mod_name = mod_key[: -len(suffix)]
                break
        else:
            continue
        module = modules.get(mod_name)
        if module is None:
            problems.append(f"{mod_name}: no such module in the base model")
            continue
        in_f = getattr(module, "in_features", None)
        out_f = getattr(module, "out_features", None)
        if isinstance(module, torch.nn.Embedding):
            in_f, out_f = module.num_embeddings, module.embedding_dim
        if suffix == ".lora_A.weight" and in_f is not None and shape[-1] != in_f:
            problems.append(f"{mod_name}: adapter expects {shape[-1]} inputs, base layer has {in_f}")
        elif suffix == ".lora_B.weight" and out_f is not None and shape[0] != out_f:
            problems.append(f"{mod_name}: adapter expects {shape[0]} outputs, base layer has {out_f}")
        elif suffix == ".lora_embedding_A" and in_f is not None and shape[-1] != in_f:
            problems.append(f"{mod_name}: adapter expects a vocabulary of {shape[-1]}, base has {in_f}")
        elif suffix == ".lora_embedding_B" and out_f is not None and shape[0] != out_f:
            problems.append(f"{mod_name}: adapter expects embedding size {shape[0]}, base has {out_f}")
        elif suffix == ".weight":  # modules_to_save: a full copy of the layer
            w = getattr(module, "weight", None)
            if w is not None and tuple(w.shape) != tuple(shape):
                problems.append(f"{mod_name}: adapter stores a {tuple(shape)} weight, base has {tuple(w.shape)}")
    return problems


def load_adapter_checked(
    base_model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    adapter_name: str = "default",
    is_trainable: bool = False,
    **kwargs: Any,
) -> Any:
    """``PeftModel.from_pretrained(base_model, path)`` after checking the adapter fits this base.

    Reads ``adapter_config.json`` and the adapter's tensor shapes (without loading them) and
    checks that every adapted module exists in ``base_model`` with matching in/out sizes. A
    different ``base_model_name_or_path`` with fitting shapes only warns (local paths and hub
    ids name the same model differently).

    Raises:
        FileNotFoundError: ``path`` has no ``adapter_config.json``.
        AdapterFileError: ``adapter_config.json`` is not valid JSON, or the weights file is
            missing, truncated or damaged (the message names the file).
        AdapterBaseMismatchError: the adapter was made for another base model.

    >>> peft_model = load_adapter_checked(base, "out/my-adapter")   # doctest: +SKIP
    """
    quiet_bitsandbytes()
    from peft import PeftModel

    path = Path(path)
    cfg, shapes = read_adapter_folder(path)
    target = base_model.get_base_model() if is_peft_model(base_model) else base_model  # type: ignore[operator]
    expected = cfg.get("base_model_name_or_path")
    given = getattr(getattr(target, "config", None), "_name_or_path", None) or getattr(target, "name_or_path", None)

    problems = _shape_problems(target, shapes)
    if problems:
        vocab_hint = ""
        if any(("embed" in p or "lm_head" in p or "vocabulary" in p) for p in problems):
            vocab_hint = (
                " If you added tokens before training, load the same tokenizer and call "
                "base_model.resize_token_embeddings(len(tokenizer)) before loading the adapter."
            )
        shown = "\n  ".join(problems[:5]) + (f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else "")
        made_for = repr(expected) if expected else "another model (adapter_config.json does not name it)"
        how = f" (AutoModelForCausalLM.from_pretrained({expected!r}))" if expected else ""
        raise AdapterBaseMismatchError(
            f"The adapter in {path} does not fit this base model: it was made for "
            f"{made_for}, the base you passed is {given!r}.\n  {shown}\n"
            f"Load the base model the adapter was trained on{how} and try again.{vocab_hint}"
        )
    if expected and given and _short_name(expected) != _short_name(given):
        warnings.warn(
            f"The adapter in {path} was trained on {expected!r}; you are loading it on {given!r}. "
            "Shapes fit, so it will load; make sure this is the same (or an intended) base model.",
            UserWarning,
            stacklevel=2,
        )
    if is_peft_model(base_model):
        base_model.load_adapter(str(path), adapter_name=adapter_name, is_trainable=is_trainable, **kwargs)  # type: ignore[operator]
        return base_model
    return PeftModel.from_pretrained(
        base_model, str(path), adapter_name=adapter_name, is_trainable=is_trainable, **kwargs
    )
