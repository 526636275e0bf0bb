"""Build the course website from the committed notebooks, the README, docs/ and the datasheet.

    python website/build.py            # -> build/site/html/index.html (incremental: a rebuild takes seconds)
    python website/build.py --fresh    # from scratch

Nothing is executed: the pages show the outputs committed in ``notebooks/*.ipynb``. The sources are
hard-linked (or copied) into ``build/site/src`` with the repository's own layout,
so a link such as ``../docs/claims.md`` in a notebook works on the site as it does on GitHub; the
``course_utils`` reference gets one generated page per module. The configuration is ``website/conf.py``
and needs the ``site`` extra (``pip install -e ".[site]"``).
"""

from __future__ import annotations

import argparse
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


def build(out: Path = DEFAULT_OUT, fresh: bool = False, quiet: bool = True) -> Path:
    """Build the site into ``out/html`` and return that folder; raises RuntimeError when Sphinx fails.

    Warnings are errors: a broken cross-reference or a missing file fails the build.
    """
    try:
        from sphinx.cmd.build import build_main
    except ImportError as error:
        raise RuntimeError('The site needs Sphinx and its extensions: pip install -e ".[site]"') from error
    out = Path(out)
    if fresh and out.exists():
        shutil.rmtree(out)
    html = out / "html"
    for gone in stage(out / "src"):  # Sphinx keeps the pages of deleted sources: a renamed notebook's old page
        for page in (html / gone).with_suffix(".html"), html / "_sources" / gone:
            page.unlink(missing_ok=True)
    args = ["-b", "html", "-c", str(WEBSITE), "-d", str(out / "doctrees"), "-W", "--keep-going"]
    args += ["-q"] if quiet else []
    status = build_main([*args, str(out / "src"), str(html)])
    if status:
        raise RuntimeError(
            f"sphinx-build failed (exit status {status}); its warnings are printed above. Paths under "
            f"{out / 'src'} are the repository's files (linked there): fix them in the repository."
        )
    return html


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="build folder (default: build/site)")
    parser.add_argument("--fresh", action="store_true", help="delete the build folder first")
    parser.add_argument("--verbose", action="store_true", help="Sphinx's progress, not only its warnings")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        html = build(args.out, fresh=args.fresh, quiet=not args.verbose)
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 1
    pages = sum(1 for page in html.rglob("*.html") if "_static" not in page.parts)  # not the theme's fragments
    print(f"site: {pages} pages in {os.path.relpath(html)} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
