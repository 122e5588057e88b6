"""Bilevel optimisation.

``min_x F(x, y*(x))`` with ``y*(x) in argmin_y {f(x, y) : g(x, y) <= 0}``.

Methods are optax-style constructors returning a :class:`BilevelMethod` with jittable
``init(x0, y0, *data)`` and ``step(state, *data)``; :func:`run` drives one with a
progress bar and returns a :class:`jaxsolve.Solution`.

- :func:`aid`: implicit hypergradient (CG on the lower Hessian), optionally with the
  backward solves recycled from one outer step to the next.
- :func:`lv_hba`: single-loop, Hessian-free, for constrained lower levels (ICLR 2024).
- :func:`bo_rep`: normalised momentum, initialisation refinement, periodic lower
  updates (ICLR 2024), for upper levels with unbounded smoothness.
- :func:`itd`: differentiation through unrolled lower-level steps (a baseline).
"""

from ._aid import AIDState as AIDState
from ._aid import aid as aid
from ._aid import hypergradient as hypergradient
from ._aid import implicit_lower as implicit_lower
from ._borep import BOREPState as BOREPState
from ._borep import bo_rep as bo_rep
from ._inner import gradient_steps as gradient_steps
from ._itd import ITDState as ITDState
from ._itd import itd as itd
from ._lvhba import LVHBAState as LVHBAState
from ._lvhba import lv_hba as lv_hba
from ._problem import BilevelMethod as BilevelMethod
from ._run import run as run
