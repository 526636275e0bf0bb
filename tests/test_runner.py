"""The headless runner on throwaway notebooks (the course notebooks run under nbval already).

Each kernel start costs a few seconds, so the cases share runs: one `run` of two notebooks
(one fails) and one `run --inplace`.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat
import pytest

from course_utils import runner
from course_utils.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _write_nb(path: Path, *sources: str, tags: dict[int, list[str]] | None = None, **metadata) -> Path:
    cells = [
        nbformat.v4.new_code_cell(src, metadata={"tags": (tags or {}).get(i, [])}) for i, src in enumerate(sources)
    ]
    cells.insert(1, nbformat.v4.new_markdown_cell("Some text between cells."))
    nb = nbformat.v4.new_notebook(cells=cells, metadata=metadata)
    nbformat.write(nb, str(path))
    return path


PARAMETERS = 'import os\nMODEL = "course-tiny"\nDTYPE = "auto"\nDEVICE = "auto"\nMAX_STEPS = 100\nSEED = 0'


@pytest.fixture(scope="module")
def two_notebooks(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("nbs")
    _write_nb(
        folder / "01_ok.ipynb",
        PARAMETERS,
        "from course_utils.notebook import record_metrics\n"
        "record_metrics(accuracy_before=0.5, accuracy_after=0.75, steps=MAX_STEPS)\n"
        'print(MODEL, DTYPE, MAX_STEPS, os.environ.get("COURSE_MODEL"), os.environ["PYTHONHASHSEED"])',
        tags={0: ["parameters"]},
    )
    _write_nb(
        folder / "02_fails.ipynb",
        PARAMETERS,
        "x = MAX_STEPS * 2\nprint('claimed before the crash: NO')",
        "# train for a while\nraise ValueError(f'broken on purpose after {x} steps')",
        "print('never')",
        tags={0: ["parameters"]},
    )
    _write_nb(folder / "03_claims.ipynb", PARAMETERS, CLAIMS, tags={0: ["parameters"]})
    return folder


# A lesson's claims as `expect` prints them: one never holds, one holds only with enough steps.
CLAIMS = (
    "from course_utils.notebook import expect\n"
    'print("x: NO")\n'
    'expect("loss went down", True)\n'
    'expect("accuracy >= 80%", MAX_STEPS >= 100, hint="MAX_STEPS = 300")'
)


@pytest.fixture(scope="module")
def run_result(two_notebooks: Path, tmp_path_factory) -> tuple[int, Path, str]:
    model_dir = tmp_path_factory.mktemp("model")
    (model_dir / "config.json").write_text("{}")  # a "saved model" folder: passes the pre-run check
    runs = two_notebooks / "runs"
    code = main(
        [
            "run",
            "--notebooks-dir",
            str(two_notebooks),
            "--runs-dir",
            str(runs),
            "--max-steps",
            "3",
            "--model",
            str(model_dir),
            "--no-progress",
        ]
    )
    (out_dir,) = list(runs.iterdir())
    return code, out_dir, str(model_dir)


def test_run_isolates_failures_and_summarizes(run_result) -> None:
    code, out_dir, model_dir = run_result
    assert code == 1, "a failed notebook must make the exit code non-zero"
    summary = json.loads((out_dir / "summary.json").read_text())
    ok, failed, _ = summary["results"]
    assert (ok["notebook"], ok["status"]) == ("01_ok", "ok")
    assert (failed["notebook"], failed["status"]) == ("02_fails", "failed")
    # the failing cell: its index in the ORIGINAL notebook (markdown cell counted, injected cell not),
    # the first line of its source, and the error
    assert failed["error"]["cell_index"] == 3
    assert failed["error"]["source_first_line"] == "# train for a while"
    assert failed["error"]["ename"] == "ValueError"
    assert "broken on purpose after 6 steps" in failed["error"]["evalue"]  # MAX_STEPS=3 reached the notebook
    # the other notebook ran, with the parameters and $COURSE_MODEL, and its metrics were collected
    assert ok["metrics"]["accuracy_after"] == 0.75 and ok["metrics"]["steps"] == 3
    assert ok["peak_memory_MiB"] > 0 and ok["seconds"] > 0
    executed = nbformat.read(str(out_dir / "01_ok.ipynb"), as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert printed.split() == [model_dir, "auto", "3", model_dir, "0"]
    assert (out_dir / "02_fails.ipynb").exists()
    md = (out_dir / "summary.md").read_text()
    assert "| 01_ok | ok |" in md and "accuracy_before=0.5, accuracy_after=0.75" in md
    assert "failed at cell 3 `# train for a while`: ValueError: broken on purpose" in md
    assert summary["parameters"]["MAX_STEPS"] == 3 and summary["ok"] is False
    # a crash stays a crash, even with a failed claim printed before it
    assert failed["failed_claims"] == [{"cell_index": 2, "statement": "claimed before the crash", "hint": None}]


def test_short_run_reports_unmet_claims_without_failing(run_result) -> None:
    _, out_dir, _ = run_result
    claims = json.loads((out_dir / "summary.json").read_text())["results"][2]
    assert claims["status"] == "ran, claims not met (short run)"
    assert [(c["statement"], c["hint"]) for c in claims["failed_claims"]] == [
        ("x", None),
        ("accuracy >= 80%", "MAX_STEPS = 300"),
    ]
    md = (out_dir / "summary.md").read_text()
    assert "| 03_claims | ran, claims not met (short run) |" in md
    assert "ran, 2 claims not met (short run): cell 2 `x`; cell 2 `accuracy >= 80%` (try: MAX_STEPS = 300)" in md
    assert "1 ok, 1 failed (1 crashed, 0 with claims not met), 1 ran with claims not met (short run)." in md


def test_full_run_with_unmet_claims_fails(two_notebooks: Path, tmp_path: Path, capsys) -> None:
    code = main(["run", "03", "--notebooks-dir", str(two_notebooks), "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 1, "a claim that printed NO on a full run must fail the exit code"
    (row,) = json.loads((tmp_path / "run" / "summary.json").read_text())["results"]
    assert row["status"] == "claims not met" and row["error"] is None
    assert [c["statement"] for c in row["failed_claims"]] == ["x"]  # MAX_STEPS=100: the other one holds
    assert "1 claims not met: cell 2 `x`" in (tmp_path / "run" / "summary.md").read_text()
    assert "03_claims (claims not met)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "status, ok, shown",
    [
        ("ok", True, "accuracy_after=0.9"),
        ("claims not met", False, "1 claims not met: cell 4 `loss went down` (try: more steps)"),
        ("ran, claims not met (short run)", True, "ran, 1 claims not met (short run): cell 4 `loss went down`"),
    ],
)
def test_summary_shows_claims_in_markdown_json_and_html(status: str, ok: bool, shown: str) -> None:
    claims = [] if status == "ok" else [runner.FailedClaim(4, "loss went down", "more steps")]
    result = runner.NotebookResult("01_x", status, 1.0, metrics={"accuracy_after": 0.9}, failed_claims=claims)
    summary = runner.RunSummary([result], out_dir=None, parameters={})
    assert summary.ok is ok and result.ok is ok and not result.crashed
    assert shown in summary.to_markdown() and shown in summary._repr_html_()
    assert (
        summary.to_dict()["results"][0]["failed_claims"]
        == [{"cell_index": 4, "statement": "loss went down", "hint": "more steps"}][: len(claims)]
    )


def test_failed_claims_reads_expect_lines_only() -> None:
    out = "a: yes\nb: NO\n  try: lr=1e-3\nnot a claim: NOT\n: NO\nc: NO\n"
    cells = [
        nbformat.v4.new_code_cell("", outputs=[nbformat.v4.new_output("stream", name="stdout", text=out)]),
        nbformat.v4.new_code_cell("", outputs=[nbformat.v4.new_output("stream", name="stderr", text="d: NO\n")]),
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("x: NO"), *cells])
    assert [(c.cell_index, c.statement, c.hint) for c in runner.failed_claims(nb)] == [
        (1, "b", "lr=1e-3"),
        (1, "c", None),
    ]


def test_run_never_overwrites_a_previous_run(run_result, two_notebooks: Path, capsys) -> None:
    _, out_dir, _ = run_result
    before = (out_dir / "summary.json").read_text()
    code = main(["run", "01", "--notebooks-dir", str(two_notebooks), "--out", str(out_dir)])
    assert code == 2
    err = capsys.readouterr().err
    assert "already holds a previous run" in err and "--overwrite" in err
    assert (out_dir / "summary.json").read_text() == before
    # without --out, every run gets a fresh folder, even within the same second
    a, b = runner.new_run_dir(base=two_notebooks / "more"), runner.new_run_dir(base=two_notebooks / "more")
    assert a != b and a.is_dir() and b.is_dir()


def test_inplace_regenerates_outputs_and_strips_metadata(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COURSE_MODEL", "something-else")  # --inplace must use the default model
    monkeypatch.setenv("COURSE_DEVICE", "cuda")  # and the CPU, whatever this shell asks for
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    path = _write_nb(
        tmp_path / "07_new.ipynb",
        PARAMETERS,
        'import sys\nprint("model:", os.environ.get("COURSE_MODEL", MODEL), sorted({"b", "a"}))\n'
        'print("noise", file=sys.stderr)',
        "import torch\nfrom course_utils.loading import resolve_device\n"
        'print(repr(os.environ.get("CUDA_VISIBLE_DEVICES")), torch.cuda.is_available(), resolve_device("auto"))',
        tags={0: ["parameters"]},
        widgets={"application/vnd.jupyter.widget-state+json": {"state": {"x": 1}}},
    )
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[2].metadata["execution"] = {"iopub.execute_input": "2025-01-01T00:00:00Z"}
    nbformat.write(nb, str(path))

    assert main(["run", "--inplace", str(path)]) == 0
    nb = nbformat.read(str(path), as_version=4)
    assert "widgets" not in nb.metadata and "papermill" not in nb.metadata
    assert all("execution" not in c.metadata for c in nb.cells)
    assert [c.metadata.get("tags") for c in nb.cells if c.cell_type == "code"] == [["parameters"], [], []]
    out = nb.cells[2].outputs
    assert out[0]["text"] == "model: course-tiny ['a', 'b']\n"
    assert nb.cells[2].execution_count == 2
    # committed outputs are CPU outputs on any machine: CUDA hidden, "auto" means the CPU (MPS too)
    assert nb.cells[3].outputs[0]["text"] == "'' False cpu\n"


def test_inplace_does_not_commit_a_failed_claim(tmp_path: Path, capsys) -> None:
    path = _write_nb(tmp_path / "08_claims.ipynb", PARAMETERS, CLAIMS, tags={0: ["parameters"]})
    before = path.read_text()
    assert main(["run", "--inplace", str(path)]) == 1
    assert path.read_text() == before, "outputs with a claim that printed NO must not be written"
    assert "1 claims not met: cell 2 `x`" in capsys.readouterr().out


def test_inplace_refuses_parameter_overrides(tmp_path: Path, capsys) -> None:
    path = _write_nb(tmp_path / "01_x.ipynb", "x = 1")
    assert main(["run", "--inplace", "--max-steps", "5", str(path)]) == 2
    assert "--max-steps" in capsys.readouterr().err


def test_select_notebooks_by_number_name_and_path(tmp_path: Path) -> None:
    nbs = [tmp_path / "01_lora_training.ipynb", tmp_path / "02_adapters.ipynb"]
    for p in nbs:
        p.write_text("{}")
    assert runner.select_notebooks([], folder=tmp_path) == nbs
    assert runner.select_notebooks(["2", "01_lora_training", "adapters"], folder=tmp_path) == [nbs[1], nbs[0]]
    assert runner.select_notebooks([str(nbs[1])], folder=tmp_path) == [nbs[1]]
    with pytest.raises(runner.UnknownNotebookError, match="Available: 01_lora_training, 02_adapters"):
        runner.select_notebooks(["03"], folder=tmp_path)


def test_kernel_env_matches_root_conftest() -> None:
    """The committed outputs (--inplace) and the nbval re-run must see the same environment."""
    tree = ast.parse((ROOT / "conftest.py").read_text())
    (value,) = [
        n.value for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "KERNEL_ENV"
    ]
    assert ast.literal_eval(value) == {**runner.KERNEL_ENV, **runner.OFFLINE_ENV}
