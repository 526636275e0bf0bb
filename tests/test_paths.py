"""course_utils.paths.outputs_dir: Drive on Colab, ./outputs elsewhere, never a temporary folder."""

from __future__ import annotations

import pytest

from course_utils import paths


def test_outputs_go_under_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(paths, "COLAB_DRIVE", tmp_path / "no-drive")
    out = paths.outputs_dir("shout-lora")
    assert out == tmp_path / "outputs" / "shout-lora"
    assert out.parent.is_dir() and not out.exists()  # parents made; the folder is save_pretrained's to create
    assert paths.outputs_dir("04/dpo") == tmp_path / "outputs" / "04" / "dpo" and (tmp_path / "outputs" / "04").is_dir()


def test_outputs_go_to_drive_when_it_is_mounted(tmp_path, monkeypatch):
    drive = tmp_path / "content" / "drive" / "MyDrive"
    drive.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(paths, "COLAB_DRIVE", drive)
    out = paths.outputs_dir("shout-lora")
    assert out == drive / "peft-course" / "outputs" / "shout-lora" and out.parent.is_dir()
    assert not (tmp_path / "outputs").exists()


def test_the_real_drive_path_is_colabs():
    assert paths.COLAB_DRIVE.as_posix() == "/content/drive/MyDrive"


@pytest.mark.parametrize("bad", ["", "  ", "/tmp/x", "../escape", "a/../../b", "C:\\models\\x"])
def test_names_must_be_relative(bad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="relative name"):
        paths.outputs_dir(bad)
