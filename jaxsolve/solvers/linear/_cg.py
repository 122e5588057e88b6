"""Conjugate gradients for symmetric positive definite systems."""

from __future__ import annotations

import jax.numpy as jnp

from ..._compiled import compiled_once
from ..._iterate import iterate
from ..._solution import RESULTS, Solution
from ._krylov import krylov_solve, start_result, symmetry_probe, symmetry_result

__all__ = ["cg", "cg_steps"]


def _cg_iteration(r, precond, tol):
    """What a CG loop is made of, from the first residual ``r``: the first
    state ``(x - x0 = 0, r, p = M r, r.z, ||r||^2, successful)`` (``||r||^2``
    carried, so that the stopping test is a scalar comparison rather than a
    pass over ``r``), ``keep_going(state)`` and ``advance(state, A p)``, one
    step given the current direction's product."""
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

    init = (jnp.zeros_like(r), r, z, rz, rr, RESULTS.successful)
    return init, keep_going, advance


def _cg_loop(matvec, b, x0, r, precond, tol, max_steps, input_code):
    init, keep_going, advance = _cg_iteration(r, precond, tol)
    _, _, z, *_ = init

    def step(state):
        return advance(state, matvec(state[2]))

    # The first step is taken outside the loop so that its product A p0 also
    # serves the symmetry probe (u^T A p0 = p0^T A u for a fixed random u): one
    # extra product a solve, where a random pair u, v would cost two. Every
    # solve (primal, tangent, transposed) probes its own operator this way.
    # (Taking it inside the loop instead, to trace the step and the operator
    # once, needs the probe's inner products at every step, or a loop of 0 or
    # 1 trips in each: 30 % and 1-16 % more time where A is cheap, measured on
    # a 2-D Poisson stencil.)
    u = symmetry_probe(r.size, r.dtype)
    ap0 = matvec(z)
    result = symmetry_result(start_result(input_code, r), u, matvec(u), z, ap0)
    init = (x0, *init[1:-1], result)
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


def cg_steps(matvec, b, *, rtol, max_steps, preconditioner=None):
    r"""Plain (preconditioned) CG on ``A x = b`` from ``x0 = 0``, for a
    solver's *inner* systems that are never differentiated and whose result
    the caller checks itself (Sinkhorn-Newton-Sparse's Newton directions).

    Stops when ``||r||_2 <= rtol ||b||_2`` for the recursively updated
    residual ``r``, at a non-positive curvature ``p^T A p <= 0`` (the step is
    not taken) or after ``max_steps`` steps (an array or an int).

    Unlike :func:`cg` there are no checks of the inputs or of the operator's
    symmetry, no restarts from the true residual and no
    ``custom_linear_solve``: one traced CG step, a few dozen XLA kernels
    fewer to compile. ``matvec`` and ``preconditioner`` are functions on
    ``b``'s flat shape.

    Returns ``(x, num_steps, result)``: the last iterate (finite as long as
    the products were), the steps taken and the loop's code
    (``successful``, ``not_positive_definite`` or ``nonfinite_value``; a
    solve that ran out of steps keeps ``successful``).
    """
    tol = rtol * jnp.sqrt(jnp.vdot(b, b))
    init, keep_going, advance = _cg_iteration(b, preconditioner, tol)

    def step(state):
        return advance(state, matvec(state[2]))

    state, num_steps = iterate(step, keep_going, init, max_steps)
    return state[0], num_steps, state[-1]


@compiled_once
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
