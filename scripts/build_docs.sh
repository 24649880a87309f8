#!/usr/bin/env bash
# Build the documentation site (Sphinx: autodoc, napoleon, MyST Markdown, furo) into
# docs/_build/html with every warning an error. Needs the `docs` extra (scripts/setup.sh installs it). Usage: bash scripts/build_docs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
rm -rf docs/api/_generated  # autosummary's pages are regenerated from the current sources
"$PY" -m sphinx -W --keep-going -q -b html docs docs/_build/html
echo "docs built: docs/_build/html/index.html"
