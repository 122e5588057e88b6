"""Registry entry for the Deep Conjugate Direction Method (the shipped 2-D model)."""

from __future__ import annotations

import jax.numpy as jnp

from .._solution import RESULTS
from ..problems.obstacles import obstacle_layout, obstacle_rhs, poisson_obstacles
from ..solvers.linear import dcdm
from ._registry import BadInput, SolverCase, register

_N = 12
_SOLID = obstacle_layout(_N, "discs", seed=4)


def _rtol(dtype):
    return 1e-12 if jnp.dtype(dtype) == jnp.float64 else 1e-5


def _inputs(dtype):
    # the operator's conductance k (an array: it gets derivatives) and the source
    return jnp.asarray(1.5, dtype), obstacle_rhs(_SOLID, seed=2, dtype=dtype)


def _operator(k):
    return poisson_obstacles(_SOLID, coefficient=k, dtype=k.dtype)


def _solve(k, b, throw=True):
    return dcdm(_operator(k), b, rtol=_rtol(b.dtype), throw=throw)


def _residual(x, k, b):
    return jnp.linalg.norm(_operator(k)(x) - b) / jnp.linalg.norm(b)


def _perturb(inputs, scale):
    k, b = inputs
    wave = jnp.cos(jnp.arange(b.size)).reshape(b.shape).astype(b.dtype)
    return k * (1 + 0.1 * scale), b * (1 + 0.1 * scale * wave)


def _linear_operator(operator, b, throw=True):
    # flat vectors (the matrix's generic operator checks): the grid is _N x _N
    return dcdm(operator, b, grid_shape=(_N, _N), throw=throw)


_NAN = float("nan")

register(
    SolverCase(
        name="dcdm/obstacles",
        make_inputs=_inputs,
        solve=_solve,
        residual=_residual,
        perturb=_perturb,
        bad_inputs=(
            BadInput(
                "NaN in b",
                lambda i: (i[0], i[1].at[5, 6].set(_NAN)),
                RESULTS.nonfinite_input,
            ),
            BadInput(
                "NaN conductance",
                lambda i: (jnp.asarray(_NAN, i[0].dtype), i[1]),
                RESULTS.nonfinite_input,
            ),
            BadInput(
                "negative conductance (negative definite)",
                lambda i: (-i[0], i[1]),
                RESULTS.not_positive_definite,
            ),
            BadInput(
                "b not grid-shaped", lambda i: (i[0], i[1].reshape(-1)), ValueError
            ),
        ),
        tolerance={"float64": 1e-8, "float32": 1e-3},
        linear_operator=_linear_operator,
        requires_symmetric=True,
    )
)
