"""Registry entries for the bilevel family: the implicitly differentiated lower-level
solution ``y*(x)`` (what AID's hypergradient differentiates) and the deflated CG of
the recycled backward solves."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._solution import RESULTS, Solution, finalize
from ..problems import make_classification
from ..solvers.bilevel import implicit_lower
from ..solvers.linear import deflated_cg
from ._registry import BadInput, SolverCase, register

# --- y*(x) of an l2-tuned logistic regression: per-feature strengths exp(x) ---


def _lower(x, w, X, t):
    z = X @ w
    return jnp.mean(jnp.logaddexp(0, z) - t * z) + 0.5 * jnp.sum(jnp.exp(x) * w**2)


_grad_w = jax.grad(_lower, argnums=1)


def _newton(x, w, X, t):
    """Newton's method, a fixed 30 steps (quadratic convergence: to rounding)."""

    def body(_, w):
        h = jax.hessian(_lower, argnums=1)(x, w, X, t)
        return w - jnp.linalg.solve(h, _grad_w(x, w, X, t))

    return lax.fori_loop(0, 30, body, w)


_y_star = implicit_lower(_lower, _newton)


def _lower_inputs(dtype):
    X, t = make_classification(jax.random.PRNGKey(3), 30, 4, dtype=jnp.float64)
    x = jnp.asarray([-1.0, 0.0, -2.0, 0.5])
    return x.astype(dtype), X.astype(dtype), t.astype(dtype)


def _lower_solve(x, X, t, throw=True):
    w = _y_star(x, jnp.zeros(X.shape[1], X.dtype), X, t)
    residual = jnp.linalg.norm(_grad_w(x, w, X, t))
    ok = jnp.isfinite(residual)
    sol = Solution(
        value=w,
        result=RESULTS.where(ok, RESULTS.successful, RESULTS.nonfinite_value),
        num_steps=jnp.asarray(30),
        residual=residual,
    )
    return finalize(sol, throw, "bilevel.implicit_lower")


def _lower_residual(w, x, X, t):
    return jnp.linalg.norm(_grad_w(x, w, X, t)) / jnp.maximum(jnp.linalg.norm(w), 1)


def _perturb_lower(inputs, scale):
    x, X, t = inputs
    return x + 0.3 * scale, X * (1 + 0.05 * scale), t


register(
    SolverCase(
        name="bilevel/implicit_lower",
        make_inputs=_lower_inputs,
        solve=_lower_solve,
        residual=_lower_residual,
        perturb=_perturb_lower,
        # Bad inputs of the bilevel methods are tested in tests/test_bilevel.py.
    )
)


# --- deflated CG with a fixed basis of approximate eigenvectors ---


def _deflation_inputs(dtype, n=12):
    rng = np.random.default_rng(4)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    a = (q * np.logspace(-2, 0, n)) @ q.T
    return jnp.asarray(a, dtype), jnp.asarray(rng.normal(size=n), dtype)


def _deflation_basis(n, dtype):
    # A fixed, inexact basis (it steers the iteration, not the answer).
    rng = np.random.default_rng(5)
    return jnp.asarray(rng.normal(size=(n, 3)), dtype)


def _deflated_solve(a, b, throw=True):
    rtol = 1e-12 if a.dtype == jnp.float64 else 1e-5
    basis = _deflation_basis(b.shape[0], a.dtype)
    # The symmetric part: the test matrix perturbs the matrix in random
    # (non-symmetric) directions, which an SPD solver must not be given.
    return deflated_cg(0.5 * (a + a.T), b, basis=basis, rtol=rtol, throw=throw)


def _dense_residual(x, a, b):
    return jnp.linalg.norm(0.5 * (a + a.T) @ x - b) / jnp.linalg.norm(b)


def _perturb_dense(inputs, scale):
    a, b = inputs
    n = a.shape[0]
    return a + scale * 0.1 * jnp.eye(n, dtype=a.dtype), b + scale * jnp.arange(
        n, dtype=b.dtype
    ) / n


register(
    SolverCase(
        name="deflated_cg/dense",
        make_inputs=_deflation_inputs,
        solve=_deflated_solve,
        residual=_dense_residual,
        perturb=_perturb_dense,
        bad_inputs=(
            BadInput(
                "NaN in b",
                lambda i: (i[0], i[1].at[0].set(jnp.nan)),
                RESULTS.nonfinite_input,
            ),
            BadInput("b of the wrong length", lambda i: (i[0], i[1][:-1]), ValueError),
            BadInput(
                "indefinite matrix",
                lambda i: (-i[0], i[1]),
                RESULTS.not_positive_definite,
            ),
        ),
    )
)
