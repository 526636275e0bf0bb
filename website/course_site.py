"""Sphinx extension of the course website: notebook pages, the landing page's path, offline badges.

- Every notebook page starts with its Colab badge, a download link (the site's copy of the ``.ipynb``)
  and a link to the notebook on GitHub, all built from the repository URL in ``pyproject.toml``
  (``course_repository`` in ``conf.py``). The notebook's own badge paragraph is replaced by that bar.
- ``{course-path}`` lists the notebooks in course order (``notebooks/*.ipynb`` by name) on the landing page.
- The Colab badge is drawn from ``_static/colab-badge.svg``: a page of the site loads nothing from
  another host.
- A stderr output that only holds warnings raised inside installed libraries (deprecation notices,
  with the path of the machine that ran the notebook) is left off the page; the course's own
  messages on stderr (the prompt-learning cache warning of notebook 05) stay.
"""

from __future__ import annotations

import json
import posixpath
import re
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.transforms import Transform
from sphinx import addnodes
from sphinx.util.docutils import SphinxDirective

COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
LOCAL_BADGE = "/_static/colab-badge.svg"  # relative to the source folder: Sphinx copies it to _images/
_LIBRARY_WARNING = re.compile(r"^\S*site-packages/\S+:\d+: \w*Warning: ")


def only_library_warnings(text: str) -> bool:
    """Whether a stderr output holds nothing but warnings raised inside installed libraries.

    >>> only_library_warnings("/x/site-packages/transformers/a.py:3: FutureWarning: old\\n  warnings.warn(\\n")
    True
    >>> only_library_warnings("/x/course_utils/evaluation.py:232: PromptLearningCacheWarning: wrong\\n")
    False
    """
    heads = [line for line in text.splitlines() if line.strip() and not line[0].isspace()]
    return bool(heads) and all(_LIBRARY_WARNING.match(line) for line in heads)


def colab_url(repository: str, path: str) -> str:
    """Colab's address for a notebook of the repository's ``main`` branch.

    >>> colab_url("https://github.com/me/course", "notebooks/01_lora_training.ipynb")
    'https://colab.research.google.com/github/me/course/blob/main/notebooks/01_lora_training.ipynb'
    """
    return f"https://colab.research.google.com/github/{repository.removeprefix('https://github.com/')}/blob/main/{path}"


def notebook_title(path: Path) -> str:
    """The first heading of a notebook's first markdown cell, without the ``#``."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    for cell in cells:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return path.stem


def _links(repository: str, docname: str, path: str, *, badge: bool) -> list[nodes.Node]:
    """Colab (badge or word), download and GitHub links for the notebook ``path``, from page ``docname``."""
    download = posixpath.relpath(f"_sources/{path}", posixpath.dirname(docname) or ".")
    colab = nodes.reference("", "", refuri=colab_url(repository, path), classes=["course-colab"])
    if badge:
        colab += nodes.image(uri=LOCAL_BADGE, alt="Open In Colab", classes=["course-badge"])
    else:
        colab += nodes.Text("Colab")
    name = posixpath.basename(path)
    return [
        colab,
        nodes.Text(" · "),
        nodes.reference("", f"download {name}" if badge else "download", refuri=download, classes=["course-download"]),
        nodes.Text(" · "),
        nodes.reference("", "on GitHub", refuri=f"{repository}/blob/main/{path}", classes=["course-github"]),
    ]


class NotebookLinks(Transform):
    """Swap the hosted Colab badge image for the local one; give each notebook page its link bar."""

    default_priority = 400

    def apply(self, **kwargs: Any) -> None:
        for image in self.document.findall(nodes.image):
            if image["uri"] == COLAB_BADGE:
                image["uri"] = LOCAL_BADGE
        for block in list(self.document.findall(nodes.literal_block)):
            if "stderr" in block["classes"] and only_library_warnings(block.astext()):
                parent = block.parent
                parent.remove(block)
                if isinstance(parent, nodes.container) and not parent.children:  # the output's empty box
                    parent.parent.remove(parent)
        env = self.document.settings.env
        docname = env.docname
        if not (docname.startswith("notebooks/") and env.doc2path(docname).suffix == ".ipynb"):
            return
        repository = env.config.course_repository
        bar = nodes.paragraph("", "", classes=["course-notebook-links"])
        bar += _links(repository, docname, f"{docname}.ipynb", badge=True)
        for paragraph in self.document.findall(nodes.paragraph):
            refs = list(paragraph.findall(nodes.reference))
            if refs and all("colab.research.google.com/github/" in ref.get("refuri", "") for ref in refs):
                paragraph.replace_self(bar)  # the notebook's own badge: the bar takes its place
                return
        section = next(self.document.findall(nodes.section), None)
        if section is None:
            raise ValueError(f"{docname}: a notebook page needs a title (a `# ` heading in its first cell)")
        section.insert(1, bar)


class CoursePath(SphinxDirective):
    """``{course-path}``: the notebooks in course order, each with its title and its links."""

    def run(self) -> list[nodes.Node]:
        srcdir = Path(self.env.srcdir)
        notebooks = sorted(srcdir.glob("notebooks/*.ipynb"))
        if not notebooks:
            raise self.error(f"no notebooks/*.ipynb under {srcdir}: build with `python website/build.py`")
        items = nodes.bullet_list(classes=["course-path"])
        for path in notebooks:
            rel = path.relative_to(srcdir).as_posix()
            link = addnodes.pending_xref(
                "", refdomain="std", reftype="doc", reftarget="/" + rel.removesuffix(".ipynb"), refexplicit=True
            )
            link += nodes.inline("", notebook_title(path))
            line = nodes.paragraph("", "", link, nodes.Text(" — "))
            line += _links(self.config.course_repository, self.env.docname, rel, badge=False)
            items += nodes.list_item("", line)
            self.env.note_dependency(str(path))
        return [items]


def setup(app: Any) -> dict[str, Any]:
    app.add_config_value("course_repository", "", "env")
    app.add_transform(NotebookLinks)
    app.add_directive("course-path", CoursePath)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
