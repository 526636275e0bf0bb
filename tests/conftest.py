"""Shared fixtures: the course's default model and tokenizer, loaded once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    from course_utils.loading import resolve_model_path

    return resolve_model_path("course-tiny")


@pytest.fixture(scope="session")
def tiny_model():
    """course-tiny in float32 on CPU. Shared: treat as read-only (deep-copy to modify)."""
    from course_utils.loading import load_model

    return load_model("course-tiny", dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from course_utils.loading import load_tokenizer

    return load_tokenizer("course-tiny")
