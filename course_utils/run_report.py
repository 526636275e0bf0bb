"""What a run of the course's notebooks reports: each notebook's status, failed cell, failed claims,
seconds, peak memory and key metrics, and the summary table (`summary.md`, `summary.json`, HTML).

`course_utils.runner` executes the notebooks; this module only describes and formats the result.

>>> FailedClaim(3, "accuracy rises by >= 50 points", "MAX_STEPS = 300")
FailedClaim(cell_index=3, statement='accuracy rises by >= 50 points', hint='MAX_STEPS = 300')
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "STATUS_CLAIMS",
    "STATUS_CRASHED",
    "STATUS_OK",
    "STATUS_SHORT",
    "CellError",
    "FailedClaim",
    "NotebookResult",
    "RunSummary",
    "failed_claims",
    "status_of",
]

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


def status_of(error: CellError | None, claims: list[FailedClaim], short_run: bool) -> str:
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
