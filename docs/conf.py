"""Sphinx configuration of the cddfuse documentation (build: ``bash scripts/build_docs.sh``)."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # document the sources of this checkout, not an installed copy

import cddfuse  # noqa: E402

project = "cddfuse"
author = "cddfuse contributors"
copyright = "cddfuse contributors, MIT licence"
release = cddfuse.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "pypi.md", "model_card/*.md", "Thumbs.db", ".DS_Store"]

# MyST: Markdown guide pages; headings get anchors so that pages can link to sections.
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# API reference: one page per module, generated from the docstrings at build time.
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {
    "members": True,
    "undoc-members": False,
    "show-inheritance": True,
    "ignore-module-all": True,  # document each object once, where it is defined
}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = False
napoleon_google_docstring = True
napoleon_numpy_docstring = True
napoleon_use_ivar = True  # "Attributes:" sections as fields: dataclass attributes are documented once

html_theme = "furo"
html_title = f"cddfuse {release}"
html_static_path: list[str] = []
