"""What the Krylov solvers share: argument checks, the start and finish of a solve,
and differentiation through ``jax.lax.custom_linear_solve``.

Each solver supplies only a *loop*: ``loop(matvec, b, x0, r0, precond, tol,
max_steps, input_code) -> (x, result, num_steps)`` on flat vectors (``r0 = b - A
x0``; ``precond`` is ``None`` or a function). A loop may return a fourth item, a
dict of extra outputs: its ``"matvecs"`` entry counts the loop's products with
``A`` (default: one a step), every other entry is passed through, undifferentiated,
as the ``Solution``'s ``aux`` (a recycled Krylov subspace, say). Every solution
reports ``stats["matvecs"]``, the operator products of the whole solve (the
loop's plus the residuals ``b - A x`` computed here). :func:`krylov_solve` wraps it so
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


def start_result(input_code: RESULTS, r0: Array) -> RESULTS:
    """The code a solve starts with: ``input_code`` (what the checks of the inputs
    found), else ``nonfinite_input`` if the first residual ``b - A x0`` is not
    finite (this is how NaN/Inf in a matrix-free operator is caught)."""
    finite = jnp.all(jnp.isfinite(r0))
    return RESULTS.where(
        input_code == RESULTS.successful,
        RESULTS.where(finite, RESULTS.successful, RESULTS.nonfinite_input),
        input_code,
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
    transpose_loop: Callable | None = None,
) -> Solution:
    """``transpose_loop``: the loop for the transposed systems of reverse mode
    (default ``loop``); its extra outputs must have the same structure."""
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
    finite = all_finite(x0_flat)
    if op.matrix is not None:
        finite = finite & all_finite(op.matrix)
    input_code = RESULTS.where(
        valid,
        RESULTS.where(finite, RESULTS.successful, RESULTS.nonfinite_input),
        RESULTS.invalid_input,
    )

    def run(matvec, rhs, guess, m, zero_guess, loop=loop):
        tol = jnp.maximum(rtol * norm(rhs), atol)

        def call_loop(x, r, budget):
            out = loop(matvec, rhs, x, r, m, tol, budget, input_code)
            extras = dict(out[3]) if len(out) > 3 else {}
            return out[:3], extras.pop("matvecs", out[2]), extras

        # The first residual b - A x0 also catches NaN/Inf in a matrix-free
        # operator (NaN * 0 is NaN). Transposed solves start from zero and skip
        # that product: their operator was already checked by the forward solve.
        r0 = rhs if zero_guess else rhs - matvec(guess)

        # A loop stops when its *recursively updated* residual meets the
        # tolerance; rounding can leave the true residual b - A x above it. Then
        # the loop is restarted from x with the true residual (a few times at
        # most; if that does not help, the tolerance is below attainable
        # accuracy). The loop is traced once: the first pass is the first step.
        def attempt(state):
            x, r, steps, _, _, matvecs, _ = state
            (x, result, k), products, extras = call_loop(x, r, max_steps - steps)
            matvecs = matvecs + products + 1  # + the true residual below
            return (
                x,
                rhs - matvec(x),
                steps + k,
                result,
                jnp.asarray(False),
                matvecs,
                extras,
            )

        def again(state):
            _, r, steps, result, first, _, _ = state
            ok = result == RESULTS.successful
            return first | (ok & ~(norm(r) <= tol) & (steps < max_steps))

        steps = jnp.asarray(0, jnp.int32)
        # The extra outputs' initial value: zeros of the loop's output structure.
        shapes = jax.eval_shape(lambda x, r: call_loop(x, r, max_steps)[2], guess, r0)
        extras = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        matvecs = jnp.asarray(0 if zero_guess else 1, jnp.int32)
        state = (guess, r0, steps, input_code, jnp.asarray(True), matvecs, extras)
        state, _ = iterate(attempt, again, state, 2 + _MAX_RESTARTS)
        x, r, num_steps, result, _, matvecs, extras = state
        residual = norm(r)
        converged = jnp.isfinite(residual) & (residual <= tol)
        result = finish_result(result, converged, residual, num_steps, max_steps)
        if throw:
            # Raised inside the solve, so that the solves of derivatives (the
            # tangent and the transposed systems) are checked too, not only x.
            x = error_if_failed(x, result, name)
        return x, (result, num_steps, residual, matvecs, extras)

    def solve(matvec, rhs):
        return run(matvec, rhs, x0_flat, precond, zero_guess=False)

    def transpose_solve(vecmat, rhs):
        # The adjoint system A^T w = g is solved from zero with M^T as preconditioner.
        if precond is None:
            precond_t = None
        else:
            transposed = jax.linear_transpose(precond, rhs)
            precond_t = lambda v: transposed(v)[0]  # noqa: E731
        return run(
            vecmat,
            rhs,
            jnp.zeros_like(rhs),
            precond_t,
            zero_guess=True,
            loop=loop if transpose_loop is None else transpose_loop,
        )

    x, (result, num_steps, residual, matvecs, extras) = lax.custom_linear_solve(
        op.matvec,
        b_flat,
        solve,
        None if symmetric else transpose_solve,
        symmetric=symmetric,
        has_aux=True,
    )
    return Solution(
        value=op.unflatten(x),
        result=result,
        num_steps=num_steps,
        residual=residual,
        stats={"matvecs": matvecs},
        aux=extras or None,
    )
