"""Conjugate gradients for symmetric positive definite systems."""

from __future__ import annotations

import jax.numpy as jnp

from ..._iterate import iterate
from ..._solution import RESULTS, Solution
from ._krylov import krylov_solve, start_result, symmetry_probe, symmetry_result

__all__ = ["cg"]


def _cg_loop(matvec, b, x0, r, precond, tol, max_steps, input_code):
    apply_m = (lambda v: v) if precond is None else precond
    # Without a preconditioner r.z is r.r: one inner product a step, not two.
    z = apply_m(r)
    rr = jnp.vdot(r, r)
    rz = rr if precond is None else jnp.vdot(r, z)
    tol2 = tol**2

    def keep_going(state):
        *_, rr, result = state
        return (result == RESULTS.successful) & (rr > tol2)

    def advance(state, ap):
        """One CG step, given ``ap = A p`` for the current direction ``p``."""
        x, r, p, rz, rr, result = state
        pap = jnp.vdot(p, ap)
        # p^T A p <= 0 proves A is not SPD (CG's curvature test); NaN means
        # overflow. Then the step is not taken (alpha = 0) and the loop ends.
        bad = ~(pap > 0)
        alpha = jnp.where(bad, 0, rz / jnp.where(bad, 1, pap))
        x = x + alpha * p
        r = r - alpha * ap
        z = apply_m(r)
        rr = jnp.vdot(r, r)
        rz_new = rr if precond is None else jnp.vdot(r, z)
        p = z + (rz_new / jnp.where(rz == 0, 1, rz)) * p
        code = RESULTS.where(
            jnp.isfinite(pap), RESULTS.not_positive_definite, RESULTS.nonfinite_value
        )
        return x, r, p, rz_new, rr, RESULTS.where(bad, code, result)

    def step(state):
        return advance(state, matvec(state[2]))

    # The first step is taken outside the loop so that its product A p0 also
    # serves the symmetry probe (u^T A p0 = p0^T A u for a fixed random u): one
    # extra product a solve, where a random pair u, v would cost two. Every
    # solve (primal, tangent, transposed) probes its own operator this way.
    u = symmetry_probe(r.size, r.dtype)
    ap0 = matvec(z)
    result = symmetry_result(start_result(input_code, r), u, matvec(u), z, ap0)
    # state: x, r, p, r.z, ||r||^2 (carried, so the stopping test is a scalar
    # comparison rather than a pass over r), result
    init = (x0, r, z, rz, rr, result)
    take = keep_going(init) & (max_steps > 0)
    first = advance(init, ap0)
    state = tuple(
        jnp.where(take, a, b) for a, b in zip(first[:-1], init[:-1], strict=True)
    )
    state = (*state, RESULTS.where(take, first[-1], result))
    taken = take.astype(jnp.int32)
    state, num_steps = iterate(step, keep_going, state, max_steps - taken)
    # Products: the loop's steps, A p0 (taken or not) and A u.
    return state[0], state[-1], num_steps + taken, {"matvecs": num_steps + 2}


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
        loop_probes_symmetry=True,
    )
