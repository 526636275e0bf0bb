"""Run the course's notebooks headless: every notebook (or chosen ones), one summary table.

`run_notebooks` executes notebooks with papermill (parameters ``MODEL``, ``DTYPE``, ``DEVICE``,
``MAX_STEPS`` go into the notebook's ``parameters`` cell), writes the executed copies and a
summary (``summary.md``, ``summary.json``) into an output folder, and keeps going when one
notebook fails: its row names the failing cell. `execute_inplace` re-executes a notebook with
the default model and writes it back with outputs, minus widget state and timing metadata:
the one command that regenerates a notebook's committed outputs.

The kernels get the same environment as the nbval run in ``pytest`` (`KERNEL_ENV`), so outputs
written by ``--inplace`` are the ones nbval compares against.

>>> select_notebooks(["01"], available=[Path("notebooks/01_lora_training.ipynb")])
[PosixPath('notebooks/01_lora_training.ipynb')]
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CPU_ENV",
    "KERNEL_ENV",
    "NOTEBOOKS_DIR",
    "CellError",
    "FailedClaim",
    "NotebookResult",
    "RunSummary",
    "UnknownNotebookError",
    "available_notebooks",
    "select_notebooks",
    "locate_model",
    "new_run_dir",
    "kernel_env",
    "clean_notebook",
    "failed_claims",
    "execute_notebook",
    "execute_inplace",
    "run_notebooks",
]

PACKAGE_PARENT = Path(__file__).resolve().parent.parent
#: The course's notebooks folder (next to the package in a checkout).
NOTEBOOKS_DIR = PACKAGE_PARENT / "notebooks"

#: Environment every notebook kernel gets (here and in the nbval run, see the root conftest.py):
#: a fixed hash seed (set and dict order), no tqdm bars (they differ between runs).
KERNEL_ENV: dict[str, str] = {"PYTHONHASHSEED": "0", "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
#: Added for committed outputs (``--inplace``) and nbval: never reach for the hub.
OFFLINE_ENV: dict[str, str] = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
#: Added for committed outputs (``--inplace``): the CPU on every machine, so a GPU or a Mac writes the
#: same outputs as the CPU CI that compares them. CUDA is hidden from torch, and ``$COURSE_DEVICE``
#: makes ``resolve_device("auto")`` (course_utils.loading) answer ``cpu`` where MPS exists.
CPU_ENV: dict[str, str] = {"CUDA_VISIBLE_DEVICES": "", "COURSE_DEVICE": "cpu"}

_NB_NAME = re.compile(r"^(\d+)_")
#: Kernel command-line options: ipykernel's start-up warning about unencrypted local TCP is noise
#: in every run (the kernel talks to this process on localhost only).
_KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR"]


class UnknownNotebookError(ValueError):
    """A notebook name or number that matches none of the course's notebooks."""


# --------------------------------------------------------------------------- selection


def available_notebooks(folder: str | Path = NOTEBOOKS_DIR) -> list[Path]:
    """The ``NN_topic.ipynb`` notebooks in ``folder``, in teaching order (checkpoints excluded)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.ipynb") if not p.name.startswith("."))


def select_notebooks(
    names: Sequence[str], available: Sequence[Path] | None = None, folder: str | Path = NOTEBOOKS_DIR
) -> list[Path]:
    """Resolve names to notebook paths; no names means all of them.

    A name may be a path to an ``.ipynb`` file, a number (``"1"``, ``"01"``), a stem
    (``"01_lora_training"``) or the stem without its number (``"lora_training"``).
    Raises :class:`UnknownNotebookError` listing the available notebooks.

    >>> nbs = [Path("n/01_a.ipynb"), Path("n/02_b.ipynb")]
    >>> [p.name for p in select_notebooks(["2", "a"], available=nbs)]
    ['02_b.ipynb', '01_a.ipynb']
    """
    available = list(available_notebooks(folder) if available is None else available)
    if not names:
        if not available:
            raise UnknownNotebookError(
                f"No notebooks (*.ipynb) found in {folder}. Pass notebook paths, or run from the course's root folder."
            )
        return available
    chosen: list[Path] = []
    for name in names:
        match = _match(name, available)
        if match is None:
            listing = ", ".join(p.stem for p in available) or f"(none in {folder})"
            raise UnknownNotebookError(
                f"Unknown notebook {name!r}. Available: {listing}. Use a number ('01'), a name "
                "('01_lora_training') or the path of an .ipynb file."
            )
        if match not in chosen:
            chosen.append(match)
    return chosen


def _match(name: str, available: Sequence[Path]) -> Path | None:
    name = str(name).strip()
    as_path = Path(name)
    if as_path.suffix == ".ipynb":
        if as_path.is_file():
            return as_path
        name = as_path.stem
    for p in available:
        m = _NB_NAME.match(p.stem)
        if p.stem == name or p.name == name:
            return p
        if m and name.isdigit() and int(m.group(1)) == int(name):
            return p
        if m and p.stem[m.end() :] == name:
            return p
    return None


def locate_model(name: str) -> str:
    """Find where ``name`` loads from, before running anything: its folder or (cached) hub id.

    Unknown short names, folders without ``config.json`` and hub ids that are neither cached nor
    (when online) on the hub raise :class:`course_utils.loading.ModelNotAvailableError` with a
    one-line message saying what to do. Reads only ``config.json``.
    """
    from course_utils import loading

    path = loading.resolve_model_path(name)
    if Path(path).is_dir():
        return path
    try:
        if loading._offline():
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(path, "config.json")
            if not isinstance(found, str):
                raise FileNotFoundError(f"{path}/config.json is not in the local Hugging Face cache")
        else:
            from huggingface_hub import hf_hub_download

            hf_hub_download(path, "config.json", etag_timeout=5)
    except Exception as err:  # hub/network errors come in many classes
        raise loading._not_available(name, path, err) from None
    return path


# --------------------------------------------------------------------------- output folder


def new_run_dir(out: str | Path | None = None, *, base: str | Path = "runs", overwrite: bool = False) -> Path:
    """Create and return the folder for a run's executed notebooks and summary.

    ``out=None``: a new ``<base>/<YYYYmmdd-HHMMSS>/`` (suffixed ``-2``, ``-3``... if taken).
    An explicit ``out`` that already holds files raises
    :class:`course_utils.merging.OutputExistsError` unless ``overwrite=True`` (then its previous
    contents are removed).
    """
    import shutil

    if out is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        candidate, k = Path(base) / stamp, 1
        while candidate.exists():
            k += 1
            candidate = Path(base) / f"{stamp}-{k}"
        candidate.mkdir(parents=True)
        return candidate
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            # defined once, in course_utils.merging (the module that saves); imported only here
            # because merging imports torch, which `course-utils run` itself never needs
            from course_utils.merging import OutputExistsError

            what = "a previous run" if (out / "summary.json").exists() else "files"
            raise OutputExistsError(
                f"The output folder {out} already holds {what}. Pass --overwrite to replace it, choose "
                "another --out, or leave --out out to get a new runs/<timestamp>/ folder."
            )
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


# --------------------------------------------------------------------------- results


@dataclass
class CellError:
    """Where and how a notebook failed: cell index (0-based, in the original notebook), the
    first line of its source, and the error."""

    cell_index: int
    execution_count: int | None
    source_first_line: str
    ename: str
    evalue: str

    def __str__(self) -> str:
        evalue = self.evalue.strip().splitlines()[0][:200] if self.evalue.strip() else ""
        return f"cell {self.cell_index} `{self.source_first_line}`: {self.ename}" + (f": {evalue}" if evalue else "")


@dataclass
class FailedClaim:
    """A lesson's claim that did not hold: the line ``<statement>: NO`` printed by
    :func:`course_utils.notebook.expect`, the cell it came from (0-based, original notebook) and
    the ``  try: <hint>`` line that followed it, if any."""

    cell_index: int
    statement: str
    hint: str | None = None

    def __str__(self) -> str:
        return f"cell {self.cell_index} `{self.statement}`" + (f" (try: {self.hint})" if self.hint else "")


#: A notebook's status in a run. A crash (a cell raised, the kernel died) is ``failed``. A notebook
#: that ran but printed failed claims is ``claims not met`` (a failure) on a full run, and
#: ``ran, claims not met (short run)`` with ``--max-steps``: a smoke run trains too little for the
#: lesson's claims, so it is reported, not counted as a failure.
STATUS_OK, STATUS_CRASHED, STATUS_CLAIMS, STATUS_SHORT = (
    "ok",
    "failed",
    "claims not met",
    "ran, claims not met (short run)",
)
_FAILING = (STATUS_CRASHED, STATUS_CLAIMS)


@dataclass
class NotebookResult:
    """One notebook's run: status (``"ok"``, ``"failed"`` for a crash, ``"claims not met"``,
    ``"ran, claims not met (short run)"``), seconds, peak memory, metrics, the failed claims."""

    notebook: str
    status: str
    seconds: float
    peak_memory_MiB: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: CellError | None = None
    output_path: str | None = None
    failed_claims: list[FailedClaim] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Not a failure: ran cleanly, or a short run whose claims were not met."""
        return self.status not in _FAILING

    @property
    def crashed(self) -> bool:
        return self.status == STATUS_CRASHED

    def detail(self) -> str:
        """The summary's last column: the crash, the failed claims, or the key metrics."""
        claims = "; ".join(str(c) for c in self.failed_claims)
        if self.crashed:
            return f"failed at {self.error}" + (f"; claims not met before it: {claims}" if claims else "")
        if self.status == STATUS_CLAIMS:
            return f"{len(self.failed_claims)} claims not met: {claims}"
        if self.status == STATUS_SHORT:
            return f"ran, {len(self.failed_claims)} claims not met (short run): {claims}"
        return _metrics_cell(self.metrics)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_CLAIM_NO = re.compile(r"^(?P<statement>\S.*): NO$")
_CLAIM_HINT = re.compile(r"^  try: (?P<hint>.+)$")


def failed_claims(nb: Any) -> list[FailedClaim]:
    """The failed claims in an executed notebook's printed output (``<statement>: NO`` lines).

    ``nb`` is a notebook as read by ``nbformat`` (or its JSON as a dict). Only stdout streams are
    read, line by line, exactly as :func:`course_utils.notebook.expect` prints; cell indices count
    the original notebook's cells (papermill's injected-parameters cell is not counted).

    >>> import nbformat
    >>> printed = "loss went down: yes\\naccuracy >= 80%: NO\\n  try: MAX_STEPS = 300\\n"
    >>> out = nbformat.v4.new_output("stream", name="stdout", text=printed)
    >>> cell = nbformat.v4.new_code_cell("expect(...)", outputs=[out])
    >>> [str(c) for c in failed_claims(nbformat.v4.new_notebook(cells=[cell]))]
    ['cell 0 `accuracy >= 80%` (try: MAX_STEPS = 300)']
    """
    found: list[FailedClaim] = []
    index = -1
    for cell in nb["cells"]:
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags or "papermill-error-cell-tag" in tags:
            continue
        index += 1
        if cell.get("cell_type") != "code":
            continue
        text = "".join(
            "".join(o["text"]) if isinstance(o.get("text"), list) else str(o.get("text", ""))
            for o in cell.get("outputs", [])
            if o.get("output_type") == "stream" and o.get("name") == "stdout"
        )
        lines = text.splitlines()
        for i, line in enumerate(lines):
            m = _CLAIM_NO.match(line)
            if m:
                hint = _CLAIM_HINT.match(lines[i + 1]) if i + 1 < len(lines) else None
                found.append(FailedClaim(index, m["statement"], hint["hint"] if hint else None))
    return found


def _status(error: CellError | None, claims: list[FailedClaim], short_run: bool) -> str:
    if error is not None:
        return STATUS_CRASHED
    if claims:
        return STATUS_SHORT if short_run else STATUS_CLAIMS
    return STATUS_OK


_KEY_METRICS = ("accuracy_before", "accuracy_after")


def _format_metric(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _metrics_cell(metrics: dict[str, Any]) -> str:
    shown = {k: v for k, v in metrics.items() if k not in {"peak_rss_MiB", "cuda_peak_allocated_MiB"}}
    keys = [k for k in _KEY_METRICS if k in shown] + [k for k in shown if k not in _KEY_METRICS]
    return ", ".join(f"{k}={_format_metric(shown[k])}" for k in keys)


@dataclass
class RunSummary:
    """The results of a run, with the parameters used; renders as a Markdown/plain table."""

    results: list[NotebookResult]
    out_dir: str | None
    parameters: dict[str, Any]
    started: str = ""

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failed(self) -> list[NotebookResult]:
        return [r for r in self.results if not r.ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "out_dir": self.out_dir,
            "parameters": self.parameters,
            "ok": self.ok,
            "results": [r.to_dict() for r in self.results],
        }

    def to_markdown(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.parameters.items() if v is not None) or "notebook defaults"
        lines = [
            f"# Course run {self.started}",
            "",
            f"Parameters: {params}",
            "",
            "| notebook | status | seconds | peak memory (MiB) | key metrics |",
            "|---|---|---:|---:|---|",
        ]
        for r in self.results:
            mem = f"{r.peak_memory_MiB:.0f}" if r.peak_memory_MiB is not None else ""
            lines.append(f"| {r.notebook} | {r.status} | {r.seconds:.1f} | {mem} | {r.detail().replace('|', '/')} |")
        lines += ["", self.counts() + "."]
        return "\n".join(lines) + "\n"

    def counts(self) -> str:
        """``"2 ok, 1 failed (1 crashed, 0 with claims not met)"``, plus the short runs' unmet claims."""
        n = {
            s: sum(r.status == s for r in self.results)
            for s in (STATUS_OK, STATUS_CRASHED, STATUS_CLAIMS, STATUS_SHORT)
        }
        text = f"{n[STATUS_OK]} ok, {len(self.failed)} failed ({n[STATUS_CRASHED]} crashed, {n[STATUS_CLAIMS]} with claims not met)"
        if n[STATUS_SHORT]:
            text += f", {n[STATUS_SHORT]} ran with claims not met (short run)"
        return text

    def __repr__(self) -> str:
        return self.to_markdown()

    def _repr_html_(self) -> str:
        import html

        rows = "".join(
            f"<tr><td>{html.escape(r.notebook)}</td><td>{html.escape(r.status)}</td><td>{r.seconds:.1f}</td>"
            f"<td>{'' if r.peak_memory_MiB is None else f'{r.peak_memory_MiB:.0f}'}</td>"
            f"<td>{html.escape(r.detail())}</td></tr>"
            for r in self.results
        )
        return (
            "<table><tr><th>notebook</th><th>status</th><th>seconds</th><th>peak memory (MiB)</th>"
            f"<th>key metrics</th></tr>{rows}</table><p>{html.escape(self.counts())}.</p>"
        )

    def write(self, folder: str | Path) -> tuple[Path, Path]:
        """Write ``summary.md`` and ``summary.json`` into ``folder``; return their paths."""
        folder = Path(folder)
        md, js = folder / "summary.md", folder / "summary.json"
        md.write_text(self.to_markdown())
        js.write_text(json.dumps(self.to_dict(), indent=1, default=str) + "\n")
        return md, js


# --------------------------------------------------------------------------- execution helpers


@contextlib.contextmanager
def kernel_env(extra: dict[str, str | None] | None = None) -> Iterator[None]:
    """Set environment variables for kernels started inside the block (``None`` unsets one).

    Kernels inherit this process's environment when they start, so this is how a run passes
    `KERNEL_ENV`, ``$COURSE_MODEL`` and ``$COURSE_METRICS_PATH``. The package's parent folder
    goes first on ``PYTHONPATH`` so ``import course_utils`` works without an install.
    """
    changes: dict[str, str | None] = dict(KERNEL_ENV)
    changes["MPLBACKEND"] = None  # the inline backend, so figures land in the notebook (Agg shows nothing)
    pythonpath = os.environ.get("PYTHONPATH", "")
    if str(PACKAGE_PARENT) not in pythonpath.split(os.pathsep):
        changes["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_PARENT), pythonpath) if p)
    changes.update(extra or {})
    saved = {k: os.environ.get(k) for k in changes}
    try:
        for k, v in changes.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = str(v)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _PeakMemory:
    """Sample the resident memory of this process's children (the kernel) every 0.2 s."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak = interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        try:
            import psutil
        except ImportError:  # pragma: no cover - psutil is a dependency
            return
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            try:
                for child in me.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        total += child.memory_info().rss
            except psutil.Error:
                pass
            self.peak = max(self.peak, total / 2**20)
            self._stop.wait(self.interval)

    def __enter__(self) -> _PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def _kernel_name(nb_path: Path) -> str:
    try:
        meta = json.loads(nb_path.read_text()).get("metadata", {})
        return meta.get("kernelspec", {}).get("name") or "python3"
    except (OSError, ValueError):
        return "python3"


def _cell_error(nb: Any, err: Any) -> CellError:
    """Turn papermill's error into the failing cell of the ORIGINAL notebook (no injected cell)."""
    index = int(getattr(err, "cell_index", -1))
    # the written copy has papermill's error banner and anchor cells: drop them to get back the
    # executed order, where ``index`` counts, then discount the injected-parameters cell
    cells = [c for c in nb.cells if "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])]
    injected = sum(1 for c in cells[: max(index, 0)] if "injected-parameters" in c.get("metadata", {}).get("tags", []))
    source = str(getattr(err, "source", "") or "")
    first = next((ln.strip() for ln in source.splitlines() if ln.strip()), "")
    return CellError(
        cell_index=index - injected,
        execution_count=getattr(err, "exec_count", None),
        source_first_line=first[:120],
        ename=str(getattr(err, "ename", type(err).__name__)),
        evalue=str(getattr(err, "evalue", "") or ""),
    )


def execute_notebook(
    path: str | Path,
    output_path: str | Path,
    parameters: dict[str, Any] | None = None,
    *,
    env: dict[str, str | None] | None = None,
    cell_timeout: float = 1200,
    metrics_path: str | Path | None = None,
    short_run: bool = False,
) -> NotebookResult:
    """Execute one notebook with papermill into ``output_path``; never raises for a cell error.

    The kernel runs in the notebook's folder with `KERNEL_ENV` plus ``env``; ``metrics_path``
    becomes ``$COURSE_METRICS_PATH`` so :func:`course_utils.notebook.record_metrics` lands there.
    The executed copy's failed claims (:func:`failed_claims`) make the status ``claims not met``,
    or ``ran, claims not met (short run)`` when ``short_run`` (a ``--max-steps`` smoke run).
    """
    import nbformat
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    path, output_path = Path(path), Path(output_path)
    extra: dict[str, str | None] = dict(env or {})
    if metrics_path is not None:
        Path(metrics_path).unlink(missing_ok=True)
        extra["COURSE_METRICS_PATH"] = str(Path(metrics_path).resolve())
    error: CellError | None = None
    start = time.perf_counter()
    with kernel_env(extra), _PeakMemory() as mem:
        try:
            pm.execute_notebook(
                str(path),
                str(output_path),
                parameters=parameters or {},
                kernel_name=_kernel_name(path),
                language="python",
                progress_bar=False,
                log_output=False,
                cwd=str(path.resolve().parent),
                execution_timeout=cell_timeout,
                extra_arguments=_KERNEL_ARGS,
            )
        except PapermillExecutionError as err:
            error = _cell_error(nbformat.read(str(output_path), as_version=4), err)
        except Exception as err:  # kernel died, timeout, bad notebook JSON, ...
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            error = CellError(-1, None, "(notebook could not be executed)", type(err).__name__, first)
    seconds = time.perf_counter() - start
    metrics: dict[str, Any] = {}
    if metrics_path is not None and Path(metrics_path).is_file():
        with contextlib.suppress(ValueError, OSError):
            metrics = json.loads(Path(metrics_path).read_text())
    peak = max([mem.peak] + [float(metrics[k]) for k in ("peak_rss_MiB",) if k in metrics]) or None
    claims: list[FailedClaim] = []
    if output_path.is_file():
        with contextlib.suppress(ValueError, OSError, KeyError):
            claims = failed_claims(json.loads(output_path.read_text()))
    return NotebookResult(
        notebook=path.stem,
        status=_status(error, claims, short_run),
        seconds=round(seconds, 2),
        peak_memory_MiB=None if peak is None else round(peak, 1),
        metrics=metrics,
        error=error,
        output_path=str(output_path),
        failed_claims=claims,
    )


def clean_notebook(nb: Any) -> Any:
    """Strip what must not be committed, keep the outputs (STYLE: nbval section).

    Removes widget state (``metadata.widgets``), execution-time metadata (``cell.metadata.execution``,
    ``ExecuteTime``), papermill's metadata and its injected-parameters cell. Returns ``nb``.
    """
    nb.metadata.pop("widgets", None)
    nb.metadata.pop("papermill", None)
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    for cell in nb.cells:
        for key in ("execution", "ExecuteTime", "papermill", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
    return nb


def execute_inplace(path: str | Path, *, cell_timeout: float = 1200) -> NotebookResult:
    """Re-execute ``path`` with the default model, offline, on the CPU, and write it back with its outputs.

    The notebook keeps its own parameters (no injected cell); ``$COURSE_MODEL`` is unset so
    ``MODEL`` is the default; the kernel environment is the nbval one plus `CPU_ENV` (CUDA hidden,
    ``$COURSE_DEVICE=cpu``), so the committed outputs are CPU outputs on any machine.
    Outputs with a failed claim (``<statement>: NO``) are not written either: committed outputs
    must hold every lesson's claims; the result's status is ``claims not met`` and names them. On a failing cell the
    file is left untouched and the result names the cell.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    path = Path(path)
    nb = nbformat.read(str(path), as_version=4)
    client = NotebookClient(
        nb,
        timeout=cell_timeout,
        kernel_name=_kernel_name(path),
        record_timing=False,
        extra_arguments=_KERNEL_ARGS,
        resources={"metadata": {"path": str(path.resolve().parent)}},
    )
    env: dict[str, str | None] = {"COURSE_MODEL": None, "COURSE_METRICS_PATH": None, **OFFLINE_ENV, **CPU_ENV}
    error: CellError | None = None
    start = time.perf_counter()
    with kernel_env(env), _PeakMemory() as mem:
        try:
            client.execute()
        except CellExecutionError as err:
            index = next(
                (i for i, c in enumerate(nb.cells) for o in c.get("outputs", []) if o.get("output_type") == "error"), -1
            )
            cell = nb.cells[index] if index >= 0 else None
            first = next((ln.strip() for ln in (cell.source if cell else "").splitlines() if ln.strip()), "")
            error = CellError(
                index,
                cell.get("execution_count") if cell else None,
                first[:120],
                getattr(err, "ename", "CellExecutionError"),
                getattr(err, "evalue", ""),
            )
        except (DeadKernelError, TimeoutError, RuntimeError) as err:
            error = CellError(-1, None, "(notebook could not be executed)", type(err).__name__, str(err)[:200])
    seconds = time.perf_counter() - start
    claims = failed_claims(nb)
    if error is None and not claims:
        clean_notebook(nb)
        tmp = path.with_name(f".{path.name}.tmp")
        nbformat.write(nb, str(tmp))
        os.replace(tmp, path)
    return NotebookResult(
        notebook=path.stem,
        status=_status(error, claims, short_run=False),
        seconds=round(seconds, 2),
        peak_memory_MiB=round(mem.peak, 1) or None,
        error=error,
        output_path=str(path),
        failed_claims=claims,
    )


def run_notebooks(
    notebooks: Sequence[str | Path],
    out_dir: str | Path,
    *,
    model: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
    max_steps: int | None = None,
    cell_timeout: float = 1200,
    progress: bool = True,
) -> RunSummary:
    """Execute ``notebooks`` one after another into ``out_dir``; a failure does not stop the rest.

    Parameters that are ``None`` keep the notebook's own value. ``model`` is also exported as
    ``$COURSE_MODEL`` (what ``model_from_env`` reads). A notebook whose claims are not met fails
    the run, unless ``max_steps`` is given (a short run: reported, not a failure). Writes ``summary.md`` / ``summary.json``
    into ``out_dir`` and returns the :class:`RunSummary`.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    (out_dir / "metrics").mkdir(parents=True, exist_ok=True)
    parameters = {"MODEL": model, "DTYPE": dtype, "DEVICE": device, "MAX_STEPS": max_steps}
    papermill_params = {k: v for k, v in parameters.items() if v is not None}
    env: dict[str, str | None] = {"COURSE_MODEL": model} if model else {}
    summary = RunSummary(
        results=[],
        out_dir=str(out_dir),
        parameters=parameters,
        started=_dt.datetime.now().isoformat(timespec="seconds"),
    )
    bar = tqdm(
        list(notebooks),
        desc="notebooks",
        unit="nb",
        file=sys.stderr,
        disable=None if progress else True,
        dynamic_ncols=True,
    )
    for nb in bar:
        nb = Path(nb)
        bar.set_postfix_str(nb.stem)
        result = execute_notebook(
            nb,
            out_dir / nb.name,
            papermill_params,
            env=env,
            cell_timeout=cell_timeout,
            metrics_path=out_dir / "metrics" / f"{nb.stem}.json",
            short_run=max_steps is not None,
        )
        summary.results.append(result)
        if result.status != STATUS_OK:
            bar.write(f"{'FAILED' if not result.ok else 'NOTE'} {nb.stem}: {result.detail()}", file=sys.stderr)
        summary.write(out_dir)  # after each notebook, so an interrupted run still has a summary
    bar.close()
    return summary
