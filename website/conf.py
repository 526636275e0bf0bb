"""Sphinx configuration of the course website (built by ``python website/build.py``, see there)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]  # course_utils for autodoc, course_site for the extension

from course_utils.repository import current_repository, pages_url  # noqa: E402

REPOSITORY = current_repository(ROOT)  # the one URL, from pyproject.toml

project = "Parameter-efficient fine-tuning, hands on"
author = "the PEFT course authors"
copyright = "the PEFT course authors, Apache-2.0"
html_title = "PEFT, hands on"
html_baseurl = pages_url(REPOSITORY)  # where .github/workflows/pages.yml publishes it

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "course_site"]
exclude_patterns = ["README.md", "LICENSE"]  # the landing page includes parts of the README

# The notebooks as committed: never executed, outputs shown as they are.
nb_execution_mode = "off"
nb_output_stderr = "show"  # course_site drops the blocks that only hold third-party libraries' warnings
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

# The package's reference from its docstrings; the modules import torch and friends for real.
autodoc_member_order = "bysource"
napoleon_google_docstring = True  # the docstrings' Args: / Returns: sections
napoleon_numpy_docstring = False
autodoc_typehints = "description"
autodoc_preserve_defaults = True
add_module_names = False

html_theme = "sphinx_book_theme"
html_static_path = ["_static"]
html_css_files = ["course.css"]
html_favicon = "_static/favicon.svg"
html_sourcelink_suffix = ""  # _sources/notebooks/NN_topic.ipynb is the notebook itself: the download link
html_last_updated_fmt = None
# The theme's colour mode: light or dark as the reader's system prefers (an empty one logs a console error).
html_context = {"default_mode": "auto"}
html_theme_options = {
    "repository_url": REPOSITORY,
    "repository_branch": "main",
    "path_to_docs": "",  # the site's sources mirror the repository's layout
    "use_repository_button": True,
    "use_download_button": True,
    "use_source_button": False,
    "launch_buttons": {"colab_url": "https://colab.research.google.com"},
    "show_toc_level": 2,
    "navigation_with_keys": False,
}

course_repository = REPOSITORY
