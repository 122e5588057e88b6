"""Registry entries for the implicit-differentiation layer: solvers whose loops are
``lax.while_loop``s (not reverse-differentiable by themselves), differentiated by
``custom_root`` / ``custom_fixed_point``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._solution import RESULTS, Solution, finalize
from ..implicit import custom_fixed_point, custom_root
from ..problems import make_classification, ridge_logistic_objective
from ._registry import BadInput, SolverCase, register

# With throw=True the decorated solver raises first, with custom_root's message;
# the cases report a non-finite solution with the same words.
_MESSAGES = {"nonfinite_value": "the solver returned a solution containing NaN or Inf"}


def _as_solution(x, num_steps, residual, throw, name) -> Solution:
    ok = jnp.isfinite(residual)
    solution = Solution(
        value=x,
        result=RESULTS.where(ok, RESULTS.successful, RESULTS.nonfinite_value),
        num_steps=num_steps,
        residual=residual,
    )
    return finalize(solution, throw, name, _MESSAGES)


# --- custom_root: l2-regularised logistic regression solved by Newton's method ---

_logistic_gradient = jax.grad(ridge_logistic_objective)


def _newton(init, lam, X, y):
    """Newton's method in a while_loop, to a gradient norm of ~eps."""
    tol = 100 * jnp.finfo(X.dtype).eps

    def step(carry):
        w, k = carry
        g = _logistic_gradient(w, lam, X, y)
        h = jax.hessian(ridge_logistic_objective)(w, lam, X, y)
        return w - jnp.linalg.solve(h, g), k + 1

    def keep_going(carry):
        w, k = carry
        g = _logistic_gradient(w, lam, X, y)
        return (jnp.linalg.norm(g) > tol) & (k < 50)

    w, k = lax.while_loop(keep_going, step, (init, jnp.asarray(0)))
    return w, k


# One decorated solver per throw policy: custom_root raises on a non-finite
# solution (or a failed derivative solve) unless throw=False.
_logistic_root = {
    throw: custom_root(_logistic_gradient, has_aux=True, solve="cg", throw=throw)(
        _newton
    )
    for throw in (True, False)
}


def _logistic_inputs(dtype):
    # Drawn in float64 and cast, so the float32 and float64 problems are the same.
    X, y = make_classification(jax.random.PRNGKey(0), 40, 5, dtype=jnp.float64)
    return jnp.asarray(0.1, dtype), X.astype(dtype), y.astype(dtype)


def _logistic_solve(lam, X, y, throw=True):
    w, k = _logistic_root[throw](jnp.zeros(X.shape[1], X.dtype), lam, X, y)
    residual = jnp.linalg.norm(_logistic_gradient(w, lam, X, y))
    return _as_solution(w, k, residual, throw, "logistic_newton")


def _logistic_residual(w, lam, X, y):
    return jnp.linalg.norm(_logistic_gradient(w, lam, X, y))


def _perturb_logistic(inputs, scale):
    lam, X, y = inputs
    return lam * (1 + scale), X * (1 + 0.1 * scale), y


register(
    SolverCase(
        name="custom_root/logistic_newton",
        make_inputs=_logistic_inputs,
        solve=_logistic_solve,
        residual=_logistic_residual,
        perturb=_perturb_logistic,
        messages=_MESSAGES,
        bad_inputs=(
            BadInput(
                "NaN in the regularisation strength",
                lambda i: (jnp.asarray(jnp.nan, i[0].dtype), *i[1:]),
                RESULTS.nonfinite_value,
            ),
        ),
    )
)


# --- custom_fixed_point: an equilibrium layer z = tanh(W z + u) ---


def _layer(z, W, u):
    return jnp.tanh(W @ z + u)


def _fixed_point_iteration(init, W, u):
    tol = 10 * jnp.finfo(W.dtype).eps

    def step(carry):
        z, _, k = carry
        z_new = _layer(z, W, u)
        return z_new, jnp.max(jnp.abs(z_new - z)), k + 1

    def keep_going(carry):
        _, change, k = carry
        return (change > tol) & (k < 500)

    z, _, k = lax.while_loop(keep_going, step, (init, jnp.asarray(jnp.inf, W.dtype), 0))
    return z, k


_equilibrium = {
    throw: custom_fixed_point(_layer, has_aux=True, throw=throw)(_fixed_point_iteration)
    for throw in (True, False)
}


def _equilibrium_inputs(dtype):
    rng = np.random.default_rng(2)
    n = 6
    # ||W||_2 = 0.5 makes z -> tanh(W z + u) a contraction: a unique fixed point.
    W = rng.normal(size=(n, n))
    W = 0.5 * W / np.linalg.norm(W, 2)
    return jnp.asarray(W, dtype), jnp.asarray(rng.normal(size=n), dtype)


def _equilibrium_solve(W, u, throw=True):
    z, k = _equilibrium[throw](jnp.zeros_like(u), W, u)
    residual = jnp.linalg.norm(_layer(z, W, u) - z)
    return _as_solution(z, k, residual, throw, "equilibrium")


def _equilibrium_residual(z, W, u):
    return jnp.linalg.norm(_layer(z, W, u) - z) / jnp.linalg.norm(z)


def _perturb_equilibrium(inputs, scale):
    W, u = inputs
    return W * (1 - 0.1 * scale), u + scale * 0.1


register(
    SolverCase(
        name="custom_fixed_point/equilibrium",
        make_inputs=_equilibrium_inputs,
        solve=_equilibrium_solve,
        residual=_equilibrium_residual,
        perturb=_perturb_equilibrium,
        messages=_MESSAGES,
        bad_inputs=(
            BadInput(
                "NaN in u",
                lambda i: (i[0], i[1].at[0].set(jnp.nan)),
                RESULTS.nonfinite_value,
            ),
        ),
    )
)
