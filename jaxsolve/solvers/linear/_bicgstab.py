"""BiCGStab for general (non-symmetric) systems."""

from __future__ import annotations

import jax.numpy as jnp

from ..._iterate import iterate
from ..._solution import RESULTS, Solution
from ._krylov import krylov_solve, norm, start_result

__all__ = ["bicgstab"]


def _bicgstab_loop(matvec, b, x0, r, precond, tol, max_steps, input_code):
    precond = (lambda v: v) if precond is None else precond
    zero = jnp.zeros_like(r)
    one = jnp.asarray(1, r.dtype)
    # state: x, r, r_hat (shadow residual), p, v, rho, alpha, omega, result
    init = (x0, r, r, zero, zero, one, one, one, start_result(input_code, r))

    def keep_going(state):
        result = state[-1]
        return (result == RESULTS.successful) & (norm(state[1]) > tol)

    def step(state):
        x, r, r_hat, p, v, rho, alpha, omega, result = state
        rho_new = jnp.vdot(r_hat, r)
        beta = (rho_new / _nonzero(rho)) * (alpha / _nonzero(omega))
        p = r + beta * (p - omega * v)
        p_hat = precond(p)
        v = matvec(p_hat)
        rv = jnp.vdot(r_hat, v)
        alpha = rho_new / _nonzero(rv)
        s = r - alpha * v
        s_small = norm(s) <= tol
        s_hat = precond(s)
        t = matvec(s_hat)
        tt = jnp.vdot(t, t)
        omega = jnp.where(s_small, 1, jnp.vdot(t, s) / _nonzero(tt))
        x_new = x + alpha * p_hat + jnp.where(s_small, 0, omega) * s_hat
        r_new = jnp.where(s_small, s, s - omega * t)
        # rho = 0 or r_hat^T v = 0: the bi-orthogonality cannot go on; omega = 0:
        # the stabilising step stalls. Both are BiCGStab's classical breakdowns.
        broke = (rho_new == 0) | (rv == 0) | (~s_small & (omega == 0))
        finite = jnp.isfinite(rho_new) & jnp.isfinite(rv) & jnp.isfinite(omega)
        code = RESULTS.where(finite, RESULTS.breakdown, RESULTS.nonfinite_value)
        stop = broke | ~finite
        result = RESULTS.where(stop, code, result)
        x_new = jnp.where(stop, x, x_new)
        r_new = jnp.where(stop, r, r_new)
        return x_new, r_new, r_hat, p, v, rho_new, alpha, omega, result

    state, num_steps = iterate(step, keep_going, init, max_steps)
    return state[0], state[-1], num_steps, {"matvecs": 2 * num_steps}


def _nonzero(x):
    return jnp.where(x == 0, 1, x)


def bicgstab(
    operator,
    b,
    *,
    rtol=1e-6,
    atol=0.0,
    max_steps: int | None = None,
    x0=None,
    preconditioner=None,
    throw: bool = True,
) -> Solution:
    r"""Solve ``A x = b`` for a general square ``A`` by BiCGStab (van der Vorst,
    1992), right-preconditioned.

    Short recurrences (constant memory, two products with ``A`` a step), unlike
    GMRES; convergence is not monotone and the method can break down
    (``RESULTS.breakdown``) when ``r_hat^T r = 0`` or the stabilising step stalls.

    Args:
        operator: ``A``, a square ``(n, n)`` array or a function ``x -> A x``.
        b: the right-hand side (``(n,)`` for a matrix operator).
        rtol, atol: stop when ``||b - A x||_2 <= max(rtol ||b||_2, atol)``.
        max_steps: iteration cap (each step costs two products); default ``10 n``.
        x0: initial guess (default zeros).
        preconditioner: ``M ~ A^{-1}`` (right preconditioner), matrix or function.
        throw: raise a runtime error if the solve fails (else inspect ``.result``).

    Returns:
        :class:`jaxsolve.Solution` with ``.value = x`` and the true final residual.

    Differentiable with respect to ``b`` and the operator's closed-over arrays
    through ``jax.lax.custom_linear_solve``.
    """
    return krylov_solve(
        _bicgstab_loop,
        "bicgstab",
        operator,
        b,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        x0=x0,
        preconditioner=preconditioner,
        throw=throw,
        symmetric=False,
    )
