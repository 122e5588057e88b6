"""Conjugate gradients for symmetric positive definite systems."""

from __future__ import annotations

import jax.numpy as jnp

from ..._iterate import iterate
from ..._solution import RESULTS, Solution
from ._krylov import krylov_solve, norm, start_result

__all__ = ["cg"]


def _cg_loop(matvec, b, x0, precond, tol, max_steps, valid):
    r = b - matvec(x0)
    z = precond(r)
    rz = jnp.vdot(r, z)
    init = (x0, r, z, rz, start_result(valid, r))

    def keep_going(state):
        _, r, _, _, result = state
        return (result == RESULTS.successful) & (norm(r) > tol)

    def step(state):
        x, r, p, rz, result = state
        ap = matvec(p)
        pap = jnp.vdot(p, ap)
        # p^T A p <= 0 proves A is not SPD (CG's curvature test); NaN means overflow.
        bad = ~(pap > 0)
        alpha = rz / jnp.where(bad, 1, pap)
        x_new = x + alpha * p
        r_new = r - alpha * ap
        z = precond(r_new)
        rz_new = jnp.vdot(r_new, z)
        p_new = z + (rz_new / jnp.where(rz == 0, 1, rz)) * p
        code = RESULTS.where(
            jnp.isfinite(pap), RESULTS.not_positive_definite, RESULTS.nonfinite_value
        )
        new = (x_new, r_new, p_new, rz_new, result)
        old = (x, r, p, rz, code)
        return tuple(
            RESULTS.where(bad, o, n) if isinstance(n, RESULTS) else jnp.where(bad, o, n)
            for o, n in zip(old, new, strict=True)
        )

    (x, _, _, _, result), num_steps = iterate(step, keep_going, init, max_steps)
    return x, result, num_steps


def cg(
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
    r"""Solve ``A x = b`` for symmetric positive definite ``A`` by (preconditioned)
    conjugate gradients (Hestenes & Stiefel, 1952).

    Stops when ``||b - A x||_2 <= max(rtol ||b||_2, atol)`` (as scipy does).

    Args:
        operator: ``A``, a square ``(n, n)`` array, or a function ``x -> A x`` from
            arrays of ``b``'s shape to the same shape (e.g. a stencil on a grid).
            ``A`` must be symmetric positive definite; a non-positive curvature
            ``p^T A p <= 0`` ends the solve with ``RESULTS.not_positive_definite``.
        b: the right-hand side, an array (``(n,)`` for a matrix operator).
        rtol, atol: relative and absolute tolerances (non-negative).
        max_steps: iteration cap; default ``10 n``.
        x0: initial guess of ``b``'s shape (default zeros).
        preconditioner: ``M ~ A^{-1}``, SPD, as a matrix or a function.
        throw: raise a runtime error if the solve fails (else inspect ``.result``).

    Returns:
        :class:`jaxsolve.Solution` with ``.value = x`` (``b``'s shape), ``.num_steps``
        and ``.residual = ||b - A x||_2`` (the true residual, recomputed at the end).

    Differentiable (``jvp``, ``vjp``, any order) with respect to ``b`` and to arrays
    closed over by ``operator``, through ``jax.lax.custom_linear_solve``: the
    derivative solves ``A dx = db - dA x`` with CG again, never unrolling the loop.
    """
    return krylov_solve(
        _cg_loop,
        "cg",
        operator,
        b,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        x0=x0,
        preconditioner=preconditioner,
        throw=throw,
        symmetric=True,
    )
