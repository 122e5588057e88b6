"""BiCGStab for general (non-symmetric) systems."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array

from ..._compiled import compiled_once
from ..._iterate import iterate
from ..._solution import RESULTS, Solution
from ._krylov import krylov_solve, norm, start_result

__all__ = ["bicgstab"]


class _State(NamedTuple):
    x: Array
    r: Array
    r_hat: Array  # the shadow residual
    p: Array
    v: Array
    rho: Array
    alpha: Array
    omega: Array
    x_best: Array  # the iterate of smallest (recursive) residual so far
    r_best: Array
    best: Array  # ||r_best||
    progress: Array  # whether best improved since the last restart
    result: RESULTS


def _fresh(x, r, best, progress, result) -> _State:
    """A (re)start from ``x`` with residual ``r``: the shadow residual is ``r``."""
    zero = jnp.zeros_like(r)
    one = jnp.asarray(1, r.dtype)
    return _State(x, r, r, zero, zero, one, one, one, x, r, best, progress, result)


def _bicgstab_loop(matvec, b, x0, r, precond, tol, max_steps, input_code):
    precond = (lambda v: v) if precond is None else precond
    eps = jnp.finfo(r.dtype).eps
    init = _fresh(x0, r, norm(r), jnp.asarray(True), start_result(input_code, r))

    def keep_going(s: _State):
        return (s.result == RESULTS.successful) & (s.best > tol)

    def step(s: _State):
        rho_new = jnp.vdot(s.r_hat, s.r)
        beta = (rho_new / _nonzero(s.rho)) * (s.alpha / _nonzero(s.omega))
        p = s.r + beta * (s.p - s.omega * s.v)
        p_hat = precond(p)
        v = matvec(p_hat)
        rv = jnp.vdot(s.r_hat, v)
        alpha = rho_new / _nonzero(rv)
        s_vec = s.r - alpha * v
        s_small = norm(s_vec) <= tol
        s_hat = precond(s_vec)
        t = matvec(s_hat)
        tt = jnp.vdot(t, t)
        omega = jnp.where(s_small, 1, jnp.vdot(t, s_vec) / _nonzero(tt))
        x = s.x + alpha * p_hat + jnp.where(s_small, 0, omega) * s_hat
        r = jnp.where(s_small, s_vec, s_vec - omega * t)
        # Breakdowns: r_hat nearly orthogonal to r (rho) or to A p (r_hat^T v),
        # or a stalled stabilising step (omega = 0). Checked relative to the
        # vectors' norms: exact zeros are rare in floating point, near ones
        # are what derails the recurrences.
        r_hat_norm = norm(s.r_hat)
        broke = (jnp.abs(rho_new) <= eps**2 * r_hat_norm * norm(s.r)) | (
            jnp.abs(rv) <= eps**2 * r_hat_norm * norm(v)
        )
        broke = broke | (~s_small & (omega == 0))
        r_norm = norm(r)
        finite = jnp.isfinite(r_norm) & jnp.isfinite(omega) & jnp.isfinite(rho_new)
        improved = finite & ~broke & (r_norm < s.best)
        x_best = jnp.where(improved, x, s.x_best)
        r_best = jnp.where(improved, r, s.r_best)
        best = jnp.where(improved, r_norm, s.best)
        progress = s.progress | improved
        # On a breakdown, a non-finite value or divergence past all accuracy
        # (transient growth by many orders is normal for non-normal A, and
        # restarting then would throw the progress away), restart from the
        # best iterate with a new shadow residual (as a restarted Krylov method
        # does), unless nothing improved since the last restart: then stop.
        restart = broke | ~finite | (r_norm * eps > best)
        code = RESULTS.where(finite, RESULTS.breakdown, RESULTS.nonfinite_value)
        result = RESULTS.where(restart & ~progress, code, s.result)
        going = _State(
            x, r, s.r_hat, p, v, rho_new, alpha, omega,
            x_best, r_best, best, progress, result,
        )  # fmt: skip
        again = _fresh(x_best, r_best, best, jnp.asarray(False), result)
        return jax.tree_util.tree_map(
            lambda a, b_: jnp.where(restart, a, b_), again, going
        )

    state, num_steps = iterate(step, keep_going, init, max_steps)
    return state.x_best, state.result, num_steps, {"matvecs": 2 * num_steps}


def _nonzero(x):
    return jnp.where(x == 0, 1, x)


@compiled_once
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
    GMRES; convergence is not monotone, and the recurrences can break down when
    ``r_hat^T r ~ 0``, ``r_hat^T A p ~ 0`` or the stabilising step stalls. Then
    (and when the iterates overflow, or the residual grows ``1/eps``-fold over
    the best one: the recurrences have then lost all accuracy) the method
    restarts from its best iterate with a new shadow residual; only a restart
    that follows no improvement at all ends the solve (``RESULTS.breakdown``).
    The best iterate is returned.

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
