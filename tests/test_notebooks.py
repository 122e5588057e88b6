"""Execute every notebook in ``notebooks/``; a cell that raises fails the test.

The notebooks are run in a fresh ``python3`` kernel whose working directory is the
notebooks folder and which imports ``jaxsolve`` from this checkout (the repository
root is put first on the kernel's ``PYTHONPATH``). Notebooks are executed in memory
and never written back.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300


@pytest.fixture
def kernel_env(monkeypatch):
    """The environment the kernel inherits: this checkout first on the path, and a
    non-interactive matplotlib backend."""
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), *extra]))
    monkeypatch.setenv("MPLBACKEND", "Agg")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, kernel_env):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
        allow_errors=False,
    )
    # A cell that raises makes `execute` raise CellExecutionError, which names the
    # cell and carries its traceback.
    client.execute()
