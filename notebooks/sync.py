"""Execute the notebooks from their sources and write the executed ``.ipynb``.

Every notebook is kept as a jupytext percent-format script ``notebooks/NAME.py``
(the source, reviewed and linted like code) paired with the committed, executed
``notebooks/NAME.ipynb`` (what GitHub and the docs show, with outputs)::

    python notebooks/sync.py                 # every notebook
    python notebooks/sync.py optimal_transport

``tests/test_notebooks.py`` checks that each pair holds the same cells and that
each source executes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jupytext
import nbclient
import nbformat

NOTEBOOK_DIR = Path(__file__).resolve().parent
ROOT = NOTEBOOK_DIR.parent
CELL_TIMEOUT_S = 300


def sources() -> list[Path]:
    """The notebook sources: every ``notebooks/*.py`` but this script."""
    return sorted(p for p in NOTEBOOK_DIR.glob("*.py") if p.name != Path(__file__).name)


def cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def drift(source: Path) -> str | None:
    """Why ``source`` and its ``.ipynb`` differ, or ``None`` when they agree."""
    executed = source.with_suffix(".ipynb")
    if not executed.exists():
        return f"{executed.name} is missing: run python notebooks/sync.py {source.stem}"
    want, have = cells(jupytext.read(source)), cells(nbformat.read(executed, 4))
    if want == have:
        return None
    for k, (a, b) in enumerate(zip(want, have, strict=False)):
        if a != b:
            return f"{executed.name} differs from {source.name} at cell {k}"
    return f"{executed.name} has {len(have)} cells, {source.name} {len(want)}"


def execute(source: Path):
    """The notebook of ``source``, executed in a fresh ``python3`` kernel whose
    working directory is ``notebooks/`` and which imports this checkout."""
    nb = jupytext.read(source)
    nb.metadata["kernelspec"] = {
        "display_name": "Python 3",
        "language": "python",
        "name": "python3",
    }
    env = {"MPLBACKEND": "Agg"}
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *extra])
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = nbclient.NotebookClient(
            nb,
            timeout=CELL_TIMEOUT_S,
            kernel_name="python3",
            resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
            allow_errors=False,
        )
        client.execute()  # a cell that raises raises CellExecutionError
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def main(names: list[str]) -> None:
    chosen = [NOTEBOOK_DIR / f"{n}.py" for n in names] if names else sources()
    for source in chosen:
        nb = execute(source)
        nbformat.write(nb, source.with_suffix(".ipynb"))
        print(f"wrote {source.with_suffix('.ipynb').relative_to(ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:])
