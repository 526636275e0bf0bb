"""course_utils: the helper package of the PEFT course.

One module per purpose: ``devices`` (the device and dtype policy), ``loading`` (models and
tokenizers), ``data`` (the course tasks), ``evaluation`` (task accuracy), ``training`` (adapters
with the Trainer), ``quantization`` (bitsandbytes), ``memory`` (tracking and breakdown),
``planner`` (training-memory estimates), ``adapters`` (adapter files, loading one with a check),
``merging`` (merging an adapter into its base), ``saving`` (saving without clobbering),
``retention`` (what a merge keeps), ``reference`` / ``tolerance`` / ``validation`` (merged vs
adapter checks), ``plotting``, ``widgets``, ``checks`` (exercises), ``notebook`` (set-up),
``cli`` (``course-utils run | doctor | plan``).

Importing the package has no side effects and is cheap: the names below load their module
on first use.

>>> import course_utils
>>> course_utils.DEFAULT_MODEL
'course-tiny'
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "DEFAULT_MODEL": "loading",
    "load_model": "loading",
    "load_tokenizer": "loading",
    "model_from_env": "loading",
    "resolve_device": "devices",
    "ModelNotAvailableError": "loading",
    "load_task": "data",
    "evaluate_task": "evaluation",
    "generate_answers": "evaluation",
    "preference_accuracy": "evaluation",
    "train_lora": "training",
    "setup": "notebook",
    "record_metrics": "notebook",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"course_utils.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'course_utils' has no attribute {name!r}")
