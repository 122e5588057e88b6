"""Restarted GMRES for general (non-symmetric) systems."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import solve_triangular

from ..._checks import check_positive_int
from ..._iterate import iterate
from ..._solution import RESULTS, Solution
from ._krylov import krylov_solve, norm, start_result

__all__ = ["gmres"]


def _givens(a, b):
    """Rotation (c, s) with [c s; -s c] [a; b] = [r; 0]."""
    r = jnp.hypot(a, b)
    safe = jnp.where(r == 0, 1, r)
    return jnp.where(r == 0, 1, a / safe), jnp.where(r == 0, 0, b / safe)


def _arnoldi_cycle(matvec, precond, r, beta, tol, budget, restart):
    """One GMRES(m) cycle from residual ``r`` (norm ``beta``) on ``A M``.

    Builds an orthonormal basis ``V`` of the Krylov space by Gram-Schmidt, applied
    twice (CGS2: as stable as modified Gram-Schmidt, but vectorised), while Givens
    rotations keep the Hessenberg matrix triangular, so that ``|g[j+1]|`` is the
    residual norm after ``j + 1`` steps and the cycle can stop as soon as it is
    below ``tol``. Returns the correction ``M V y`` and the number of steps.
    """
    n = r.shape[0]
    dtype = r.dtype
    basis = jnp.zeros((restart + 1, n), dtype).at[0].set(r / beta)
    hess = jnp.zeros((restart + 1, restart), dtype)
    cs = jnp.zeros((restart,), dtype)
    sn = jnp.zeros((restart,), dtype)
    g = jnp.zeros((restart + 1,), dtype).at[0].set(beta)

    def keep_going(state):
        _, _, _, _, g, j = state
        return (j < restart) & (j < budget) & (jnp.abs(g[j]) > tol)

    def step(state):
        basis, hess, cs, sn, g, j = state
        w = matvec(precond(basis[j]))
        mask = (jnp.arange(restart + 1) <= j).astype(dtype)
        h = (basis @ w) * mask
        w = w - basis.T @ h
        h2 = (basis @ w) * mask
        w = w - basis.T @ h2
        h = h + h2
        h_next = norm(w)
        # A zero h_next is a "happy breakdown": the solution lies in the space.
        basis = basis.at[j + 1].set(w / jnp.where(h_next == 0, 1, h_next))
        col = h.at[j + 1].set(h_next)

        def rotate(i, col):
            a, b = col[i], col[i + 1]
            return (
                col.at[i]
                .set(cs[i] * a + sn[i] * b)
                .at[i + 1]
                .set(-sn[i] * a + cs[i] * b)
            )

        col = lax.fori_loop(0, j, rotate, col)
        c, s = _givens(col[j], col[j + 1])
        col = col.at[j].set(c * col[j] + s * col[j + 1]).at[j + 1].set(0)
        g = g.at[j + 1].set(-s * g[j]).at[j].set(c * g[j])
        return basis, hess.at[:, j].set(col), cs.at[j].set(c), sn.at[j].set(s), g, j + 1

    state = (basis, hess, cs, sn, g, jnp.asarray(0, jnp.int32))
    (basis, hess, _, _, g, _), steps = iterate(step, keep_going, state, restart)
    # Unused columns get a unit diagonal and a zero right-hand side, so the
    # fixed-size triangular solve gives y = 0 there.
    used = jnp.arange(restart) < steps
    r_mat = hess[:restart]
    diag = jnp.diagonal(r_mat)
    singular = used & (diag == 0)
    r_mat = r_mat + jnp.diag(jnp.where(used & ~singular, 0, 1 - diag))
    y = solve_triangular(r_mat, jnp.where(used & ~singular, g[:restart], 0))
    return precond(basis[:restart].T @ y), steps


def _make_gmres_loop(restart):
    def loop(matvec, b, x0, r, precond, tol, max_steps, input_code):
        precond = (lambda v: v) if precond is None else precond
        result = start_result(input_code, r)
        init = (x0, r, norm(r), jnp.asarray(0, jnp.int32), result)

        def keep_going(state):
            _, _, beta, total, result = state
            return (result == RESULTS.successful) & (beta > tol) & (total < max_steps)

        def cycle(state):
            x, r, beta, total, result = state
            dx, steps = _arnoldi_cycle(
                matvec, precond, r, beta, tol, max_steps - total, restart
            )
            x_new = x + dx
            r_new = b - matvec(x_new)
            beta_new = norm(r_new)
            # A cycle that makes no progress at all will never make any: stop.
            stalled = ~(beta_new < beta)
            result = RESULTS.where(
                stalled & (beta_new > tol),
                RESULTS.where(
                    jnp.isfinite(beta_new), RESULTS.stagnation, RESULTS.nonfinite_value
                ),
                result,
            )
            return x_new, r_new, beta_new, total + steps, result

        (x, _, _, total, result), _ = iterate(cycle, keep_going, init, max_steps)
        return x, result, total

    return loop


def gmres(
    operator,
    b,
    *,
    rtol=1e-6,
    atol=0.0,
    max_steps: int | None = None,
    restart: int = 30,
    x0=None,
    preconditioner=None,
    throw: bool = True,
) -> Solution:
    r"""Solve ``A x = b`` for a general square ``A`` by restarted GMRES(m)
    (Saad & Schultz, 1986), right-preconditioned so the monitored residual is the
    true one: ``A M y = b - A x0``, ``x = x0 + M y``.

    Each cycle minimises ``||b - A x||_2`` over ``x0 + M K_j(A M, r0)``, ``j <= m``
    (``m = restart``), with Givens rotations, stopping inside a cycle as soon as
    ``||b - A x||_2 <= max(rtol ||b||_2, atol)``.

    Args:
        operator: ``A``, a square ``(n, n)`` array or a function ``x -> A x``.
        b: the right-hand side (``(n,)`` for a matrix operator).
        rtol, atol: relative and absolute tolerances (non-negative).
        max_steps: cap on the total number of inner (Arnoldi) steps, i.e. of
            products with ``A``; default ``10 n``.
        restart: ``m``, the Krylov dimension per cycle (static: it sets the
            ``(m + 1, n)`` basis storage). Clipped to ``n``.
        x0: initial guess (default zeros).
        preconditioner: ``M ~ A^{-1}`` (right preconditioner), matrix or function.
        throw: raise a runtime error if the solve fails (else inspect ``.result``).

    Returns:
        :class:`jaxsolve.Solution`; ``.value = x``, ``.num_steps`` counts inner
        steps, ``.residual = ||b - A x||_2``. A cycle that does not reduce the
        residual ends the solve with ``RESULTS.stagnation``.

    Differentiable with respect to ``b`` and the operator's closed-over arrays
    through ``jax.lax.custom_linear_solve`` (the transposed system, for reverse
    mode, is solved by GMRES with ``A^T``).
    """
    restart = check_positive_int(restart, "restart")

    def loop(matvec, b, x0, r0, precond, tol, max_steps, input_code):
        return _make_gmres_loop(min(restart, b.shape[0]))(
            matvec, b, x0, r0, precond, tol, max_steps, input_code
        )

    return krylov_solve(
        loop,
        "gmres",
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
