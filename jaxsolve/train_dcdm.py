"""``python -m jaxsolve.train_dcdm --dim 2 --grid 64 --out FILE``: train a DCDM
network (see :mod:`jaxsolve.solvers.linear._dcdm._train` for the recipe)."""

from .solvers.linear._dcdm._train import main

if __name__ == "__main__":
    main()
