"""The notebooks: each ``notebooks/NAME.py`` (jupytext percent format, the source)
is paired with the committed, executed ``NAME.ipynb`` and executes without error
(the execution runs with the slow tests).

A drifted pair (a source edited without re-running ``python notebooks/sync.py
NAME``) fails here. The sources are executed in memory and never written back.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("jupytext")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("sync", ROOT / "notebooks" / "sync.py")
sync = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sync)

SOURCES = sync.sources()


def test_every_executed_notebook_has_a_source():
    for executed in (ROOT / "notebooks").glob("*.ipynb"):
        assert executed.with_suffix(".py").exists(), f"{executed.name} has no source"


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_pair_has_not_drifted(source):
    assert sync.drift(source) is None, sync.drift(source)


# Executing the five notebooks takes minutes of compilation, so it runs with the
# slow tests (python -m pytest -m slow); the default run checks that every
# committed notebook is the executed form of its current source.
@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_notebook_executes(source):
    sync.execute(source)
