"""Build the course website from the committed notebooks, the README, docs/ and the datasheet.

    python website/build.py            # -> build/site/html/index.html (incremental; nothing changed: instant)
    python website/build.py --fresh    # from scratch

Nothing is executed: the pages show the outputs committed in ``notebooks/*.ipynb``. The sources are
hard-linked (or copied) into ``build/site/src`` with the repository's own layout,
so a link such as ``../docs/claims.md`` in a notebook works on the site as it does on GitHub; the
``course_utils`` reference gets one generated page per module. The configuration is ``website/conf.py``
and needs the ``site`` extra (``pip install -e ".[site]"``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pkgutil
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEBSITE = ROOT / "website"
DEFAULT_OUT = ROOT / "build" / "site"

# What the site is made of, as globs relative to the repository root (notebooks in course order by name).
SOURCES = ("README.md", "LICENSE", "notebooks/*.ipynb", "docs/*.md", "data/datasets/README.md")
# The website's own pages and static files, placed at the root of the source tree.
OWN = ("*.md", "_static/*")


def _place(source: Path, target: Path) -> None:
    """Make ``target`` the file ``source``: a hard link, or a copy where one cannot be made.

    Not a symlink: Sphinx resolves those, and a link such as ``../docs/claims.md`` in a notebook would then
    point outside the site's sources. A copy keeps the mtime, so an incremental build still sees what changed.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_file() and not target.is_symlink():
        if os.path.samefile(source, target):
            return
        if target.stat().st_mtime == source.stat().st_mtime and target.read_bytes() == source.read_bytes():
            return
    if target.exists() or target.is_symlink():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def course_modules() -> list[str]:
    """Every public module of ``course_utils``, sorted (a new module gets its reference page by itself).

    >>> mods = course_modules()
    >>> "course_utils.repository" in mods and "course_utils.figures.lora" in mods
    True
    """
    import course_utils

    names = ["course_utils"]
    for info in pkgutil.walk_packages(course_utils.__path__, "course_utils."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def reference_page(module: str) -> str:
    """The MyST source of one module's reference page (autodoc reads its docstrings at build time)."""
    members = "" if module == "course_utils" else "   :members:\n   :show-inheritance:\n"
    return f"# `{module}`\n\n```{{eval-rst}}\n.. automodule:: {module}\n{members}```\n"


def stage(src: Path) -> list[str]:
    """Lay out the site's sources in ``src``; returns the paths it removed, relative to ``src``.

    Files that no longer exist in the repository (a renamed notebook) are removed from ``src``.
    """
    wanted: dict[Path, Path | str] = {}
    for pattern in SOURCES:
        for path in sorted(ROOT.glob(pattern)):
            wanted[src / path.relative_to(ROOT)] = path
    for pattern in OWN:
        for path in sorted(WEBSITE.glob(pattern)):
            wanted[src / path.relative_to(WEBSITE)] = path
    for module in course_modules():
        wanted[src / "reference" / f"{module}.md"] = reference_page(module)
    removed = []
    if src.exists():
        for path in list(src.rglob("*")):
            if (path.is_file() or path.is_symlink()) and path not in wanted:
                removed.append(path.relative_to(src).as_posix())
                path.unlink()
    for target, source in wanted.items():
        if isinstance(source, Path):
            _place(source, target)
        elif not target.is_file() or target.read_text(encoding="utf-8") != source:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(source, encoding="utf-8")
    return sorted(removed)


# Everything a page is made of: the sources above, the website's own files, the package (autodoc reads its
# docstrings) and the project file. A build records their fingerprint; the next one with the same fingerprint
# has nothing to do and skips Sphinx (which takes seconds just to find out that nothing changed).
FINGERPRINTED = (*SOURCES, "pyproject.toml", "website/**/*", "course_utils/**/*.py")
STAMP = "inputs.sha256"


def inputs_fingerprint() -> str:
    """A hash of every input's path, size and modification time, and of the Sphinx packages' versions.

    >>> len(inputs_fingerprint())
    64
    """
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    digest = hashlib.sha256()
    files = {path for pattern in FINGERPRINTED for path in ROOT.glob(pattern) if path.is_file()}
    for path in sorted(p for p in files if "__pycache__" not in p.parts):
        stat = path.stat()
        digest.update(f"{path.relative_to(ROOT).as_posix()} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    for package in ("sphinx", "myst-nb", "sphinx-book-theme"):
        with contextlib.suppress(PackageNotFoundError):
            digest.update(f"{package} {version(package)}\n".encode())
    return digest.hexdigest()


def up_to_date(out: Path = DEFAULT_OUT, fingerprint: str | None = None) -> bool:
    """Whether ``out`` holds a site built from exactly the current inputs (:func:`inputs_fingerprint`, or the
    ``fingerprint`` already computed)."""
    stamp = Path(out) / STAMP
    if not ((Path(out) / "html" / "index.html").is_file() and stamp.is_file()):
        return False
    return stamp.read_text() == (fingerprint or inputs_fingerprint())


def build(out: Path = DEFAULT_OUT, fresh: bool = False, quiet: bool = True) -> Path:
    """Build the site into ``out/html`` and return that folder; raises RuntimeError when Sphinx fails.

    Warnings are errors: a broken cross-reference or a missing file fails the build. When nothing changed since
    the last build (:func:`up_to_date`), Sphinx is not started.
    """
    out = Path(out)
    fingerprint = inputs_fingerprint()  # before the build: an input edited meanwhile makes the next one rebuild
    if not fresh and up_to_date(out, fingerprint):
        return out / "html"
    try:
        from sphinx.cmd.build import build_main
    except ImportError as error:
        raise RuntimeError('The site needs Sphinx and its extensions: pip install -e ".[site]"') from error
    if fresh and out.exists():
        shutil.rmtree(out)
    html = out / "html"
    for gone in stage(out / "src"):  # Sphinx keeps the pages of deleted sources: a renamed notebook's old page
        for page in (html / gone).with_suffix(".html"), html / "_sources" / gone:
            page.unlink(missing_ok=True)
    args = ["-b", "html", "-c", str(WEBSITE), "-d", str(out / "doctrees"), "-W", "--keep-going"]
    args += ["-q"] if quiet else []
    (out / STAMP).unlink(missing_ok=True)
    status = build_main([*args, str(out / "src"), str(html)])
    if status:
        raise RuntimeError(
            f"sphinx-build failed (exit status {status}); its warnings are printed above. Paths under "
            f"{out / 'src'} are the repository's files (linked there): fix them in the repository."
        )
    (out / STAMP).write_text(fingerprint)
    return html


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="build folder (default: build/site)")
    parser.add_argument("--fresh", action="store_true", help="delete the build folder first")
    parser.add_argument("--verbose", action="store_true", help="Sphinx's progress, not only its warnings")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    unchanged = not args.fresh and up_to_date(args.out)
    try:
        html = args.out / "html" if unchanged else build(args.out, fresh=args.fresh, quiet=not args.verbose)
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 1
    pages = sum(1 for page in html.rglob("*.html") if "_static" not in page.parts)  # not the theme's fragments
    done = "up to date: nothing changed since the last build" if unchanged else "built"
    print(f"site: {pages} pages in {os.path.relpath(html)}, {done} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
