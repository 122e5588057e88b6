"""What the notebook builders share: cells collected as plain Python strings, the
notebook written with stable cell ids, optionally executed in a kernel that
imports ``jaxsolve`` from this checkout.

A builder script does::

    from _notebook_builder import Builder

    nb = Builder(Path(__file__).resolve().parent / "name.ipynb", __doc__)
    nb.md("# Title ...")
    nb.code("import jax ...")
    if __name__ == "__main__":
        nb.main()  # --execute keeps the outputs
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook


class Builder:
    def __init__(self, path: Path, description: str | None = None):
        self.path = Path(path)
        self.description = (description or "").strip().splitlines()[:1]
        self.cells: list[tuple[str, str]] = []

    def md(self, text: str) -> None:
        self.cells.append(("markdown", text.strip("\n")))

    def code(self, text: str) -> None:
        self.cells.append(("code", text.strip("\n")))

    def build(self) -> nbformat.NotebookNode:
        nb = new_notebook()
        nb.metadata["kernelspec"] = {
            "display_name": "Python 3",
            "language": "python",
            "name": "python3",
        }
        nb.metadata["language_info"] = {"name": "python"}
        for kind, text in self.cells:
            new = new_markdown_cell if kind == "markdown" else new_code_cell
            nb.cells.append(new(text))
        # Stable cell ids keep diffs between rebuilds small.
        for i, cell in enumerate(nb.cells):
            cell["id"] = f"cell-{i:02d}"
        return nb

    def execute(self, nb: nbformat.NotebookNode) -> None:
        """Run every cell in a fresh kernel (working directory: the notebook's
        folder; this checkout first on ``PYTHONPATH``), keeping the outputs."""
        from nbclient import NotebookClient

        root = str(self.path.parent.parent)
        extra = os.environ.get("PYTHONPATH", "")
        paths = [root] + [p for p in extra.split(os.pathsep) if p]
        os.environ["PYTHONPATH"] = os.pathsep.join(paths)
        os.environ["MPLBACKEND"] = "Agg"
        client = NotebookClient(
            nb,
            timeout=600,
            kernel_name="python3",
            resources={"metadata": {"path": str(self.path.parent)}},
            record_timing=False,
        )
        start = time.perf_counter()
        client.execute()
        print(f"executed in {time.perf_counter() - start:.1f} s", file=sys.stderr)

    def main(self, argv=None) -> None:
        parser = argparse.ArgumentParser(description=" ".join(self.description))
        parser.add_argument("--execute", action="store_true", help="keep outputs")
        args = parser.parse_args(argv)
        nb = self.build()
        if args.execute:
            self.execute(nb)
        nbformat.validate(nb)
        nbformat.write(nb, self.path)
        print(f"wrote {self.path}", file=sys.stderr)
