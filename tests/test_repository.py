"""course_utils.repository and `course-utils set-repository`: one command moves every copy of the URL."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from course_utils.cli import main
from course_utils.repository import current_repository, normalize_repository_url, pages_url, set_repository

ROOT = Path(__file__).resolve().parents[1]
NEW = "https://github.com/new-owner/new-course"


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A copy of the files set-repository edits: pyproject.toml, README.md, docs/ and notebooks/ (sources only)."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    (tmp_path / "notebooks").mkdir()
    for path in (ROOT / "notebooks").glob("[0-9][0-9]_*"):
        if path.suffix in (".ipynb", ".py"):
            shutil.copy(path, tmp_path / "notebooks" / path.name)
    return tmp_path


def _texts(root: Path) -> dict[str, str]:
    paths = [root / "pyproject.toml", root / "README.md", *root.glob("docs/**/*.md"), *root.glob("notebooks/*")]
    return {p.relative_to(root).as_posix(): p.read_text() for p in paths if p.is_file()}


def test_every_copy_of_the_url_moves_and_a_second_run_changes_nothing(clone: Path):
    old = current_repository(clone)
    old_repo, new_repo = old.split("github.com/")[1], NEW.split("github.com/")[1]
    before = _texts(clone)
    urls = {k: t.count(old) for k, t in before.items()}
    badges = {k: t.count(f"colab.research.google.com/github/{old_repo}/") for k, t in before.items()}
    sites = {k: t.count(pages_url(old)) for k, t in before.items()}
    assert urls["pyproject.toml"] == 1 and sum(badges.values()) >= 2 * 7 + 7  # .ipynb + .py per notebook, README
    assert sites["README.md"] == 1  # the website's address

    change = set_repository(NEW, clone)
    after = _texts(clone)
    assert current_repository(clone) == NEW
    for name, text in after.items():
        assert old not in text and f"github/{old_repo}/" not in text, name
        assert text.count(NEW) == urls[name], name
        assert text.count(f"colab.research.google.com/github/{new_repo}/blob/main/") == badges[name], name
        assert pages_url(old) not in text and text.count(pages_url(NEW)) == sites[name], name
    assert change.files == {k: urls[k] + badges[k] + sites[k] for k in urls if urls[k] + badges[k] + sites[k]}
    for nb in (clone / "notebooks").glob("*.ipynb"):  # the set-up cell and the badge, in both twins
        for path in (nb, nb.with_suffix(".py")):
            text = after[path.relative_to(clone).as_posix()]
            assert f'REPOSITORY = \\"{NEW}\\"' in text or f'REPOSITORY = "{NEW}"' in text, path.name
            assert f"colab.research.google.com/github/{new_repo}/blob/main/notebooks/{nb.name}" in text, path.name
    # nothing else changed: undoing the two replacements gives the original files back
    for name, text in after.items():
        undone = text.replace(NEW, old).replace(f"github/{new_repo}/", f"github/{old_repo}/")
        undone = undone.replace(pages_url(NEW), pages_url(old))
        assert undone == before[name], name

    again = set_repository(NEW + ".git/", clone)
    assert again.files == {} and _texts(clone) == after
    assert "Nothing to change" in repr(again)


def test_dry_run_writes_nothing(clone: Path, capsys):
    before = _texts(clone)
    assert main(["set-repository", NEW, "--root", str(clone), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would replace" in out and "pyproject.toml: 1" in out and "notebooks/01_lora_training.ipynb: 2" in out
    assert _texts(clone) == before


def test_the_cli_rewrites_and_refuses_a_bad_url(clone: Path, capsys):
    assert main(["set-repository", "https://gitlab.com/me/course", "--root", str(clone)]) == 2
    assert "https://github.com/<owner>/<name>" in capsys.readouterr().err
    assert main(["set-repository", NEW, "--root", str(clone)]) == 0
    assert "replaced" in capsys.readouterr().out and current_repository(clone) == NEW


def test_a_longer_name_sharing_the_prefix_is_left_alone(tmp_path: Path):
    (tmp_path / "pyproject.toml").write_text('[project.urls]\nRepository = "https://github.com/a/course"\n')
    (tmp_path / "README.md").write_text(
        "https://github.com/a/course-2 and https://github.com/a/course.x stay; "
        "git+https://github.com/a/course.git and https://github.com/a/course. move\n"
    )
    change = set_repository("https://github.com/b/c", tmp_path)
    assert (tmp_path / "README.md").read_text() == (
        "https://github.com/a/course-2 and https://github.com/a/course.x stay; "
        "git+https://github.com/b/c.git and https://github.com/b/c. move\n"
    )
    assert change.files == {"pyproject.toml": 1, "README.md": 2}


@pytest.mark.parametrize(
    "url",
    [
        "http://github.com/a/b",
        "https://github.com/a",
        "https://github.com/a/b/tree/main",
        "github.com/a/b",
        "https://github.com/a/..",
    ],
)
def test_bad_urls_are_refused(url: str):
    with pytest.raises(ValueError, match="https://github.com/<owner>/<name>"):
        normalize_repository_url(url)


def test_a_pyproject_without_repository_is_a_clear_error(tmp_path: Path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    with pytest.raises(ValueError, match="no `Repository"):
        set_repository(NEW, tmp_path)
