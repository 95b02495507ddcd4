"""Sphinx configuration for the securewsgi documentation.

Build it with ``sphinx-build -W -b html docs/source docs/build/html`` (or ``tox -e
docs``). The pages are plain reStructuredText: no extension needs the network or an
import of securewsgi, so the site builds on a machine where securewsgi's dependencies
are not installed.
"""
import re
from pathlib import Path

_INIT = Path(__file__).resolve().parents[2] / "securewsgi" / "__init__.py"
_VERSION = re.search(r'^__version__ = "([^"]+)"', _INIT.read_text(encoding="utf-8"), re.M)

project = "securewsgi"
author = "securewsgi contributors"
copyright = "securewsgi contributors"
release = _VERSION.group(1) if _VERSION else "unknown"
version = release

extensions: list = []
root_doc = "index"
exclude_patterns: list = []
templates_path: list = []

# Literal blocks are shell sessions, YAML, INI and log lines: no highlighting guesses.
highlight_language = "none"

html_theme = "alabaster"
html_title = f"securewsgi {release}"
html_static_path: list = []
html_show_sourcelink = False
