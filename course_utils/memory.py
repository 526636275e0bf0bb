"""Measure memory: per training phase, per logged step, and per part of a model.

- `MemoryTracker`: ``with tracker.phase("forward"): ...`` records current and peak memory of each
  named phase. CUDA: torch's caching allocator (allocated, reserved, peak, device total/free).
  Apple MPS: ``torch.mps``. CPU: the process's resident memory (RSS), peak from a light
  background sampler plus ``ru_maxrss``. It never fails without a GPU and says what it measured.
- `MemoryCallback`: a ``transformers.TrainerCallback`` that adds ``peak_mem_MiB`` (peak since
  the previous log) to each training log, so it lands in ``trainer.state.log_history``. Works
  unchanged with ``Trainer``, TRL's ``SFTTrainer`` and ``DPOTrainer``.
- `model_memory_breakdown` (from `course_utils.model_breakdown`): bytes of weights by dtype (bitsandbytes 4-bit / 8-bit storage and
  quantization state counted as stored), trainable vs frozen, gradients, AdamW state, buffers.
- `gradient_checkpointing_active`: warns when checkpointing is enabled but cannot act (eval mode).
- `measure_training_peak` (from `course_utils.training_peak`): peak CUDA memory of a few training steps of a recipe (full
  fine-tuning, LoRA, QLoRA, with or without gradient checkpointing), like the H200 reference;
  `requires_cuda`: ``False`` plus ONE printed sentence when there is no CUDA GPU, so GPU-only
  notebook cells skip with a deterministic message.

>>> tracker = MemoryTracker()              # doctest: +SKIP
>>> with tracker.phase("forward"):         # doctest: +SKIP
...     loss = model(**batch).loss
>>> tracker                                 # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import html
import os
import resource
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch

from course_utils.model_breakdown import ModelBreakdown, model_memory_breakdown  # re-exported
from course_utils.tables import html_table
from course_utils.training_peak import measure_training_peak, requires_cuda  # re-exported

try:  # a plain base class when transformers is missing, so the module still imports
    from transformers import TrainerCallback as _TrainerCallbackBase
except ImportError:  # pragma: no cover
    _TrainerCallbackBase = object  # type: ignore[assignment,misc]

__all__ = [
    "MemoryWarning",
    "PhaseRecord",
    "MemoryTracker",
    "MemoryCallback",
    "ModelBreakdown",
    "measure_training_peak",
    "model_memory_breakdown",
    "requires_cuda",
    "gradient_checkpointing_active",
    "gradient_checkpointing_enabled",
    "resolve_memory_device",
]

MiB = 2**20


class MemoryWarning(UserWarning):
    """A memory measurement or setting that does not do what it seems to."""


# --------------------------------------------------------------------------- diagnostics


def gradient_checkpointing_enabled(model: torch.nn.Module) -> bool:
    """True if any submodule has gradient checkpointing switched on (works through PeftModel).

    Reads the ``gradient_checkpointing`` flag that transformers sets on its layers, without the
    deprecated ``is_gradient_checkpointing`` property.

    >>> gradient_checkpointing_enabled(torch.nn.Linear(2, 2))
    False
    """
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def gradient_checkpointing_active(model: torch.nn.Module, warn: bool = True) -> bool:
    """Return True if gradient checkpointing will act; warn if it is on but the model is in eval mode.

    transformers only checkpoints when ``self.training`` is True, and ``from_pretrained``
    returns a model in eval mode: call ``model.train()`` or checkpointing saves nothing.

    >>> gradient_checkpointing_active(torch.nn.Linear(2, 2))
    False
    """
    if not gradient_checkpointing_enabled(model):
        return False
    if model.training:
        return True
    if warn:
        warnings.warn(
            "Gradient (activation) checkpointing is enabled but the model is in eval mode, where it does "
            "nothing: transformers checkpoints only when model.training is True, so every activation is "
            "kept. Call model.train() before training; from_pretrained() returns a model in eval mode.",
            MemoryWarning,
            stacklevel=2,
        )
    return False


def resolve_memory_device(device: str | torch.device | None = None) -> str:
    """Which memory to measure: ``"cuda"``, ``"mps"`` or ``"cpu"``; ``None``/``"auto"`` picks the best.

    Asking for CUDA (or MPS) where there is none warns and falls back to CPU memory.

    >>> resolve_memory_device("cpu")
    'cpu'
    """
    kind = "auto" if device is None or str(device) == "auto" else torch.device(device).type
    mps_ok = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if kind == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if mps_ok else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        warnings.warn(
            "CUDA memory was requested but CUDA is not available; measuring this process's CPU "
            "memory (resident set size) instead.",
            MemoryWarning,
            stacklevel=3,
        )
        return "cpu"
    if kind == "mps" and not mps_ok:
        warnings.warn(
            "MPS memory was requested but MPS is not available; measuring CPU memory instead.",
            MemoryWarning,
            stacklevel=3,
        )
        return "cpu"
    if kind not in ("cuda", "mps", "cpu"):
        raise ValueError(f"Cannot measure memory of device {device!r}: use 'auto', 'cuda', 'mps' or 'cpu'.")
    return kind


# --------------------------------------------------------------------------- readers


def _rss_bytes() -> int:
    import psutil

    return int(psutil.Process(os.getpid()).memory_info().rss)


def _maxrss_bytes() -> int:
    # ru_maxrss: kilobytes on Linux, bytes on macOS. A process-lifetime high-water mark.
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(value if sys.platform == "darwin" else value * 1024)


class _Sampler:
    """Background thread that samples a reading and keeps the maximum since the last reset.

    On CPU (and MPS) there is no per-phase peak counter: ``ru_maxrss`` only ever rises over the
    process lifetime, so it says nothing about a phase that stays below an earlier peak. A thread
    reading RSS every few milliseconds catches transient peaks inside a phase at negligible cost
    (one /proc read per sample; it sleeps otherwise, and CPU-bound torch ops release the GIL).
    """

    def __init__(self, read: Callable[[], int], interval_s: float) -> None:
        self.read, self.interval_s = read, interval_s
        self._max = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            value = self.read()
            with self._lock:
                self._max = max(self._max, value)

    def reset(self, value: int) -> None:
        with self._lock:
            self._max = value

    def peak(self, value: int) -> int:
        with self._lock:
            self._max = max(self._max, value)
            return self._max

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=1.0)
            self._thread = None


# --------------------------------------------------------------------------- tracker


@dataclass
class PhaseRecord:
    """Memory of one named phase, in bytes (``reserved`` only on CUDA)."""

    name: str
    device: str
    start_bytes: int
    end_bytes: int
    peak_bytes: int
    reserved_bytes: int | None = None
    seconds: float = 0.0

    @property
    def delta_bytes(self) -> int:
        return self.end_bytes - self.start_bytes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            start_MiB=round(self.start_bytes / MiB, 1),
            end_MiB=round(self.end_bytes / MiB, 1),
            peak_MiB=round(self.peak_bytes / MiB, 1),
            delta_MiB=round(self.delta_bytes / MiB, 1),
        )
        return d


class MemoryTracker:
    """Record current and peak memory per named phase (load, forward, backward, step, merge, ...).

    ``device``: ``"auto"`` (CUDA, else MPS, else CPU), ``"cuda"``, ``"mps"`` or ``"cpu"``; asking for
    CUDA without CUDA warns and measures CPU memory. What is measured is in ``.device`` and
    ``.what``. Phases do not nest (on CUDA each phase resets torch's peak counter).

    >>> tracker = MemoryTracker("cpu")
    >>> with tracker.phase("allocate"):
    ...     x = torch.ones(1024, 1024)
    >>> tracker.records[0].name
    'allocate'
    >>> tracker.close()
    """

    def __init__(
        self,
        device: str | torch.device | None = "auto",
        model: torch.nn.Module | None = None,
        sample_interval_s: float = 0.005,
    ) -> None:
        self.device = resolve_memory_device(device)
        self.model = model
        self.records: list[PhaseRecord] = []
        self._gc_checked = False
        self._sampler: _Sampler | None = None
        if self.device == "cpu":
            self._sampler = _Sampler(_rss_bytes, sample_interval_s)
        elif self.device == "mps":
            self._sampler = _Sampler(lambda: int(torch.mps.current_allocated_memory()), sample_interval_s)

    @property
    def what(self) -> str:
        """A sentence saying what the numbers are."""
        if self.device == "cuda":
            name = torch.cuda.get_device_name()
            return f"CUDA memory allocated by torch on {name} (peak = torch.cuda.max_memory_allocated)"
        if self.device == "mps":
            return "Apple MPS memory allocated by torch (torch.mps.current_allocated_memory, sampled peak)"
        return "CPU resident memory of this process (RSS; peak sampled every few ms and from ru_maxrss)"

    def current_bytes(self) -> int:
        """Memory in use now on the measured device."""
        if self.device == "cuda":
            return int(torch.cuda.memory_allocated())
        if self.device == "mps":
            return int(torch.mps.current_allocated_memory())
        return _rss_bytes()

    def device_info(self) -> dict[str, Any]:
        """Device total/free (CUDA), or total/available system memory (CPU, MPS)."""
        if self.device == "cuda":
            free, total = torch.cuda.mem_get_info()
            return {"device": torch.cuda.get_device_name(), "total_bytes": int(total), "free_bytes": int(free)}
        import psutil

        vm = psutil.virtual_memory()
        return {"device": self.device, "total_bytes": int(vm.total), "free_bytes": int(vm.available)}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[PhaseRecord]:
        """Measure the enclosed block as phase ``name``; the record is appended on exit."""
        if self.model is not None and not self._gc_checked:
            self._gc_checked = True
            gradient_checkpointing_active(self.model)
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = self.current_bytes()
        maxrss_before = _maxrss_bytes() if self.device == "cpu" else 0
        if self._sampler is not None:
            self._sampler.start()
            self._sampler.reset(start)
        record = PhaseRecord(name=name, device=self.device, start_bytes=start, end_bytes=start, peak_bytes=start)
        t0 = time.perf_counter()
        try:
            yield record
        finally:
            if self.device == "cuda":
                torch.cuda.synchronize()
            record.seconds = time.perf_counter() - t0
            record.end_bytes = self.current_bytes()
            if self.device == "cuda":
                record.peak_bytes = int(torch.cuda.max_memory_allocated())
                record.reserved_bytes = int(torch.cuda.memory_reserved())
            else:
                assert self._sampler is not None
                peak = self._sampler.peak(record.end_bytes)
                if self.device == "cpu":
                    # If the lifetime high-water mark rose during this phase, it was set in this
                    # phase: an exact peak that a sampler could have missed between samples.
                    maxrss_after = _maxrss_bytes()
                    if maxrss_after > maxrss_before:
                        peak = max(peak, maxrss_after)
                record.peak_bytes = peak
            self.records.append(record)

    def close(self) -> None:
        """Stop the background sampler (if any)."""
        if self._sampler is not None:
            self._sampler.stop()

    def __enter__(self) -> MemoryTracker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "what": self.what, "phases": [r.to_dict() for r in self.records]}

    def __repr__(self) -> str:
        lines = [f"MemoryTracker({self.device}): {self.what}"]
        lines.append(f"{'phase':<20} {'start MiB':>10} {'end MiB':>10} {'peak MiB':>10} {'delta MiB':>10}")
        for r in self.records:
            lines.append(
                f"{r.name:<20} {r.start_bytes / MiB:>10.1f} {r.end_bytes / MiB:>10.1f} "
                f"{r.peak_bytes / MiB:>10.1f} {r.delta_bytes / MiB:>+10.1f}"
            )
        return "\n".join(lines)

    __str__ = __repr__

    def _repr_html_(self) -> str:
        rows = [
            (
                r.name,
                f"{r.start_bytes / MiB:.1f}",
                f"{r.end_bytes / MiB:.1f}",
                f"{r.peak_bytes / MiB:.1f}",
                f"{r.delta_bytes / MiB:+.1f}",
            )
            for r in self.records
        ]
        table = html_table(["phase", "start MiB", "end MiB", "peak MiB", "delta MiB"], rows)
        return f"<div><b>Memory by phase</b> ({html.escape(self.what)}){table}</div>"

    def plot(self, ax: Any = None) -> Any:
        """Bar chart of end and peak memory per phase (MiB); returns the matplotlib Axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(self.records) + 2), 3.5))
        names = [r.name for r in self.records]
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], [r.end_bytes / MiB for r in self.records], width=0.4, label="at end")
        ax.bar([x + 0.2 for x in xs], [r.peak_bytes / MiB for r in self.records], width=0.4, label="peak")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(names)
        ax.set_xlabel("phase")
        ax.set_ylabel("memory (MiB)")
        ax.set_title(f"Memory per phase ({self.device})")
        ax.legend()
        return ax


# --------------------------------------------------------------------------- callback


class MemoryCallback(_TrainerCallbackBase):  # type: ignore[misc,valid-type]
    """Trainer callback: adds the peak memory since the previous log (``peak_mem_MiB``) to each log.

    The value lands in ``trainer.state.log_history``; works with ``Trainer``, ``SFTTrainer`` and
    ``DPOTrainer``. ``.steps`` holds (step, peak MiB) for every optimizer step.

    >>> cb = MemoryCallback(device="cpu")
    >>> trainer = Trainer(..., callbacks=[cb])   # doctest: +SKIP
    >>> trainer.train(); cb.plot()               # doctest: +SKIP
    """

    def __init__(self, device: str | torch.device | None = "auto", key: str = "peak_mem_MiB") -> None:
        self.key = key
        self.tracker = MemoryTracker(device)
        self.device = self.tracker.device
        self.steps: list[tuple[int, float]] = []
        self._since_log: list[float] = []
        self._phase: contextlib.AbstractContextManager[PhaseRecord] | None = None
        self._checked = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.steps.clear()
        self._since_log.clear()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._phase = self.tracker.phase(f"step {state.global_step + 1}")
        self._phase.__enter__()

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self._phase is None:
            return
        self._phase.__exit__(None, None, None)
        self._phase = None
        record = self.tracker.records.pop()  # keep only the per-step series, not every record
        peak = record.peak_bytes / MiB
        self.steps.append((state.global_step, peak))
        self._since_log.append(peak)
        if model is not None and not self._checked:
            self._checked = True
            gradient_checkpointing_active(model)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not self._since_log or logs is None:
            return  # e.g. the end-of-training summary: no step since the last log
        value = round(max(self._since_log), 1)
        self._since_log.clear()
        logs[self.key] = value
        # Trainer appends a copy of `logs` to log_history before calling on_log: update that too.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1][self.key] = value

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.tracker.close()

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "what": self.tracker.what, "steps": [list(s) for s in self.steps]}

    def __repr__(self) -> str:
        if not self.steps:
            return f"MemoryCallback({self.device}): no steps yet"
        peaks = [p for _, p in self.steps]
        return (
            f"MemoryCallback({self.device}): {len(self.steps)} steps, peak per step "
            f"min {min(peaks):.1f} / max {max(peaks):.1f} MiB ({self.tracker.what})"
        )

    __str__ = __repr__

    def _repr_html_(self) -> str:
        table = html_table(["step", "peak MiB"], [(str(s), f"{p:.1f}") for s, p in self.steps])
        return f"<div><b>Peak memory per step</b> ({html.escape(self.tracker.what)}){table}</div>"

    def plot(self, ax: Any = None) -> Any:
        """Curve of peak memory per optimizer step (MiB); returns the matplotlib Axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([s for s, _ in self.steps], [p for _, p in self.steps], marker="o")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("peak memory (MiB)")
        ax.set_title(f"Peak memory per training step ({self.device})")
        return ax
