"""How long will it take? Step time, tokens per second and GPU-hours of a recipe, from first principles.

`predict_step_time(config, recipe, "T4")` turns the work of one step (`course_utils.step_work`:
FLOPs, bytes, kernel launches per phase) into seconds with a roofline:

- on the device, each phase takes ``max(FLOPs / (peak x matmul efficiency), bytes / (bandwidth x
  memory efficiency))`` (a matmul is limited by arithmetic, an elementwise kernel by memory);
- on the host, every kernel costs ``launch_s`` of Python and dispatch, and every step
  ``step_overhead_s`` (the training loop's own Python, the loss, the optimizer's bookkeeping). A GPU
  runs the kernels asynchronously, so a step takes the longer of host and device, except under
  gradient checkpointing, where the two add up: the H200 measurements show checkpointing costing
  ~230 ms a step where a recomputed forward explains ~70 ms, in LoRA and QLoRA alike (we read it as
  the recomputation, launched from inside backward, no longer overlapping the device; a hypothesis
  that fits both rows, not checked with a profiler). A CPU runs host and device work in turn: they
  always add up;
- several GPUs (``Recipe.n_gpus``, data parallel, ``batch_size`` per GPU): each GPU does one GPU's
  step on its own batch, then the gradients are all-reduced (ring: 2 (N-1)/N of the trainable
  gradient bytes over the interconnect of `course_utils.gpus`); FSDP / ZeRO-3 also all-gather the
  16-bit weights in forward and backward. Communication is added, not overlapped: an upper bound.

**Calibration, once.** Four numbers (matmul efficiency, memory efficiency, ``launch_s``,
``step_overhead_s``) are fitted, least squares on log step time, to four rows of the H200 reference
(`data/reference/h200_smollm2-1.7b.json`), one per mechanism they stand for: ``fft_bfloat16`` (the
most compute-heavy step), ``lora_r16_qv`` and ``lora_r16_all`` (the same step with 2 and 7 adapted
layers: their difference is the adapters' memory traffic and launches) and ``lora_r16_all_gc``
(checkpointing). The fit is kept in ``data/reference/h200_time_calibration.json``
(:func:`write_calibration`). The other four rows (float32 full fine-tuning, LoRA without dropout,
QLoRA, QLoRA with checkpointing) are held out: `reference_time_errors` reports them, and every
printed time carries the largest held-out error (`TimeEstimate.label`). `benchmarks/planner_time.py`
also prints how that error changes with other calibration rows. The same fractions of peak are
assumed on other GPUs, and the host costs are assumed to be those of the H200's host.

**On a CPU**, `measure_cpu` measures this machine in a few seconds (matmul FLOP/s, memory
bandwidth, the cost of one small autograd op, a Trainer step with no work): nothing is fitted to
the notebooks it then predicts (`benchmarks/planner_time.py` checks them).

>>> est = predict_step_time("smollm2-1.7b", Recipe(method="lora"), "H200")
>>> 0.1 < est.step_s < 0.3, est.tokens_per_s > 10_000
(True, True)
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from course_utils.gpus import GPU, get_gpu
from course_utils.recipe import Recipe
from course_utils.resources import data_dir
from course_utils.step_work import StepWork, step_work

__all__ = [
    "CALIBRATION_ROWS",
    "CPU",
    "Efficiency",
    "TimeEstimate",
    "calibrate",
    "h200_efficiency",
    "measure_cpu",
    "predict_step_time",
    "reference_time_errors",
    "write_calibration",
]

REFERENCE_PATH = data_dir("reference") / "h200_smollm2-1.7b.json"
#: Where the calibration is kept once fitted (see :func:`write_calibration`).
CALIBRATION_PATH = data_dir("reference") / "h200_time_calibration.json"
#: The reference rows the GPU efficiencies are fitted to (see the module docstring for why these).
CALIBRATION_ROWS = ("fft_bfloat16", "lora_r16_qv", "lora_r16_all", "lora_r16_all_gc")


@dataclass(frozen=True)
class Efficiency:
    """What fraction of a device's peaks a step reaches, and what the host adds per kernel and per step.

    ``matmul``: of peak FLOP/s; ``memory``: of peak bandwidth; ``launch_s``: host seconds per kernel;
    ``overlap``: the host's launches overlap the device's work (a GPU); ``step_overhead_s``: host work
    per step outside the model (Trainer, data collation); ``start_s``: once per ``trainer.train()``.

    >>> Efficiency(0.5, 0.5, 1e-5).overlap
    True
    """

    matmul: float
    memory: float
    launch_s: float
    overlap: bool = True
    step_overhead_s: float = 0.0
    start_s: float = 0.0
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "matmul": round(self.matmul, 4),
            "memory": round(self.memory, 4),
            "launch_us": round(self.launch_s * 1e6, 2),
            "overlap": self.overlap,
            "step_overhead_ms": round(self.step_overhead_s * 1e3, 3),
            "start_s": round(self.start_s, 3),
            "source": self.source,
        }


@dataclass(frozen=True)
class CPU:
    """This machine's CPU as `measure_cpu` measured it: the rates a small model's training sees.

    ``peak_flops`` and ``bandwidth`` are measured (so efficiencies are 1), ``launch_s`` is the host's
    time per counted kernel (a 2-layer, 8-wide Llama with LoRA), ``random_s`` one random number of a
    dropout mask, ``step_overhead_s`` and ``start_s`` a Trainer run with no work.

    >>> cpu = CPU("demo", 20e9, 5e9, 2e-5, 3e-3, 0.5, threads=2)
    >>> cpu.efficiency().overlap
    False
    """

    name: str
    peak_flops: float
    bandwidth: float
    launch_s: float
    step_overhead_s: float
    start_s: float
    threads: int = 1
    seconds: float = 0.0
    random_s: float = 0.0  # seconds per random number (dropout masks): arithmetic on a CPU

    def efficiency(self) -> Efficiency:
        return Efficiency(
            1.0,
            1.0,
            self.launch_s,
            overlap=False,
            step_overhead_s=self.step_overhead_s,
            start_s=self.start_s,
            source=f"measured on this CPU in {self.seconds:.1f} s ({self.threads} threads)",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "GFLOPs": round(self.peak_flops / 1e9, 2),
            "bandwidth_GBps": round(self.bandwidth / 1e9, 2),
            "launch_us": round(self.launch_s * 1e6, 2),
            "step_overhead_ms": round(self.step_overhead_s * 1e3, 2),
            "start_s": round(self.start_s, 3),
            "threads": self.threads,
            "seconds": round(self.seconds, 2),
            "random_ns": round(self.random_s * 1e9, 3),
        }


@dataclass
class TimeEstimate:
    """A predicted training step: seconds, tokens per second, and what limits it.

    ``device_s`` / ``host_s``: the device's roofline time and the host's launch time of one step;
    ``comm_s``: data-parallel communication; ``phases_s``: each phase's roofline seconds;
    ``error``: the largest relative error of the model where it was checked (None: not checked),
    ``error_source`` says where.

    >>> est = predict_step_time("smollm2-135m", Recipe(batch_size=4, seq_len=256), "L4")
    >>> est.time_for(1000, epochs=2) == math.ceil(2000 / 4) * est.step_s
    True
    """

    model: str
    recipe: Recipe
    device: str
    step_s: float
    tokens_per_step: int
    device_s: float
    host_s: float
    comm_s: float
    phases_s: dict[str, float]
    bound: str
    error: float | None
    error_source: str
    start_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        """Tokens trained per second, all GPUs together."""
        return self.tokens_per_step / self.step_s

    def steps_for(self, examples: int, epochs: float = 1.0) -> int:
        """Optimizer steps to see ``examples`` rows ``epochs`` times (``batch_size`` rows per GPU per step)."""
        return math.ceil(examples * epochs / (self.recipe.batch_size * self.recipe.n_gpus))

    def time_for(self, examples: int, epochs: float = 1.0) -> float:
        """Seconds to train ``epochs`` epochs over ``examples`` rows (plus the one-off start, if known)."""
        return self.steps_for(examples, epochs) * self.step_s + self.start_s

    def gpu_hours(self, examples: int, epochs: float = 1.0) -> float:
        """GPU-hours of that training: wall hours x number of GPUs."""
        return self.time_for(examples, epochs) * self.recipe.n_gpus / 3600

    @property
    def label(self) -> str:
        """How far to trust it: "predicted; ±N% on ..." (the largest error where the model was checked)."""
        if self.error is None:
            return f"predicted; {self.error_source}"
        return f"predicted; ±{100 * self.error:.0f}% on {self.error_source}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "recipe": self.recipe.name,
            "device": self.device,
            "step_s": round(self.step_s, 5),
            "tokens_per_s": round(self.tokens_per_s, 1),
            "device_s": round(self.device_s, 5),
            "host_s": round(self.host_s, 5),
            "comm_s": round(self.comm_s, 5),
            "bound": self.bound,
            "phases_s": {k: round(v, 6) for k, v in self.phases_s.items()},
            "label": self.label,
            "notes": list(self.notes),
        }

    def __repr__(self) -> str:
        lines = [
            f"TimeEstimate({self.model}, {self.recipe.name} on {self.device}): {self.step_s * 1e3:.1f} ms/step, "
            f"{self.tokens_per_s:,.0f} tokens/s ({self.label})",
            f"  limited by {self.bound}; device {self.device_s * 1e3:.1f} ms, host {self.host_s * 1e3:.1f} ms"
            + (f", communication {self.comm_s * 1e3:.1f} ms" if self.comm_s else ""),
        ]
        lines += [f"  {k:<52} {v * 1e3:9.2f} ms" for k, v in self.phases_s.items()]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    __str__ = __repr__


# --------------------------------------------------------------------------- the roofline


def _seconds(work: StepWork, peak_flops: float, bandwidth: float, eff: Efficiency) -> tuple[float, float, dict]:
    phases = {p.name: max(p.flops / (peak_flops * eff.matmul), p.bytes / (bandwidth * eff.memory)) for p in work.phases}
    host = work.kernels * eff.launch_s + eff.step_overhead_s
    return sum(phases.values()), host, phases


def _combine(device_s: float, host_s: float, eff: Efficiency, checkpointing: bool) -> tuple[float, str]:
    if eff.overlap and not checkpointing:
        return max(device_s, host_s), ("host (kernel launches)" if host_s > device_s else "device")
    return device_s + host_s, "device + host in turn"


def _dominant(phases: dict[str, float]) -> str:
    return max(phases, key=phases.get) if phases else ""


def predict_step_time(
    config: Any,
    recipe: Recipe,
    device: str | GPU | CPU = "H200",
    efficiency: Efficiency | None = None,
    *,
    trainer: bool = False,
) -> TimeEstimate:
    """Predict one training step of ``recipe`` on ``config`` on a named GPU (or a measured :class:`CPU`).

    ``efficiency`` defaults to the H200 calibration (:func:`h200_efficiency`) on a GPU and to the CPU's
    own measurement on a CPU. ``trainer=True`` adds what ``transformers.Trainer`` adds: gradient
    clipping, and on a CPU the optimizer's per-tensor loop.

    >>> t4 = predict_step_time("smollm2-1.7b", Recipe(method="qlora", batch_size=4), "T4")
    >>> h200 = predict_step_time("smollm2-1.7b", Recipe(method="qlora", batch_size=4), "H200")
    >>> t4.step_s > 3 * h200.step_s
    True
    """
    est = _predict(config, recipe, device, efficiency, trainer)
    if not isinstance(device, CPU):
        est.error, est.error_source = _reference_error()
    return est


def _predict(
    config: Any, recipe: Recipe, device: str | GPU | CPU, efficiency: Efficiency | None, trainer: bool
) -> TimeEstimate:
    is_cpu = isinstance(device, CPU)
    gpu = None if is_cpu else get_gpu(device)  # type: ignore[arg-type]
    work = step_work(config, recipe, clip_grad_norm=trainer, foreach=not is_cpu)
    if is_cpu:
        assert isinstance(device, CPU)
        eff = efficiency or device.efficiency()
        peak, bw, name = device.peak_flops, device.bandwidth, device.name
        error, source = None, "from a calibration of this CPU (benchmarks/planner_time.py measures its error)"
    else:
        assert gpu is not None
        eff = efficiency or h200_efficiency()
        peak, bw, name = gpu.peak_flops, gpu.bandwidth, gpu.name
        error, source = None, "the H200 reference"
    dev_s, host_s, phases = _seconds(work, peak, bw, eff)
    if is_cpu and work.random_elements:  # dropout masks: random numbers cost arithmetic on a CPU
        assert isinstance(device, CPU)
        phases["random numbers (dropout masks)"] = work.random_elements * device.random_s
        dev_s += phases["random numbers (dropout masks)"]
    step, bound = _combine(dev_s, host_s, eff, recipe.gradient_checkpointing)
    if bound == "device":
        bound = f"device: {_dominant(phases)}"
    comm = 0.0
    notes = list(work.notes)
    if recipe.n_gpus > 1 and gpu is not None:
        comm = (work.allreduce_bytes + work.gather_bytes) / (gpu.interconnect_GBps * 1e9)
        notes.append(
            f"{recipe.n_gpus} GPUs: {work.allreduce_bytes / 1e9:.2f} GB of gradients"
            + (f" and {work.gather_bytes / 1e9:.2f} GB of gathered weights" if work.gather_bytes else "")
            + f" per GPU per step at {gpu.interconnect_GBps:g} GB/s, not overlapped with compute (an upper bound)"
        )
    if gpu is not None and gpu.dtype16 == "float16" and recipe.dtype == "bfloat16":
        notes.append(f"{gpu.name} has no bfloat16: it trains in float16 at the same rate.")
    return TimeEstimate(
        model=work.model,
        recipe=recipe,
        device=name,
        step_s=step + comm,
        tokens_per_step=work.tokens * recipe.n_gpus,
        device_s=dev_s,
        host_s=host_s,
        comm_s=comm,
        phases_s=phases,
        bound=bound,
        error=error,
        error_source=source,
        start_s=eff.start_s,
        notes=notes,
    )


# --------------------------------------------------------------------------- calibration on the reference


def _reference(path: str | Path = REFERENCE_PATH) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def calibrate(
    rows: Sequence[str] = CALIBRATION_ROWS, path: str | Path = REFERENCE_PATH, gpu: str | GPU = "H200"
) -> Efficiency:
    """Fit the matmul and memory efficiencies and the host's launch cost to measured reference rows.

    Least squares on log(predicted / measured step time) over ``rows``, efficiencies kept in (0, 1].
    Levenberg-Marquardt in pure Python from three starts (no scipy): deterministic, well under a second.

    >>> eff = calibrate()
    >>> 0 < eff.matmul <= 1 and 0 < eff.memory <= 1 and 1e-6 < eff.launch_s < 1e-4
    True
    """
    from course_utils.planner import reference_recipes

    ref = _reference(path)
    shape = ref["shape"]
    recipes = reference_recipes(shape["batch"], shape["seq_len"])
    unknown = [r for r in rows if r not in ref["train"]]
    if unknown:
        raise ValueError(f"Calibration rows {unknown} are not in {path}: it has {sorted(ref['train'])}.")
    g = get_gpu(gpu)
    works = [(step_work("smollm2-1.7b", recipes[r]), ref["train"][r]["step_s"]) for r in rows]

    # Per row: (flops, bytes) of each phase, kernels, checkpointing, measured seconds.
    rows_work = [
        ([(p.flops, p.bytes) for p in w.phases], w.kernels, w.recipe.gradient_checkpointing, measured)
        for w, measured in works
    ]

    def residuals(x: list[float]) -> list[float]:
        peak, bw = g.peak_flops * x[0], g.bandwidth * x[1]
        out = []
        for phases, kernels, gc, measured in rows_work:
            dev = sum(max(f / peak, b / bw) for f, b in phases)
            host = kernels * x[2] + x[3]
            step = dev + host if gc else max(dev, host)  # as _combine on a GPU
            out.append(math.log(step / measured))
        return out

    def loss(x: list[float]) -> float:
        return sum(r * r for r in residuals(x))

    # Levenberg-Marquardt on the log residuals, in log parameters (finite-difference Jacobian), from a few
    # starts, keeping the best; parameters clipped to: efficiencies in (0, 1], launch 0.1-1000 us, per-step
    # host overhead 0.1 ms-1 s. Pure Python (4 x 4 normal equations), deterministic.
    lo, hi = [1e-3, 1e-3, 1e-7, 1e-4], [1.0, 1.0, 1e-3, 1.0]

    def clip(z: list[float]) -> list[float]:
        return [min(math.log(h), max(math.log(low), v)) for v, low, h in zip(z, lo, hi)]

    best_x, best = [0.5, 0.5, 1e-5, 0.01], float("inf")
    for start in ([0.5, 0.5, 1e-5, 0.01], [0.8, 0.3, 3e-6, 0.1], [0.3, 0.8, 3e-5, 0.001]):
        z = [math.log(v) for v in start]
        r = residuals(start)
        value = sum(v * v for v in r)
        damping = 1e-3
        for _ in range(200):
            jac = []
            for i in range(4):
                dz = list(z)
                dz[i] += 1e-6
                ri = residuals([math.exp(v) for v in dz])
                jac.append([(a - b) / 1e-6 for a, b in zip(ri, r)])  # jac[i][k] = d r_k / d z_i
            jtj = [[sum(jac[i][k] * jac[j][k] for k in range(len(r))) for j in range(4)] for i in range(4)]
            jtr = [sum(jac[i][k] * r[k] for k in range(len(r))) for i in range(4)]
            moved = False
            while damping < 1e12:
                m = [
                    [jtj[i][j] + (damping * (jtj[i][i] + 1e-12) if i == j else 0.0) for j in range(4)] for i in range(4)
                ]
                trial_z = clip([v - d for v, d in zip(z, _solve(m, jtr))])
                trial_r = residuals([math.exp(v) for v in trial_z])
                trial = sum(v * v for v in trial_r)
                if trial < value:
                    z, r, value, moved = trial_z, trial_r, trial, True
                    damping = max(damping / 10, 1e-12)
                    break
                damping *= 10
            if not moved or value < 1e-20:
                break
        if value < best:
            best_x, best = [math.exp(v) for v in z], value
    x = best_x
    return Efficiency(
        x[0],
        x[1],
        x[2],
        step_overhead_s=x[3],
        source=f"fitted to {', '.join(rows)} of {Path(path).name} ({g.name}, batch {shape['batch']} x {shape['seq_len']})",
    )


@functools.lru_cache(maxsize=1)
def h200_efficiency() -> Efficiency:
    """The efficiencies calibrated once on :data:`CALIBRATION_ROWS` of the H200 reference.

    Read from ``data/reference/h200_time_calibration.json``, which :func:`write_calibration` writes
    (tests/test_step_time.py checks that it equals a fresh :func:`calibrate`); calibrated here if missing.

    >>> h200_efficiency().source.startswith("fitted to fft_bfloat16")
    True
    """
    if not CALIBRATION_PATH.is_file():
        return calibrate()
    data = json.loads(CALIBRATION_PATH.read_text())
    return Efficiency(
        data["matmul"], data["memory"], data["launch_s"], step_overhead_s=data["step_overhead_s"], source=data["source"]
    )


def write_calibration(path: str | Path = CALIBRATION_PATH) -> Efficiency:
    """Calibrate on the shipped reference and write the result where :func:`h200_efficiency` reads it.

    >>> import tempfile, os
    >>> eff = write_calibration(os.path.join(tempfile.mkdtemp(), "calibration.json"))  # doctest: +SKIP
    """
    eff = calibrate()
    data = {
        "what": "step_time efficiencies fitted to the H200 reference (course_utils.step_time.calibrate)",
        "rows": list(CALIBRATION_ROWS),
        "matmul": eff.matmul,
        "memory": eff.memory,
        "launch_s": eff.launch_s,
        "step_overhead_s": eff.step_overhead_s,
        "source": eff.source,
    }
    Path(path).write_text(json.dumps(data, indent=1) + "\n")
    h200_efficiency.cache_clear()
    _reference_error.cache_clear()
    return eff


def _solve(m: list[list[float]], v: list[float]) -> list[float]:
    """Solve the small linear system ``m x = v`` (Gaussian elimination with partial pivoting)."""
    n = len(v)
    a = [row[:] + [v[i]] for i, row in enumerate(m)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda i: abs(a[i][col]))
        a[col], a[pivot] = a[pivot], a[col]
        if abs(a[col][col]) < 1e-300:
            return [0.0] * n
        for i in range(col + 1, n):
            f = a[i][col] / a[col][col]
            for j in range(col, n + 1):
                a[i][j] -= f * a[col][j]
    x = [0.0] * n
    for i in reversed(range(n)):
        x[i] = (a[i][n] - sum(a[i][j] * x[j] for j in range(i + 1, n))) / a[i][i]
    return x


def reference_time_errors(
    path: str | Path = REFERENCE_PATH,
    efficiency: Efficiency | None = None,
    batch_size: int | None = None,
    seq_len: int | None = None,
) -> list[dict[str, Any]]:
    """Predicted vs measured step time of every reference row; ``calibration`` marks the rows fitted to.

    With ``batch_size`` / ``seq_len`` other than the measured shape, rows are predictions only
    (``measured_s`` None): the reference measures one shape.

    >>> rows = reference_time_errors()
    >>> sorted(r["name"] for r in rows if r["calibration"])
    ['fft_bfloat16', 'lora_r16_all', 'lora_r16_all_gc', 'lora_r16_qv']
    """
    from course_utils.planner import reference_recipes

    ref = _reference(path)
    shape = ref["shape"]
    b, s = batch_size or shape["batch"], seq_len or shape["seq_len"]
    measured_shape = (b, s) == (shape["batch"], shape["seq_len"])
    recipes = reference_recipes(b, s)
    eff = efficiency or h200_efficiency()
    out = []
    for name, row in ref["train"].items():
        est = _predict("smollm2-1.7b", recipes[name], ref.get("device", "H200").replace("NVIDIA ", ""), eff, False)
        measured = row["step_s"] if measured_shape else None
        out.append(
            {
                "name": name,
                "calibration": name in CALIBRATION_ROWS,
                "batch x seq": f"{b} x {s}",
                "predicted_s": round(est.step_s, 4),
                "measured_s": measured,
                "rel_error": None if measured is None else round(est.step_s / measured - 1.0, 4),
                "predicted_tok_per_s": round(est.tokens_per_s),
                "bound": est.bound,
            }
        )
    return out


@functools.lru_cache(maxsize=1)
def _reference_error() -> tuple[float, str]:
    held_out = [abs(r["rel_error"]) for r in reference_time_errors() if not r["calibration"]]
    return max(held_out), f"the H200 reference's {len(held_out)} held-out recipes"


# --------------------------------------------------------------------------- the learner's CPU


def _median_of(fn: Any, budget_s: float) -> float:
    """Median seconds of ``fn`` over as many calls as fit in ``budget_s`` (at least 5, after one warm-up).

    The median, not the best: on a busy machine the prediction is for the machine as it is now.
    """
    fn()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 10_000):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def measure_cpu(seconds: float = 3.0, trainer_probe: bool = True) -> CPU:
    """Measure this CPU in about ``seconds``: float32 matmul FLOP/s, memory bandwidth, op and Trainer overheads.

    - matmuls of a small model's shapes (1024 x 256 by 256 x 256, float32), as forward, input-gradient
      and weight-gradient matmuls lay them out;
    - bandwidth: the bytes a mix of out-of-place elementwise kernels (product, SiLU, sum, square, mean)
      moves over a 1 MiB activation-sized tensor, per second: what norms and activations reach;
    - ``launch_s``: a chain of tiny autograd ops, forward and backward, per op;
    - ``step_overhead_s`` / ``start_s``: a ``Trainer`` on a one-parameter model, 2 and 42 steps
      (the difference per step, and what the first steps cost beyond it).
      Skipped with ``trainer_probe=False`` (then 0).

    Uses torch's current thread count (``OMP_NUM_THREADS``). Medians: on a busy machine the prediction
    is for the machine as it is now (on an idle one, median and best agree).

    >>> cpu = measure_cpu(seconds=0.3, trainer_probe=False)
    >>> cpu.peak_flops > 1e8 and cpu.bandwidth > 1e8
    True
    """
    import torch

    start = time.perf_counter()
    budget = max(0.1, seconds) / 3
    # Matmuls of a small model's shapes, as forward (x W^T), input grad (g W) and weight grad (g^T x) use them.
    x, w, g = torch.randn(1024, 256), torch.randn(256, 256), torch.randn(1024, 256)

    def matmuls() -> None:
        torch.mm(x, w.t())
        torch.mm(g, w)
        torch.mm(g.t(), x)

    flops = 3 * 2 * 1024 * 256 * 256 / _median_of(matmuls, budget)
    # Elementwise work as a step does it: out-of-place product, SiLU, sum, square and row mean over a
    # 1 MiB activation-sized tensor (new outputs each time, as in training).
    a, b = torch.randn(1024, 256), torch.randn(1024, 256)

    def elementwise() -> None:
        c = a * 1.0001
        d = torch.nn.functional.silu(c)
        e = d + b
        e.pow(2).mean(-1, keepdim=True)

    # bytes read + written per element: mul 4+4, silu 4+4, add 8+4, pow 4+4, mean 4
    moved = 40 * 1024 * 256
    bandwidth = moved / _median_of(elementwise, budget)
    # The host's cost per counted kernel, measured on the real code path: forward and backward of a
    # 2-layer, 8-wide copy of the architecture with LoRA (arithmetic negligible), divided by the
    # kernels step_work counts for it. Falls back to a chain of tiny autograd ops if that cannot run.
    launch = _host_probe(budget)
    # Random numbers (dropout masks): seconds per element, which a CPU pays in arithmetic.
    mask_in = torch.empty(1024, 256)
    rng_s = _median_of(lambda: torch.nn.functional.dropout(mask_in, 0.05, training=True), budget) / mask_in.numel()
    step_overhead, start_s = (0.0, 0.0)
    if trainer_probe:
        step_overhead, start_s = _trainer_overhead()
    return CPU(
        name=f"this CPU ({torch.get_num_threads()} threads)",
        peak_flops=flops,
        bandwidth=bandwidth,
        launch_s=launch,
        random_s=rng_s,
        step_overhead_s=step_overhead,
        start_s=start_s,
        threads=torch.get_num_threads(),
        seconds=time.perf_counter() - start,
    )


def _host_probe(budget: float) -> float:
    """Host seconds per kernel counted by `step_work`, from a 2-layer, 8-wide Llama with LoRA on q and v."""
    import warnings

    import torch

    try:
        from peft import LoraConfig, get_peft_model
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=4,
            vocab_size=32,
            max_position_embeddings=64,
        )
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = get_peft_model(
                LlamaForCausalLM(config), LoraConfig(r=2, lora_dropout=0.05, target_modules=["q_proj", "v_proj"])
            )
        model.train()
        ids = torch.randint(0, 32, (2, 8))

        def step() -> None:
            model(input_ids=ids, labels=ids).loss.backward()

        rc = Recipe(
            method="lora",
            dtype="float32",
            autocast=False,
            r=2,
            target_modules=["q_proj", "v_proj"],
            batch_size=2,
            seq_len=8,
        )
        kernels = step_work(config, rc).kernels - 14  # without the optimizer's kernels (no step here)
        return _median_of(step, budget) / max(kernels, 1.0)
    except Exception:  # noqa: BLE001 - an architecture transformers cannot build here: the generic probe
        leaf = torch.randn(4, 4, requires_grad=True)

        def chain() -> None:
            h = leaf
            for _ in range(50):
                h = h * 1.0001
            h.sum().backward()

        return _median_of(chain, budget) / (50 * 2 + 2)


def _trainer_overhead() -> tuple[float, float]:
    """(seconds per step, seconds before the first step) of ``Trainer`` on a model with one weight."""
    import tempfile

    import torch
    from transformers import PrinterCallback, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    class One(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids: Any = None, labels: Any = None) -> dict[str, Any]:
            return {"loss": (self.w * input_ids.float().mean() - 1).pow(2).sum()}

    rows = [{"input_ids": [1, 2, 3, 4], "labels": [1, 2, 3, 4]} for _ in range(256)]

    def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
        return {k: torch.tensor([r[k] for r in batch]) for k in ("input_ids", "labels")}

    def run(steps: int) -> float:
        with tempfile.TemporaryDirectory() as out:
            args = TrainingArguments(
                output_dir=out,
                max_steps=steps,
                per_device_train_batch_size=4,
                use_cpu=True,
                report_to="none",
                save_strategy="no",
                disable_tqdm=True,
                logging_steps=10,
                dataloader_pin_memory=False,
            )
            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            try:
                trainer = Trainer(model=One(), args=args, train_dataset=rows, data_collator=collate)
                trainer.remove_callback(PrinterCallback)
                t = time.perf_counter()
                trainer.train()
                return time.perf_counter() - t
            finally:
                hf_logging.set_verbosity(verbosity)

    run(1)  # imports and first-call costs
    short, long = run(2), run(42)
    per_step = max(0.0, (long - short) / 40)
    return per_step, max(0.0, short - 2 * per_step)
