"""Will it fit, and how long will it take? Memory and time of one recipe on several GPUs and GPU counts.

`time_table(config, recipe, gpus=("T4", "L4", "A100-80GB"), n_gpus=(1, 2, 4, 8), examples=..., epochs=...)`
puts the memory planner's peak (`course_utils.planner.estimate_training_memory`) beside the predicted
step time (`course_utils.step_time.predict_step_time`) for each GPU model and count: does it fit, how
many tokens per second, how long for the data set, how many GPU-hours. `TimeTable.cheapest(hours)`
names the setup with the fewest GPU-hours that fits and finishes in time (with ``prices``, the
cheapest in money). More GPUs use FSDP (``sharding="fsdp"``) unless the recipe names another.

Every time is a prediction; `TimeTable.label` says how far it was off where it was checked.

>>> t = time_table("smollm2-135m", Recipe(method="lora", batch_size=4), gpus=("T4", "H100"), n_gpus=(1, 2),
...                examples=1000)
>>> best = t.cheapest(hours=1.0)
>>> best.gpu, best.n_gpus
('H100', 1)
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from course_utils.gpus import get_gpu
from course_utils.planner import estimate_training_memory, load_config
from course_utils.recipe import Recipe
from course_utils.step_time import predict_step_time
from course_utils.tables import html_table

__all__ = ["Setup", "TimeTable", "time_table"]


@dataclass(frozen=True)
class Setup:
    """One GPU model x count: memory per GPU, whether it fits, predicted speed and cost.

    >>> Setup("T4", 1, 10.0, True, 0.5, 8192.0, 1800.0, 0.5).hours
    0.5
    """

    gpu: str
    n_gpus: int
    peak_gib: float
    fits: bool
    step_s: float
    tokens_per_s: float
    seconds: float
    gpu_hours: float

    @property
    def hours(self) -> float:
        return self.seconds / 3600

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpu": self.gpu,
            "n_gpus": self.n_gpus,
            "peak_GiB_per_GPU": round(self.peak_gib, 2),
            "fits": self.fits,
            "step_s": round(self.step_s, 4),
            "tokens_per_s": round(self.tokens_per_s),
            "hours": round(self.hours, 3),
            "gpu_hours": round(self.gpu_hours, 3),
        }


@dataclass
class TimeTable:
    """Setups of one recipe (rows), with the data set size they were timed for and the error label.

    >>> t = time_table("smollm2-135m", Recipe(batch_size=2), gpus=("L4",), n_gpus=(1,), examples=100)
    >>> t.rows[0].fits
    True
    """

    model: str
    recipe: Recipe
    examples: int
    epochs: float
    rows: list[Setup]
    label: str

    def cheapest(self, hours: float | None = None, prices: Mapping[str, float] | None = None) -> Setup | None:
        """The setup that fits, finishes within ``hours`` (if given) and costs least.

        Cost is GPU-hours, or GPU-hours x ``prices[gpu]`` (e.g. dollars per GPU-hour) when prices are
        given; ties go to fewer GPUs, then to less memory. None when nothing qualifies.
        """
        ok = [s for s in self.rows if s.fits and (hours is None or s.hours <= hours)]
        if prices is not None:
            ok = [s for s in ok if s.gpu in prices]
        if not ok:
            return None

        def cost(s: Setup) -> tuple[float, int, float]:
            price = prices[s.gpu] if prices is not None else 1.0
            return (s.gpu_hours * price, s.n_gpus, get_gpu(s.gpu).memory_gib)

        return min(ok, key=cost)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "recipe": self.recipe.name,
            "examples": self.examples,
            "epochs": self.epochs,
            "label": self.label,
            "rows": [s.to_dict() for s in self.rows],
        }

    def to_frame(self) -> Any:
        """The rows as a pandas DataFrame (a notebook's table)."""
        import pandas as pd

        return pd.DataFrame(
            [
                {
                    "GPU": s.gpu,
                    "GPUs": s.n_gpus,
                    "peak GiB per GPU": round(s.peak_gib, 1),
                    "fits": "yes" if s.fits else "no",
                    "step s": _sig(s.step_s) if s.fits else None,
                    "tokens/s": _sig(s.tokens_per_s) if s.fits else None,
                    "hours": _sig(s.hours) if s.fits else None,
                    "GPU-hours": _sig(s.gpu_hours) if s.fits else None,
                }
                for s in self.rows
            ]
        )

    def __repr__(self) -> str:
        head = (
            f"{'GPU':<10} {'GPUs':>4} {'peak GiB/GPU':>12} {'fits':>4} {'step s':>8} {'tokens/s':>9} "
            f"{'hours':>8} {'GPU-hours':>9}"
        )
        lines = [
            f"{self.model}, {self.recipe.name}: {self.examples:,} examples x {self.epochs:g} epoch{'' if self.epochs == 1 else 's'} "
            f"(times: {self.label})",
            head,
            "-" * len(head),
        ]
        for s in self.rows:
            if s.fits:
                timing = f"{s.step_s:8.3f} {s.tokens_per_s:9,.0f} {s.hours:8.2f} {s.gpu_hours:9.2f}"
            else:
                timing = f"{'-':>8} {'-':>9} {'-':>8} {'-':>9}"
            lines.append(f"{s.gpu:<10} {s.n_gpus:4d} {s.peak_gib:12.2f} {'yes' if s.fits else 'no':>4} {timing}")
        return "\n".join(lines)

    __str__ = __repr__

    def _repr_html_(self) -> str:
        rows = [
            (
                s.gpu,
                s.n_gpus,
                f"{s.peak_gib:.1f}",
                "yes" if s.fits else "no",
                *(
                    (f"{s.step_s:.3f}", f"{s.tokens_per_s:,.0f}", f"{s.hours:.2f}", f"{s.gpu_hours:.2f}")
                    if s.fits
                    else ("-",) * 4
                ),
            )
            for s in self.rows
        ]
        table = html_table(["GPU", "GPUs", "peak GiB/GPU", "fits", "step s", "tokens/s", "hours", "GPU-hours"], rows)
        return f"<div><b>{html.escape(self.model)}</b>: {html.escape(str(self.recipe.name))} ({html.escape(self.label)}){table}</div>"


def _sig(x: float, digits: int = 2) -> float:
    """``x`` rounded to ``digits`` significant digits (tables that hold on every machine)."""
    if x == 0:
        return 0.0
    from math import floor, log10

    return round(x, -int(floor(log10(abs(x)))) + digits - 1)


def time_table(
    config: Any,
    recipe: Recipe,
    gpus: Sequence[str] = ("T4", "L4", "A100-40GB", "A100-80GB", "H100"),
    n_gpus: Sequence[int] = (1,),
    examples: int = 10_000,
    epochs: float = 1.0,
    sharding: str = "fsdp",
) -> TimeTable:
    """Memory and predicted time of ``recipe`` on each GPU model in ``gpus`` and each count in ``n_gpus``.

    ``recipe.batch_size`` stays per GPU; with N GPUs the data set takes 1/N of the steps. A count above
    1 uses ``sharding`` (FSDP by default) unless the recipe already names one.

    >>> t = time_table("smollm2-1.7b", Recipe(method="qlora", batch_size=4), gpus=("T4",), examples=1000)
    >>> t.rows[0].fits, t.rows[0].hours > 0
    (True, True)
    """
    cfg = load_config(config)
    rows = []
    label = ""
    for name in gpus:
        gpu = get_gpu(name)
        for n in n_gpus:
            rc = (
                recipe.replace(n_gpus=n, sharding=recipe.sharding if recipe.sharding != "none" else sharding)
                if n > 1
                else recipe.replace(n_gpus=1, sharding="none")
            )
            mem = estimate_training_memory(cfg, rc)
            est = predict_step_time(cfg, rc, gpu)
            label = est.label
            seconds = est.time_for(examples, epochs)
            rows.append(
                Setup(
                    gpu=gpu.name,
                    n_gpus=n,
                    peak_gib=mem.peak_gib,
                    fits=mem.fits(gpu.memory_gib),
                    step_s=est.step_s,
                    tokens_per_s=est.tokens_per_s,
                    seconds=seconds,
                    gpu_hours=seconds * n / 3600,
                )
            )
    model = str(getattr(cfg, "_name_or_path", "") or getattr(cfg, "model_type", "model")).rstrip("/").split("/")[-1]
    return TimeTable(model=model, recipe=recipe, examples=examples, epochs=epochs, rows=rows, label=label)
