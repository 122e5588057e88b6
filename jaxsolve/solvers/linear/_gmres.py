"""Restarted GMRES for general (non-symmetric) systems."""

from __future__ import annotations

import jax.numpy as jnp

from ..._checks import check_positive_int
from ..._compiled import compiled_once
from ..._iterate import iterate
from ..._solution import RESULTS, Solution
from ._arnoldi import arnoldi_cycle, least_squares_solution
from ._krylov import krylov_solve, norm, stall_result, start_result

__all__ = ["gmres"]


def _make_gmres_loop(restart):
    def loop(matvec, b, x0, r, precond, tol, max_steps, input_code):
        precond = (lambda v: v) if precond is None else precond
        n = b.shape[0]
        result = start_result(input_code, r)
        zero = jnp.asarray(0, jnp.int32)
        init = (x0, r, norm(r), zero, zero, result)

        def keep_going(state):
            _, _, beta, total, _, result = state
            return (result == RESULTS.successful) & (beta > tol) & (total < max_steps)

        def cycle(state):
            x, r, beta, total, matvecs, result = state
            basis = jnp.zeros((restart + 1, n), b.dtype)
            basis = basis.at[0].set(r / jnp.where(beta == 0, 1, beta))
            hess = jnp.zeros((restart + 1, restart), b.dtype)
            arnoldi = arnoldi_cycle(
                lambda v: matvec(precond(v)),
                basis,
                hess,
                0,
                beta,
                tol,
                max_steps - total,
            )
            y = least_squares_solution(arnoldi, 0)
            x_new = x + precond(y @ arnoldi.basis[:restart])
            r_new = b - matvec(x_new)
            beta_new = norm(r_new)
            # A cycle that makes no progress at all will never make any: stop.
            stalled = ~(beta_new < beta)
            result = stall_result(result, stalled & (beta_new > tol), beta_new)
            steps = arnoldi.steps
            return x_new, r_new, beta_new, total + steps, matvecs + steps + 1, result

        (x, _, _, total, matvecs, result), _ = iterate(
            cycle, keep_going, init, max_steps
        )
        return x, result, total, {"matvecs": matvecs}

    return loop


@compiled_once
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
    (``m = restart``), stopping inside a cycle as soon as
    ``||b - A x||_2 <= max(rtol ||b||_2, atol)``. The cycle is the Arnoldi kernel
    shared with :func:`jaxsolve.gcrodr` (``_arnoldi.py``): one Gram-Schmidt sweep a
    step (a second only on heavy cancellation) and the Givens rotations kept as one
    small dense matrix, so a step costs about one product with ``A`` plus one
    orthogonalisation.

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
        steps, ``.residual = ||b - A x||_2``, ``.stats["matvecs"]`` the products
        with ``A`` (inner steps plus one true residual a cycle). A cycle that
        does not reduce the residual ends the solve with ``RESULTS.stagnation``.

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
