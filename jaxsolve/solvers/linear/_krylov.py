"""What the Krylov solvers share: argument checks, the start and finish of a solve,
and differentiation through ``jax.lax.custom_linear_solve``.

Each solver supplies only a *loop*: ``loop(matvec, b, x0, precond, tol, max_steps,
start_result) -> (x, state_stats)`` on flat vectors. :func:`krylov_solve` wraps it so
that ``x = A^{-1} b`` is differentiable with respect to ``b`` and to every array the
operator closes over (forward and reverse mode, any order): JAX differentiates the
*equation* ``A x = b`` and calls the same loop on the tangent (or, transposed, on
the cotangent) system, never through the iterations.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from ..._checks import all_finite, as_float_array, check_nonnegative, check_positive_int
from ..._iterate import iterate
from ..._solution import RESULTS, Solution, error_if_failed
from ._operator import flat_operator, flat_preconditioner

__all__ = ["krylov_solve", "start_result", "finish_result", "norm"]

_MAX_RESTARTS = 3


def norm(x: Array) -> Array:
    return jnp.sqrt(jnp.vdot(x, x).real)


def start_result(valid: Array, r0: Array) -> RESULTS:
    """The code a solve starts with: invalid tolerances or a non-finite start win."""
    return RESULTS.where(
        valid,
        RESULTS.where(
            jnp.all(jnp.isfinite(r0)), RESULTS.successful, RESULTS.nonfinite_input
        ),
        RESULTS.invalid_input,
    )


def finish_result(
    result: RESULTS, converged: Array, residual: Array, num_steps, max_steps
) -> RESULTS:
    """Turn the loop's end state into a code. ``result`` holds any breakdown met
    during the loop (or an input error met at the start)."""
    unconverged = RESULTS.where(
        jnp.isfinite(residual),
        RESULTS.where(
            num_steps >= max_steps, RESULTS.max_steps_reached, RESULTS.stagnation
        ),
        RESULTS.nonfinite_value,
    )
    return RESULTS.where(
        result == RESULTS.successful,
        RESULTS.where(converged, RESULTS.successful, unconverged),
        result,
    )


def krylov_solve(
    loop: Callable,
    name: str,
    operator,
    b,
    *,
    rtol,
    atol,
    max_steps: int | None,
    x0,
    preconditioner,
    throw: bool,
    symmetric: bool,
    default_max_steps: Callable[[int], int] = lambda n: 10 * n,
) -> Solution:
    op, b_flat = flat_operator(operator, b)
    valid = check_nonnegative(rtol, "rtol") & check_nonnegative(atol, "atol")
    max_steps = check_positive_int(
        default_max_steps(op.size) if max_steps is None else max_steps, "max_steps"
    )
    if x0 is None:
        x0_flat = jnp.zeros_like(b_flat)
    else:
        x0 = as_float_array(x0, "x0")
        if x0.shape != op.shape:
            raise ValueError(f"`x0` must have `b`'s shape {op.shape}, got {x0.shape}")
        x0_flat = x0.reshape(-1).astype(op.dtype)
    precond = flat_preconditioner(preconditioner, op)
    rtol = jnp.asarray(rtol, op.dtype)
    atol = jnp.asarray(atol, op.dtype)
    # NaN/Inf in a matrix-free operator shows up in the first residual b - A x0
    # (NaN * 0 is NaN); a dense matrix is checked directly.
    valid_inputs = valid & all_finite(x0_flat)
    if op.matrix is not None:
        valid_inputs = valid_inputs & all_finite(op.matrix)

    def run(matvec, rhs, guess, m):
        tol = jnp.maximum(rtol * norm(rhs), atol)

        # A loop stops when its *recursively updated* residual meets the
        # tolerance; rounding can leave the true residual b - A x above it. Then
        # the loop is restarted from x with the true residual (a few times at
        # most; if that does not help, the tolerance is below attainable
        # accuracy). The first pass starts from residual = inf.
        def attempt(state):
            x, steps, _, _ = state
            x, result, k = loop(matvec, rhs, x, m, tol, max_steps - steps, valid_inputs)
            return x, steps + k, result, norm(rhs - matvec(x))

        def again(state):
            _, steps, result, residual = state
            ok = result == RESULTS.successful
            return ok & ~(residual <= tol) & (steps < max_steps)

        inf = jnp.asarray(jnp.inf, rhs.dtype)
        state = (guess, jnp.asarray(0, jnp.int32), RESULTS.successful, inf)
        state, _ = iterate(attempt, again, state, 1 + _MAX_RESTARTS)
        x, num_steps, result, residual = state
        result = finish_result(result, residual <= tol, residual, num_steps, max_steps)
        if throw:
            # Raised inside the solve, so that the solves of derivatives (the
            # tangent and the transposed systems) are checked too, not only x.
            x = error_if_failed(x, result, name)
        return x, (result, num_steps, residual)

    def solve(matvec, rhs):
        return run(matvec, rhs, x0_flat, precond)

    def transpose_solve(vecmat, rhs):
        # The adjoint system A^T w = g is solved from zero with M^T as preconditioner.
        precond_t = jax.linear_transpose(precond, rhs)
        return run(vecmat, rhs, jnp.zeros_like(rhs), lambda v: precond_t(v)[0])

    x, (result, num_steps, residual) = lax.custom_linear_solve(
        op.matvec,
        b_flat,
        solve,
        None if symmetric else transpose_solve,
        symmetric=symmetric,
        has_aux=True,
    )
    return Solution(
        value=op.unflatten(x), result=result, num_steps=num_steps, residual=residual
    )
