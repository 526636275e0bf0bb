"""What every notebook's first cells do: seed, quiet the known noise, say what runs where.

Nothing here runs at import time: a notebook calls :func:`setup` explicitly.

>>> info = setup(seed=0, show=False)
>>> info["device"] in {"cpu", "cuda", "mps"}
True
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import warnings
from typing import Any

__all__ = [
    "METRICS_ENV_VAR",
    "expect",
    "in_colab",
    "quiet",
    "record_metrics",
    "recorded_metrics",
    "seed_everything",
    "setup",
    "versions",
]

METRICS_ENV_VAR = "COURSE_METRICS_PATH"
_METRICS: dict[str, Any] = {}

LIBRARIES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes")


def in_colab() -> bool:
    """True inside Google Colab (where the setup cell installs the course first)."""
    try:
        return importlib.util.find_spec("google.colab") is not None
    except ModuleNotFoundError:  # no `google` package at all
        return False


def versions() -> dict[str, str]:
    """Installed versions of the libraries the course uses (``"missing"`` when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            out[lib] = "missing"
    return out


#: Warnings that are noise in a lesson, by message (regular expressions matched at the start):
#: each depends on the machine (no GPU, no network) or on a library's own code, not on the learner's code.
NOISE_WARNINGS: tuple[str, ...] = (
    # bitsandbytes on a CPU: paged 8-bit optimizers fall back to plain ones
    r"Paged optimizers are not supported on CPU",
    # peft, offline: it tries to read the base model's config from the hub to compare vocabularies
    r"Unable to fetch remote file due to the following error",
    r"Could not find a config file in .* - will assume that the vocabulary was not modified",
    # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` in every get_peft_model
    # (peft_model.py): a warning about peft's code, not the learner's (pyproject's unit tests ignore it too)
    r"`is_gradient_checkpointing` is deprecated",
)


def quiet() -> None:
    """Silence what is noise in a lesson; keep the libraries' deprecation and future warnings visible.

    - bitsandbytes' CPU-kernel log lines ("Failed to load CPU gemm_4bit_forward ...") differ
      between CPUs: its logger goes to ERROR before peft imports it;
    - transformers/datasets progress bars and info logs;
    - the warnings in :data:`NOISE_WARNINGS`, each by its message.

    ``DeprecationWarning`` and ``FutureWarning`` from transformers, peft, TRL and torch stay visible
    (shown once each, Python's default): the course teaches the API they announce. The one exception
    is in :data:`NOISE_WARNINGS`: a deprecated name that peft itself reads. Errors still show.

    >>> import warnings
    >>> quiet()
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
    ...     warnings.warn("`gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
    >>> [str(w.message).split()[0] for w in caught]
    ['`gradient_checkpointing`']
    """
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    for message in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so re-runs reproduce the checked outputs."""
    from transformers import set_seed

    set_seed(seed)


def setup(seed: int = 0, *, model: str | None = None, show: bool = True) -> dict[str, Any]:
    """Seed, quiet the noise, and print device, model and library versions.

    Returns the same facts as a dict (device, model, versions).
    """
    quiet()
    seed_everything(seed)
    from course_utils.loading import resolve_device

    info: dict[str, Any] = {
        "device": resolve_device("auto").type,
        "model": model,
        "versions": versions(),
        "colab": in_colab(),
    }
    if show:
        v = info["versions"]
        libs = ", ".join(f"{k} {v[k]}" for k in LIBRARIES if k in v)
        print(f"device: {info['device']} | model: {model or '(not chosen yet)'} | seed: {seed}")
        print(f"python {v['python']}, {libs}")
        if model and model != "course-tiny":  # what this architecture cannot do as Llama does, said once
            from course_utils.architectures import architecture_notes

            for note in architecture_notes(model):
                print(f"note: {note}")
    return info


def expect(statement: str, holds: bool, *, hint: str | None = None) -> None:
    """Print a claim and whether it holds, e.g. ``accuracy after training >= 80%: yes``.

    Numbers that come out of training or 16-bit arithmetic differ in their last digits between
    CPU families (AVX2, AVX-512, ARM) even with fixed seeds. A notebook therefore prints such
    numbers in a cell whose output nbval ignores, and checks the lesson in the next cell with
    ``expect``: the printed verdict is the same on every machine, and a broken course turns it
    into ``NO``, which fails the notebook's check. On another model (``MODEL = ...``) a ``NO``
    is information, not an error: the claim was written for the default model.

    ``hint`` says what to try when the claim fails on another model (more steps, another
    learning rate); it is printed on a second line, ``  try: <hint>``, only after a ``NO``.
    ``course-utils run`` reads the ``<statement>: NO`` lines and reports each failed claim.

    >>> expect("accuracy after training >= 80%", 0.917 >= 0.8, hint="MAX_STEPS = 300")
    accuracy after training >= 80%: yes
    >>> expect("loss went down", 2.1 < 1.9, hint="more steps (MAX_STEPS = 300) or a larger learning rate")
    loss went down: NO
      try: more steps (MAX_STEPS = 300) or a larger learning rate
    """
    held = bool(holds)
    print(f"{statement}: {'yes' if held else 'NO'}")
    if not held and hint:
        print(f"  try: {hint}")


def record_metrics(**metrics: Any) -> dict[str, Any]:
    """Record a notebook's key results (accuracy before/after, seconds, ...) for the course runner.

    Values are kept in memory and, when ``$COURSE_METRICS_PATH`` is set (``course-utils run``
    sets it for each notebook), written there as JSON together with the process's peak
    memory, so the run summary can show them. Returns everything recorded so far; prints nothing.

    >>> record_metrics(accuracy_after=0.9)["accuracy_after"]
    0.9
    """
    import json

    _METRICS.update(metrics)
    path = os.environ.get(METRICS_ENV_VAR)
    if path:
        payload = dict(_METRICS)
        payload["peak_rss_MiB"] = _peak_rss_mib()
        try:
            import torch

            if torch.cuda.is_available():
                payload["cuda_peak_allocated_MiB"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
        with open(path, "w") as fh:
            json.dump(payload, fh, indent=1, default=float)
    return dict(_METRICS)


def recorded_metrics() -> dict[str, Any]:
    """Everything :func:`record_metrics` has recorded in this process."""
    return dict(_METRICS)


def _peak_rss_mib() -> float:
    """Peak resident memory of this process (MiB); ru_maxrss is KiB on Linux, bytes on macOS."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)
