"""Dense LU solve, for small systems (and as a reference for the Krylov solvers)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ..._checks import all_finite
from ..._solution import RESULTS, Solution, error_if_failed
from ._krylov import norm
from ._operator import flat_operator

__all__ = ["dense_solve"]


def _materialise(matvec, n, dtype):
    # Column j of A is A e_j; vmap over the identity gives the rows A e_j, i.e. A^T.
    return jax.vmap(matvec)(jnp.eye(n, dtype=dtype)).T


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
        residual ``||b - A x||_2``; a singular ``A`` gives ``RESULTS.breakdown``.

    Differentiable (any order, forward and reverse) with respect to ``b`` and to
    the operator's closed-over arrays through ``jax.lax.custom_linear_solve``.
    """
    op, b_flat = flat_operator(operator, b)
    input_ok = all_finite(op.matrix) if op.matrix is not None else jnp.asarray(True)

    def solve(matvec, rhs):
        matrix = _materialise(matvec, op.size, op.dtype)
        x = jnp.linalg.solve(matrix, rhs)
        residual = norm(rhs - matvec(x))
        ok = all_finite(rhs, matvec(jnp.zeros_like(rhs))) & input_ok
        result = RESULTS.where(
            ok,
            RESULTS.where(
                jnp.all(jnp.isfinite(x)), RESULTS.successful, RESULTS.breakdown
            ),
            RESULTS.nonfinite_input,
        )
        if throw:  # inside the solve: derivative solves are checked too
            x = error_if_failed(x, result, "dense_solve")
        return x, (result, residual)

    x, (result, residual) = lax.custom_linear_solve(
        op.matvec, b_flat, solve, solve, has_aux=True
    )
    return Solution(
        value=op.unflatten(x),
        result=result,
        num_steps=jnp.asarray(1, jnp.int32),
        residual=residual,
        # n products materialise A, one checks it is finite, one gives the residual.
        stats={"matvecs": jnp.asarray(op.size + 2, jnp.int32)},
    )
