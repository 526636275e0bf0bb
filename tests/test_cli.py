"""`course-utils` / `python -m course_utils`: bad input is refused before anything runs; plan works.

The runner's real executions are in tests/test_runner.py; the doctor in tests/test_doctor.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from course_utils.cli import main


@pytest.fixture
def nb_folder(tmp_path: Path) -> Path:
    for name in ("01_lora_training", "02_adapters"):
        (tmp_path / f"{name}.ipynb").write_text("{}")  # never executed: every case fails before
    return tmp_path


def test_python_dash_m_prints_help() -> None:
    out = subprocess.run([sys.executable, "-m", "course_utils", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert all(cmd in out.stdout for cmd in ("run", "doctor", "plan"))


def test_no_subcommand_is_a_usage_error(capsys) -> None:
    assert main([]) == 2
    assert "usage: course-utils" in capsys.readouterr().out


def test_unknown_notebook_lists_the_available_ones(nb_folder: Path, capsys) -> None:
    assert main(["run", "07", "--notebooks-dir", str(nb_folder)]) == 2
    err = capsys.readouterr().err
    assert "Unknown notebook '07'" in err and "Available: 01_lora_training, 02_adapters" in err


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("not a model", "Unknown model 'not a model'"),  # neither a short name, a folder nor a hub id
        ("nobody-xyz/no-such-model-123", "HF_HUB_OFFLINE"),  # a hub id that is not in the cache, offline
    ],
)
def test_unknown_model_is_refused_before_running(
    nb_folder: Path, model: str, expected: str, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    runs = nb_folder / "runs"
    assert main(["run", "--model", model, "--notebooks-dir", str(nb_folder), "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "What to do" in err or "Use a short name" in err
    assert len(err.strip().splitlines()) == 1, "one line, saying what to do"
    assert not runs.exists(), "nothing may run (or be created) for a bad model"


def test_plan_single_recipe(capsys) -> None:
    assert (
        main(
            [
                "plan",
                "smollm2-1.7b",
                "--method",
                "lora",
                "--r",
                "16",
                "--batch-size",
                "8",
                "--seq-len",
                "512",
                "--gc",
                "--gpu",
                "16",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("MemoryEstimate(smollm2-1.7b, lora r16 all-linear b8x512 gc)")
    assert "fits a 16 GiB GPU: yes" in out
    # time beside memory (issue 23): every default GPU, marked as a prediction with its measured error
    assert "(times: predicted; ±" in out and "GPU-hours" in out
    assert all(f"\n{gpu} " in out for gpu in ("T4", "L4", "A100-80GB", "H100"))


def test_plan_time_on_named_gpus_and_the_cheapest_setup(capsys) -> None:
    argv = ["plan", "smollm2-135m", "--batch-size", "4", "--on", "T4", "H100", "--examples", "1000", "--within", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "1,000 examples x 1 epoch" in out and "fewest GPU-hours that fit and finish within 1 h: 1 x H100" in out
    assert main([*argv[:-2], "--json"]) == 0
    time = json.loads(capsys.readouterr().out)["time"]
    assert [row["gpu"] for row in time["rows"]] == ["T4", "H100"] and time["label"].startswith("predicted; ±")


def test_plan_compare_json_and_table(capsys) -> None:
    assert main(["plan", "smollm2-135m", "--compare", "--json", "--gpu-sizes", "8", "80"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert [row["recipe"].split()[0] for row in table["rows"]] == ["full", "lora", "qlora"]
    assert table["gpus_GiB"] == [8, 80] and all(row["fits"]["80"] for row in table["rows"])
    assert main(["plan", "smollm2-135m", "--compare", "--target-modules", "q_proj,v_proj"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Fit table for smollm2-135m") and "lora r16 q_proj+v_proj" in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["plan", "no-such-config"], "Use a shipped name (llama-3.1-8b, llama-3.2-1b"),
        (["plan", "smollm2-135m", "--r", "0"], "Recipe.r must be a positive integer"),
        (["plan", "smollm2-135m", "--on", "V100"], "Unknown GPU 'V100'"),
    ],
)
def test_plan_bad_input(argv: list[str], expected: str, capsys) -> None:
    assert main(argv) == 2
    assert expected in capsys.readouterr().err
