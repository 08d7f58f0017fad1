"""The test folders have no ``__init__.py`` of their own per folder level that pytest could use to
tell two modules of one name apart: a unit and an integration test module with the same basename
break collection of the whole suite ("import file mismatch"). Every test module's name is unique."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_basenames_are_unique() -> None:
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []
