"""The environment doctor: ranges in sync, checks that never hang, one full run."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from course_utils import doctor
from course_utils.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is Python >= 3.11")
def test_ranges_are_read_from_the_project() -> None:
    """The doctor holds no copy of the requirements: it reads the installed metadata (or pyproject.toml)."""
    import tomllib
    from packaging.requirements import Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    reqs, source = doctor.supported_ranges()
    assert sorted(str(Requirement(r)) for r in reqs) == sorted(str(Requirement(d)) for d in deps), source
    assert not hasattr(doctor, "FALLBACK_REQUIREMENTS")


def test_diagnose_versions_flags_missing_and_out_of_range() -> None:
    checks = {
        c.name: c
        for c in doctor.diagnose_versions(
            [
                "pytest>=1",
                "pytest-but-not-installed-xyz>=1",
                "packaging<1",
                "nbval>=0.1; sys_platform == 'nonexistent'",
            ]
        )
    }
    assert checks["pytest"].status == doctor.OK
    assert checks["pytest-but-not-installed-xyz"].status == doctor.FAIL
    assert checks["pytest-but-not-installed-xyz"].advice == 'pip install "pytest-but-not-installed-xyz>=1"'
    assert checks["packaging"].status == doctor.FAIL and "supported <1" in checks["packaging"].found
    assert checks["nbval"].status in {doctor.INFO, doctor.OK}  # the marker line, then the dev-tools line


def test_hub_check_never_hangs(monkeypatch) -> None:
    import urllib.request

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: time.sleep(30))  # a network that never answers
    start = time.perf_counter()
    check = doctor.diagnose_hub({}, timeout=0.5)
    assert time.perf_counter() - start < 5  # bounded by the timeout (not asserting an exact time)
    assert check.status == doctor.WARN and "no answer in 0.5 s" in check.found
    assert "HF_HUB_OFFLINE=1" in check.advice
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert doctor.diagnose_hub({}).status == doctor.INFO


def test_doctor_json_full_run(capsys) -> None:
    code = main(["doctor", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == (0 if report["ok"] else 1)
    names = [c["name"] for c in report["checks"]]
    for expected in ("python", "accelerator", "torch", "peft", "bitsandbytes", "disk", "hub"):
        assert expected in names
    assert report["facts"]["device"] in {"cpu", "cuda", "mps"}
    bnb = [c for c in report["checks"] if c["name"] == "bitsandbytes" and "round trip" in c["found"]]
    if sys.platform != "darwin":
        assert bnb and bnb[0]["status"] == doctor.OK, bnb  # bitsandbytes >= 0.50 runs 4-bit layers on a CPU
        # AVX-512-BF16 CPUs: the probe sees bitsandbytes' eval-time repack and checks the course's fix
        from course_utils.quantization import cpu_repack_hazard

        repack = [c for c in report["checks"] if c["name"] == "bitsandbytes CPU repack"]
        assert bool(repack) == cpu_repack_hazard()
        if report["facts"].get("bnb_cpu_repack", {}).get("repacks"):
            assert repack[0]["status"] == doctor.INFO and "course_utils prevents and undoes it" in repack[0]["found"]
            assert report["facts"]["bnb_cpu_repack"]["undo_rel_error"] < 0.2  # NF4's own error, not garbage (1.4)
    assert any(c["name"].startswith("course") for c in report["checks"])


@pytest.mark.parametrize(
    ("probe", "status", "words"),
    [
        ({"avx512bf16": True, "repacks": True, "course_prevents": True}, doctor.INFO, "prevents and undoes it"),
        ({"avx512bf16": True, "repacks": True, "course_prevents": False}, doctor.FAIL, "could NOT undo"),
        ({"avx512bf16": True, "repacks": False}, doctor.OK, "keeps 4-bit weights portable"),
        ({"avx512bf16": True, "repack_error": "RuntimeError: boom"}, doctor.WARN, "probe failed"),
    ],
)
def test_cpu_repack_line(probe, status, words) -> None:
    check = doctor.diagnose_cpu_repack(probe)
    assert check.status == status and words in check.found
    assert doctor.diagnose_cpu_repack({"avx512bf16": False}) is None  # other CPUs: no line at all
