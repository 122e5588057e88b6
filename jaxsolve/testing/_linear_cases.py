"""Registry entries for the linear solvers."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .._solution import RESULTS
from ..problems import convection_diffusion_2d, poisson_2d
from ..solvers.linear import bicgstab, cg, dense_solve, gmres
from ..solvers.linear._dense import _MESSAGES as _DENSE_MESSAGES
from ._registry import BadInput, SolverCase, register


def _rtol(dtype):
    return 1e-12 if jnp.dtype(dtype) == jnp.float64 else 1e-5


def _spd(dtype, n=12):
    rng = np.random.default_rng(0)
    q = rng.normal(size=(n, n))
    a = q @ q.T / n + np.eye(n)
    return jnp.asarray(a, dtype), jnp.asarray(rng.normal(size=n), dtype)


def _nonsymmetric(dtype, n=12):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(n, n)) / np.sqrt(n) + 2 * np.eye(n)
    return jnp.asarray(a, dtype), jnp.asarray(rng.normal(size=n), dtype)


def _dense_residual(x, a, b):
    return jnp.linalg.norm(a @ x - b) / jnp.linalg.norm(b)


def _perturb_dense(inputs, scale):
    a, b = inputs
    n = a.shape[0]
    return a + scale * 0.1 * jnp.eye(n, dtype=a.dtype), b + scale * jnp.arange(
        n, dtype=b.dtype
    ) / n


_NAN = float("nan")


def _dense_bad_inputs(spd: bool):
    bad = [
        BadInput(
            "NaN in b", lambda i: (i[0], i[1].at[0].set(_NAN)), RESULTS.nonfinite_input
        ),
        BadInput(
            "Inf in the matrix",
            lambda i: (i[0].at[1, 2].set(jnp.inf), i[1]),
            RESULTS.nonfinite_input,
        ),
        BadInput("b of the wrong length", lambda i: (i[0], i[1][:-1]), ValueError),
        BadInput("non-square matrix", lambda i: (i[0][:-1], i[1]), ValueError),
    ]
    if spd:
        bad.append(
            BadInput(
                "indefinite matrix",
                lambda i: (-i[0], i[1]),
                RESULTS.not_positive_definite,
            )
        )
    return tuple(bad)


def _register_dense(name, method, make, spd):
    def solve(a, b, throw=True):
        if spd and a.ndim == 2 and a.shape[0] == a.shape[1]:
            # CG takes symmetric matrices only (it refuses others): the case is
            # a function of the symmetric part, so that finite differences in
            # any direction stay in its domain.
            a = (a + a.T) / 2
        return method(a, b, rtol=_rtol(a.dtype), throw=throw)

    def with_operator(operator, b, throw=True):
        return method(operator, b, rtol=_rtol(b.dtype), throw=throw)

    register(
        SolverCase(
            name=name,
            make_inputs=make,
            solve=solve,
            residual=_dense_residual,
            perturb=_perturb_dense,
            bad_inputs=_dense_bad_inputs(spd),
            linear_operator=with_operator,
            requires_symmetric=spd,
        )
    )


_register_dense("cg/dense", cg, _spd, spd=True)
_register_dense("gmres/dense", gmres, _nonsymmetric, spd=False)
_register_dense("bicgstab/dense", bicgstab, _nonsymmetric, spd=False)


def _dense_solve(a, b, throw=True):
    return dense_solve(a, b, throw=throw)


register(
    SolverCase(
        name="dense_solve",
        make_inputs=_nonsymmetric,
        solve=_dense_solve,
        residual=_dense_residual,
        perturb=_perturb_dense,
        bad_inputs=(
            *_dense_bad_inputs(spd=False),
            BadInput(
                "singular matrix (rank n - 1)",
                lambda i: (i[0].at[-1].set(i[0][0]), i[1]),
                RESULTS.breakdown,
            ),
        ),
        messages=_DENSE_MESSAGES,
        linear_operator=_dense_solve,
    )
)


# Matrix-free stencils on a grid: the operator's parameters (a shift, a velocity)
# are arrays closed over by the matvec, and receive derivatives.
_GRID = 8


def _shifted_poisson(shift):
    laplacian, _ = poisson_2d(_GRID, dtype=shift.dtype)
    return lambda u: laplacian(u) + shift * u


def _poisson_inputs(dtype):
    _, b = poisson_2d(_GRID, dtype=dtype)
    return jnp.asarray(3.0, dtype), b / jnp.linalg.norm(b)


def _poisson_solve(shift, b, throw=True):
    return cg(_shifted_poisson(shift), b, rtol=_rtol(b.dtype), throw=throw)


def _poisson_residual(u, shift, b):
    return jnp.linalg.norm(_shifted_poisson(shift)(u) - b) / jnp.linalg.norm(b)


def _perturb_grid(inputs, scale):
    p, b = inputs
    return p * (1 + 0.1 * scale), b * (
        1 + 0.1 * scale * jnp.cos(jnp.arange(b.size))
    ).reshape(b.shape).astype(b.dtype)


register(
    SolverCase(
        name="cg/stencil",
        make_inputs=_poisson_inputs,
        solve=_poisson_solve,
        residual=_poisson_residual,
        perturb=_perturb_grid,
        bad_inputs=(
            BadInput(
                "NaN in the operator's parameter",
                lambda i: (jnp.asarray(_NAN, i[0].dtype), i[1]),
                RESULTS.nonfinite_input,
            ),
            BadInput(
                "negative definite (shift far below the spectrum)",
                lambda i: (jnp.asarray(-1e4, i[0].dtype), i[1]),
                RESULTS.not_positive_definite,
            ),
        ),
    )
)


def _convection_inputs(dtype):
    return jnp.asarray([20.0, 10.0], dtype), jnp.ones((_GRID, _GRID), dtype)


def _convection(velocity):
    return convection_diffusion_2d(_GRID, velocity, dtype=velocity.dtype)[0]


def _convection_residual(u, velocity, b):
    return jnp.linalg.norm(_convection(velocity)(u) - b) / jnp.linalg.norm(b)


for _name, _method in (("gmres/stencil", gmres), ("bicgstab/stencil", bicgstab)):

    def _solve(velocity, b, throw=True, _method=_method):
        return _method(_convection(velocity), b, rtol=_rtol(b.dtype), throw=throw)

    register(
        SolverCase(
            name=_name,
            make_inputs=_convection_inputs,
            solve=_solve,
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
