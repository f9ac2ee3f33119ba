"""The examples in the library's docstrings run and print what they say."""

import doctest
import importlib
from pathlib import Path

import pytest

import dmlmm

SRC = Path(dmlmm.__file__).resolve().parent
WITH_EXAMPLES = sorted(
    ".".join(("dmlmm",) + p.relative_to(SRC).with_suffix("").parts)
    for p in SRC.rglob("*.py") if ">>> " in p.read_text(encoding="utf-8")
)


def test_some_modules_have_examples():
    assert "dmlmm.inference.stochastic" in WITH_EXAMPLES and "dmlmm.inference.starts" in WITH_EXAMPLES


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
