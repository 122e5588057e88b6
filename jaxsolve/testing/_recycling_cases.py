"""Registry entries for Krylov subspace recycling (GCRO-DR)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._solution import RESULTS
from ..solvers.linear import gcrodr
from ._registry import BadInput, SolverCase, register

_NAN = float("nan")


def _rtol(dtype):
    return 1e-12 if jnp.dtype(dtype) == jnp.float64 else 1e-5


def _nonsymmetric(dtype, n=14):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(n, n)) / np.sqrt(n) + 1.5 * np.eye(n)
    return jnp.asarray(a, dtype), jnp.asarray(rng.normal(size=n), dtype)


def _dense_solve(a, b, throw=True):
    """Solve with the recycle space of a neighbouring system (``A + 0.1 I``, not
    differentiated): the recycled path under jit, vmap, jvp and vjp. (One case
    for GCRO-DR: its compilations dominate the matrix's time; the solve without a
    recycle space is the first one here.)"""
    a_near = jax.lax.stop_gradient(a) + 0.1 * jnp.eye(*a.shape, dtype=a.dtype)
    first = gcrodr(
        a_near, jax.lax.stop_gradient(b), m=8, k=3, rtol=_rtol(a.dtype), throw=False
    )
    return gcrodr(
        a, b, m=8, k=3, rtol=_rtol(a.dtype), recycle=first.recycle, throw=throw
    )


def _dense_residual(x, a, b):
    return jnp.linalg.norm(a @ x - b) / jnp.linalg.norm(b)


def _perturb_dense(inputs, scale):
    a, b = inputs
    n = a.shape[0]
    return a + scale * 0.1 * jnp.eye(n, dtype=a.dtype), b + scale * jnp.arange(
        n, dtype=b.dtype
    ) / n


def _singular(inputs):
    # A zero row and column: A is singular and b (non-zero in that row) is not in
    # its range, so no x solves A x = b: a code, never a NaN.
    a, b = inputs
    return a.at[0].set(0).at[:, 0].set(0), b.at[0].set(1)


register(
    SolverCase(
        name="gcrodr/dense",
        make_inputs=_nonsymmetric,
        solve=_dense_solve,
        residual=_dense_residual,
        perturb=_perturb_dense,
        bad_inputs=(
            BadInput(
                "NaN in b",
                lambda i: (i[0], i[1].at[0].set(_NAN)),
                RESULTS.nonfinite_input,
            ),
            BadInput(
                "Inf in the matrix",
                lambda i: (i[0].at[1, 2].set(jnp.inf), i[1]),
                RESULTS.nonfinite_input,
            ),
            BadInput("b of the wrong length", lambda i: (i[0], i[1][:-1]), ValueError),
            BadInput("non-square matrix", lambda i: (i[0][:-1], i[1]), ValueError),
            BadInput(
                "singular matrix, b outside its range", _singular, RESULTS.stagnation
            ),
        ),
    )
)
