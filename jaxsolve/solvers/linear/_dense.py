"""Dense LU solve, for small systems (and as a reference for the Krylov solvers)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ..._checks import all_finite
from ..._compiled import compiled_once
from ..._solution import RESULTS, Solution
from ._krylov import checked_inside, checked_outside, norm, operator_checks
from ._operator import check_transposable, flat_operator

__all__ = ["dense_solve"]


def _materialise(matvec, n, dtype):
    # Column j of A is A e_j; vmap over the identity gives the rows A e_j, i.e. A^T.
    return jax.vmap(matvec)(jnp.eye(n, dtype=dtype)).T


_NAME = "dense_solve"
_MESSAGES = {
    "breakdown": (
        "the matrix is singular to working precision (a pivot of its LU "
        "factorisation is below n eps max|A_ij|)"
    ),
}


@compiled_once
def dense_solve(operator, b, *, throw: bool = True) -> Solution:
    r"""Solve ``A x = b`` by LU factorisation with partial pivoting, ``O(n^3)``.

    A matrix-free ``operator`` is materialised column by column (``n`` products),
    so use this only for small ``n`` (a few thousand at most).

    Args:
        operator: ``A``, a square ``(n, n)`` array or a function ``x -> A x``.
        b: the right-hand side.
        throw: raise a runtime error if ``A`` is singular or an input is not finite.

    Returns:
        :class:`jaxsolve.Solution` with ``.value = x``, ``.num_steps = 1`` and the
        residual ``||b - A x||_2``; a singular ``A`` (a pivot below ``n eps
        max|A_ij|``) gives ``RESULTS.breakdown``, an operator with ``A 0 != 0``
        ``RESULTS.nonlinear_operator``. float16/bfloat16 are refused.

    Differentiable (any order, forward and reverse) with respect to ``b`` and to
    the operator's closed-over arrays through ``jax.lax.custom_linear_solve``.
    """
    op, b_flat = flat_operator(operator, b)
    if jnp.finfo(op.dtype).bits < 32:
        raise ValueError(
            f"dense_solve needs float32 or float64 (there is no {op.dtype} LU "
            "factorisation): convert `operator` and `b`"
        )
    if op.matrix is None:
        check_transposable(op, b_flat)
    input_code, check_products = operator_checks(op, symmetric=False)

    def solve(matvec, rhs):
        matrix = _materialise(matvec, op.size, op.dtype)
        lu, pivots = jax.scipy.linalg.lu_factor(matrix)
        x = jax.scipy.linalg.lu_solve((lu, pivots), rhs)
        residual = norm(rhs - matvec(x))
        # LU with partial pivoting is backward stable, so a tiny pivot is what
        # singularity looks like in floating point (a solve "succeeding" with
        # |x| ~ 1e16 otherwise).
        scale = jnp.max(jnp.abs(matrix))
        pivot = jnp.min(jnp.abs(jnp.diagonal(lu)))
        singular = ~(pivot > op.size * jnp.finfo(op.dtype).eps * scale)
        result = RESULTS.where(
            all_finite(rhs) & (input_code == RESULTS.successful),
            RESULTS.where(
                singular | ~all_finite(x), RESULTS.breakdown, RESULTS.successful
            ),
            RESULTS.where(
                input_code == RESULTS.successful, RESULTS.nonfinite_input, input_code
            ),
        )
        aux = (result, residual)
        return checked_inside(x, aux, result, _NAME, throw, _MESSAGES)

    x, ((result, residual), last) = lax.custom_linear_solve(
        op.matvec, b_flat, solve, solve, has_aux=True
    )
    solution = Solution(
        value=op.unflatten(x),
        result=result,
        num_steps=jnp.asarray(1, jnp.int32),
        residual=residual,
        # n products materialise A, one gives the residual, and the operator's
        # checks.
        stats={"matvecs": jnp.asarray(op.size + 1 + check_products, jnp.int32)},
    )
    return checked_outside(solution, op.unflatten(last), throw, _NAME, _MESSAGES)
