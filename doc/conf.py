"""Sphinx configuration for ctrl_bps_parsl.

Builds offline: no intersphinx inventories, no theme or asset downloads.
``python -m sphinx -W -b html doc build/html`` from the repository root.
"""

import shutil
from importlib import metadata
from pathlib import Path

project = "ctrl_bps_parsl"
author = "Rubin Observatory Data Management"
copyright = "2026 Association of Universities for Research in Astronomy, Inc. (AURA)"
try:
    release = metadata.version("lsst-ctrl-bps-parsl")
except metadata.PackageNotFoundError:
    release = "unknown"
version = release

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx_automodapi.automodapi",
    "sphinx_automodapi.smart_resolver",
]

root_doc = "index"
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
# index.md (the page list for reading doc/ on GitHub) is included by index.rst,
# not a page of its own. changes/ holds towncrier fragments, collected into
# lsst.ctrl.bps.parsl/CHANGES.rst at release.
exclude_patterns = ["_build", "index.md", "changes"]

default_role = "py:obj"
nitpicky = False

# MyST: the hand-written pages link to each other's sections by heading.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

# numpydoc renders the docstrings; automodapi lists the members.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
autosummary_generate = True
automodapi_toctreedirnm = "lsst.ctrl.bps.parsl/api"
# automodapi writes one stub page per API object into the source tree; start
# from none so that a renamed or removed object leaves no stale page behind.
shutil.rmtree(Path(__file__).parent / automodapi_toctreedirnm, ignore_errors=True)
automodsumm_inherited_members = False
autodoc_typehints = "none"

html_theme = "alabaster"
html_title = f"ctrl_bps_parsl {release}"
html_theme_options = {"description": "Run Rubin BPS workflows with Parsl", "fixed_sidebar": True}
html_static_path: list[str] = []
