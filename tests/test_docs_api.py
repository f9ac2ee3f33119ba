"""docs/api.md is generated from the docstrings: it must match them (run `python docs/make_api.py`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_api_reference_matches_the_docstrings():
    spec = importlib.util.spec_from_file_location("make_api", DOCS / "make_api.py")
    make_api = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_api)
    current = (DOCS / "api.md").read_text(encoding="utf-8")
    assert current == make_api.render(), "docs/api.md is out of date: run python docs/make_api.py"
