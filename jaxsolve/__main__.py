"""``python -m jaxsolve``: a short tour of the solvers (see :mod:`jaxsolve._demo`)."""

from jaxsolve._demo import main

if __name__ == "__main__":
    raise SystemExit(main())
