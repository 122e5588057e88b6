"""Registry entries for Krylov subspace recycling (GCRO-DR)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._solution import RESULTS
from ..problems import convection_diffusion_2d
from ..solvers.linear import gcrodr
from ._registry import BadInput, SolverCase, register

_NAN = float("nan")
_GRID = 8
_M, _K = 12, 4


def _rtol(dtype):
    return 1e-12 if jnp.dtype(dtype) == jnp.float64 else 1e-5


def _nonsymmetric(dtype, n=14):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(n, n)) / np.sqrt(n) + 1.5 * np.eye(n)
    return jnp.asarray(a, dtype), jnp.asarray(rng.normal(size=n), dtype)


def _dense_solve(a, b, throw=True):
    return gcrodr(a, b, m=8, k=3, rtol=_rtol(a.dtype), throw=throw)


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


def _convection(velocity):
    return convection_diffusion_2d(_GRID, velocity, dtype=velocity.dtype)[0]


def _convection_inputs(dtype):
    return jnp.asarray([20.0, 10.0], dtype), jnp.ones((_GRID, _GRID), dtype)


def _convection_residual(u, velocity, b):
    return jnp.linalg.norm(_convection(velocity)(u) - b) / jnp.linalg.norm(b)


def _perturb_grid(inputs, scale):
    p, b = inputs
    return p * (1 + 0.1 * scale), b * (
        1 + 0.1 * scale * jnp.cos(jnp.arange(b.size))
    ).reshape(b.shape).astype(b.dtype)


def _recycled_solve(velocity, b, throw=True):
    """Solve with the recycle space of a neighbouring system (velocity 10%
    larger): the recycled path under jit, vmap, jvp and vjp."""
    first = gcrodr(
        _convection(jax.lax.stop_gradient(velocity) * 1.1),
        jax.lax.stop_gradient(b),
        m=_M,
        k=_K,
        rtol=_rtol(b.dtype),
        throw=False,
    )
    return gcrodr(
        _convection(velocity),
        b,
        m=_M,
        k=_K,
        rtol=_rtol(b.dtype),
        recycle=first.recycle,
        throw=throw,
    )


register(
    SolverCase(
        name="gcrodr/recycled-stencil",
        make_inputs=_convection_inputs,
        solve=_recycled_solve,
        residual=_convection_residual,
        perturb=_perturb_grid,
        bad_inputs=(
            BadInput(
                "Inf in b",
                lambda i: (i[0], i[1].at[0, 0].set(jnp.inf)),
                RESULTS.nonfinite_input,
            ),
            BadInput(
                "NaN in the velocity",
                lambda i: (i[0].at[1].set(_NAN), i[1]),
                RESULTS.nonfinite_input,
            ),
        ),
    )
)
