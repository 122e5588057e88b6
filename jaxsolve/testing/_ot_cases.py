"""Registry entries for the entropic OT solvers (Sinkhorn, Sinkhorn-Newton-Sparse).

Small problems (10 x 12, epsilon = 0.1) so that finite differences are accurate;
the inputs are ``(C, a, b, epsilon)``, all differentiated by the test matrix. The
marginals are normalised inside (``normalize=True``): the matrix perturbs ``a`` and
``b`` independently, and unequal masses would otherwise be refused.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .._solution import RESULTS
from ..solvers.ot import _kernel, sinkhorn, sinkhorn_newton_sparse
from ..solvers.ot._dual import marginal_error
from ..solvers.ot._sinkhorn import SINKHORN_MESSAGES
from ..solvers.ot._sns import SNS_MESSAGES
from ._registry import BadInput, SolverCase, register

_N, _M = 10, 12
_NAN = float("nan")


def _tol(dtype):
    # Tight in float64: finite differences (step 1e-6) of the potentials must not
    # see the solver's stopping error.
    return 1e-14 if jnp.dtype(dtype) == jnp.float64 else 1e-5


def _ot_inputs(dtype):
    # Drawn in float64 and cast, so the float32 and float64 problems are the same.
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(_N, 2))
    y = rng.uniform(size=(_M, 2)) + 0.2
    C = np.sum((x[:, None] - y[None]) ** 2, axis=-1)
    a = rng.uniform(0.5, 1.5, size=_N)
    b = rng.uniform(0.5, 1.5, size=_M)
    return tuple(jnp.asarray(v, dtype) for v in (C, a / a.sum(), b / b.sum(), 0.1))


def _ot_residual(value, C, a, b, epsilon):
    f, g = value
    a, b = a / jnp.sum(a), b / jnp.sum(b)
    return marginal_error(_kernel.plan(C, f, g, epsilon, a, b), a, b)


def _perturb_ot(inputs, scale):
    C, a, b, epsilon = inputs
    wave = jnp.cos(jnp.arange(C.size, dtype=C.dtype)).reshape(C.shape)
    ramp = jnp.linspace(-1, 1, a.shape[0], dtype=a.dtype)
    return (
        C + 0.1 * scale * wave,
        a * (1 + 0.2 * scale * ramp),
        b,
        epsilon * (1 + 0.2 * scale),
    )


def _bad_inputs():
    def replace(k, new):
        return lambda i: tuple(new(x) if j == k else x for j, x in enumerate(i))

    return (
        BadInput(
            "NaN in the cost",
            replace(0, lambda C: C.at[1, 2].set(_NAN)),
            RESULTS.nonfinite_input,
        ),
        BadInput(
            "Inf in a",
            replace(1, lambda a: a.at[0].set(jnp.inf)),
            RESULTS.nonfinite_input,
        ),
        BadInput(
            "negative entry in a",
            replace(1, lambda a: a.at[3].set(-0.05)),
            RESULTS.invalid_input,
        ),
        BadInput(
            "zero mass b",
            replace(2, lambda b: jnp.zeros_like(b)),
            RESULTS.invalid_input,
        ),
        BadInput(
            "epsilon = 0",
            replace(3, lambda e: jnp.zeros_like(e)),
            RESULTS.invalid_input,
        ),
        BadInput("negative epsilon", replace(3, lambda e: -e), RESULTS.invalid_input),
        BadInput("b of the wrong length", replace(2, lambda b: b[:-1]), ValueError),
        BadInput("cost not a matrix", replace(0, lambda C: C[0]), ValueError),
        BadInput(
            "epsilon not a scalar", replace(3, lambda e: jnp.stack([e, e])), ValueError
        ),
    )


def _sinkhorn(C, a, b, epsilon, throw=True):
    return sinkhorn(
        C, a, b, epsilon=epsilon, tol=_tol(C.dtype), normalize=True, throw=throw
    )


def _sns(C, a, b, epsilon, throw=True):
    return sinkhorn_newton_sparse(
        C,
        a,
        b,
        epsilon=epsilon,
        tol=_tol(C.dtype),
        warmup_steps=5,
        k=8,
        newton_solver="cg",  # the paper's sparse steps ("auto": dense here)
        normalize=True,
        throw=throw,
    )


for _name, _solve, _messages in (
    ("sinkhorn/log", _sinkhorn, SINKHORN_MESSAGES),
    ("sinkhorn_newton_sparse", _sns, SNS_MESSAGES),
):
    register(
        SolverCase(
            name=_name,
            make_inputs=_ot_inputs,
            solve=_solve,
            residual=_ot_residual,
            perturb=_perturb_ot,
            bad_inputs=_bad_inputs(),
            tolerance={"float64": 1e-12, "float32": 1e-4},
            messages=_messages,
        )
    )
