"""course_utils.platform_support.bitsandbytes_available: a yes or no, and one sentence why."""

from __future__ import annotations

import importlib
import importlib.util

import pytest

from course_utils import platform_support
from course_utils.platform_support import bitsandbytes_available


def test_macos_is_said_plainly(monkeypatch):
    monkeypatch.setattr(platform_support.platform, "system", lambda: "Darwin")
    ok, why = bitsandbytes_available()
    assert ok is False
    assert why.startswith("bitsandbytes is not installed on macOS: the course's 4-bit and 8-bit cells are skipped")


def test_missing_install_says_how_to_install(monkeypatch):
    monkeypatch.setattr(platform_support.platform, "system", lambda: "Linux")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        platform_support.importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a)
    )
    ok, why = bitsandbytes_available()
    assert ok is False and "pip install bitsandbytes" in why and "skipped" in why


def test_an_install_that_does_not_import_gives_the_error(monkeypatch):
    monkeypatch.setattr(platform_support.platform, "system", lambda: "Linux")
    monkeypatch.setattr(platform_support.importlib.util, "find_spec", lambda n, *a: object())
    real = importlib.import_module

    def broken(name, *args):
        if name == "bitsandbytes":
            raise RuntimeError("CUDA Setup failed despite GPU being available.\nmore lines")
        return real(name, *args)

    monkeypatch.setattr(platform_support.importlib, "import_module", broken)
    ok, why = bitsandbytes_available()
    assert ok is False and "RuntimeError: CUDA Setup failed despite GPU being available." in why
    assert "more lines" not in why


def test_here_it_matches_whether_bitsandbytes_imports():
    try:
        import bitsandbytes
    except Exception:
        expected = False
    else:
        expected = True
        assert bitsandbytes.__version__ in bitsandbytes_available()[1]
    ok, why = bitsandbytes_available()
    assert ok is expected and why.count(". ") == 0 and why.endswith(".")


@pytest.mark.parametrize("system", ["Linux", "Windows"])
def test_other_systems_do_not_claim_macos(monkeypatch, system):
    monkeypatch.setattr(platform_support.platform, "system", lambda: system)
    assert "macOS" not in bitsandbytes_available()[1]
