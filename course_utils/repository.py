"""Point the course at another repository: a fork, or the course's new home.

The repository's address is written in ``pyproject.toml`` (``[project.urls] Repository``) and,
because learners open the notebooks from it, copied into the README's and notebooks' Colab badges
(``colab.research.google.com/github/<owner>/<name>/blob/main/...``) and into every notebook's set-up
cell (``pip install git+<url>``). :func:`set_repository` rewrites all of them at once, in
``pyproject.toml``, the top-level ``*.md`` files, ``docs/**/*.md`` and ``notebooks/*.ipynb`` with
their jupytext twins ``notebooks/*.py`` (both edited the same way, so they stay in sync).
``course-utils set-repository URL [--dry-run]`` runs it from the command line.

>>> normalize_repository_url("https://github.com/me/my-peft-course.git/")
'https://github.com/me/my-peft-course'
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["RepositoryChange", "current_repository", "normalize_repository_url", "pages_url", "set_repository"]

_URL = re.compile(r"^https://github\.com/([A-Za-z0-9](?:[A-Za-z0-9-]{0,38}))/([A-Za-z0-9._-]{1,100}?)(?:\.git)?/?$")
_PYPROJECT_REPOSITORY = re.compile(r'^(Repository\s*=\s*")([^"]+)(")', re.MULTILINE)


def normalize_repository_url(url: str) -> str:
    """``https://github.com/<owner>/<name>``, from what a learner may paste (a trailing ``/`` or ``.git``).

    Raises ValueError, with an example, for anything else (another host, ``http://``, a deeper path).

    >>> normalize_repository_url("https://github.com/me/course")
    'https://github.com/me/course'
    """
    text = str(url).strip()
    match = _URL.match(text)
    if not match or match.group(2) in {".", ".."}:
        raise ValueError(
            f"Not a GitHub repository URL: {url!r}. Use the form https://github.com/<owner>/<name>, "
            "e.g. https://github.com/your-name/peft-course."
        )
    return f"https://github.com/{match.group(1)}/{match.group(2)}"


def pages_url(repository: str) -> str:
    """The address GitHub Pages gives the repository's website (``.github/workflows/pages.yml`` publishes it).

    >>> pages_url("https://github.com/peft-course/peft-course")
    'https://peft-course.github.io/peft-course/'
    """
    owner, name = normalize_repository_url(repository).removeprefix("https://github.com/").split("/")
    return f"https://{owner.lower()}.github.io/{name}/"


def current_repository(root: str | Path = ".") -> str:
    """The ``[project.urls] Repository`` of ``root/pyproject.toml``.

    >>> from pathlib import Path
    >>> current_repository(Path(__file__).resolve().parents[1]).startswith("https://github.com/")
    True
    """
    path = Path(root) / "pyproject.toml"
    if not path.is_file():
        raise FileNotFoundError(f"No pyproject.toml in {Path(root).resolve()}: run this from the course's clone.")
    text = path.read_text(encoding="utf-8")
    section = re.search(r"^\[project\.urls\]\s*$(.*?)(?=^\[|\Z)", text, flags=re.MULTILINE | re.DOTALL)
    match = _PYPROJECT_REPOSITORY.search(section.group(1)) if section else None
    if not match:
        raise ValueError(f'{path} has no `Repository = "..."` under [project.urls]; add one first.')
    return match.group(2).rstrip("/")


@dataclass
class RepositoryChange:
    """What :func:`set_repository` changed (or would change, with ``dry_run``): replacements per file."""

    old: str
    new: str
    files: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False

    @property
    def total(self) -> int:
        return sum(self.files.values())

    def __repr__(self) -> str:
        if not self.files:
            return f"Nothing to change: the course already points to {self.new}."
        verb = "would replace" if self.dry_run else "replaced"
        rows = [f"  {path}: {n}" for path, n in sorted(self.files.items())]
        return "\n".join(
            [f"{self.old} -> {self.new}: {verb} {self.total} occurrence(s) in {len(self.files)} file(s)", *rows]
        )


def _patterns(old: str, new: str) -> list[tuple[re.Pattern[str], str]]:
    old_repo, new_repo = old.split("github.com/", 1)[1], new.split("github.com/", 1)[1]
    end = r"(?![\w-])(?!\.(?!git\b)\w)"  # not a longer name (old/name-2, old/name.x), but old/name.git or "name."
    return [
        (re.compile(re.escape(old) + end), new),  # the URL itself, also in `pip install git+<url>`
        (re.compile(r"(colab\.research\.google\.com/github/)" + re.escape(old_repo) + r"(?=/)"), r"\g<1>" + new_repo),
        (re.compile(re.escape(pages_url(old))), pages_url(new)),  # the website's address (README)
    ]


def _files(root: Path) -> list[Path]:
    found = [root / "pyproject.toml", *sorted(root.glob("*.md")), *sorted((root / "docs").glob("**/*.md"))]
    notebooks = root / "notebooks"
    found += sorted(notebooks.glob("*.ipynb")) + sorted(notebooks.glob("*.py"))
    return [p for p in found if p.is_file()]


def set_repository(url: str, root: str | Path = ".", *, dry_run: bool = False) -> RepositoryChange:
    """Replace the course's repository URL everywhere it is written, by ``url``.

    The old URL is pyproject's ``[project.urls] Repository``. Replaced: the URL itself (also inside
    ``git+<url>`` install lines), the ``<owner>/<name>`` of Colab badge links and the website's
    GitHub Pages address (:func:`pages_url`), in pyproject.toml,
    ``*.md``, ``docs/**/*.md``, ``notebooks/*.ipynb`` and ``notebooks/*.py``. Files are edited as
    text, so nothing else in them changes. Running it again with the same URL changes nothing.

    Args:
        url: ``https://github.com/<owner>/<name>`` (a trailing ``/`` or ``.git`` is dropped).
        root: the clone's top folder.
        dry_run: report what would change, write nothing.

    >>> import shutil, tempfile
    >>> from pathlib import Path
    >>> clone = Path(tempfile.mkdtemp())
    >>> _ = shutil.copy(Path(__file__).resolve().parents[1] / "pyproject.toml", clone)
    >>> set_repository("https://github.com/me/my-course", clone).files
    {'pyproject.toml': 1}
    >>> current_repository(clone)
    'https://github.com/me/my-course'
    """
    root = Path(root)
    new = normalize_repository_url(url)
    old = normalize_repository_url(current_repository(root))
    change = RepositoryChange(old=old, new=new, dry_run=dry_run)
    if old == new:
        return change
    patterns = _patterns(old, new)
    for path in _files(root):
        text = path.read_bytes().decode("utf-8")  # bytes: line endings stay as they are
        count = 0
        for pattern, replacement in patterns:
            text, n = pattern.subn(replacement, text)
            count += n
        if count:
            change.files[path.relative_to(root).as_posix()] = count
            if not dry_run:
                path.write_bytes(text.encode("utf-8"))
    return change
