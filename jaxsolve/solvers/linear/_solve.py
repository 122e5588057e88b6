"""One entry point to every linear solver, by name: what the implicit layer and
other solvers call for their inner linear systems."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from jax import lax

from ..._solution import RESULTS, Solution, error_if_failed
from ._bicgstab import bicgstab
from ._cg import cg
from ._dense import dense_solve
from ._gmres import gmres
from ._krylov import norm
from ._operator import flat_operator

__all__ = ["linear_solve", "LINEAR_METHODS"]

_ITERATIVE_ONLY = ("rtol", "atol", "max_steps", "x0", "preconditioner")

LINEAR_METHODS: dict[str, Callable] = {
    "cg": cg,
    "gmres": gmres,
    "bicgstab": bicgstab,
    "dense": dense_solve,
}


def _with_ridge(operator, ridge):
    if callable(operator) and not hasattr(operator, "shape"):
        return lambda x: operator(x) + ridge * x
    matrix = jnp.asarray(operator)
    return matrix + ridge * jnp.eye(matrix.shape[0], dtype=matrix.dtype)


def _custom_method(method: Callable, operator, b, throw: bool) -> Solution:
    """A user's ``solve(matvec, b) -> x`` (JAXopt's convention: jaxopt.linear_solve
    functions work too), made differentiable by ``custom_linear_solve``; the same
    function then solves the transposed systems of reverse mode."""
    op, b_flat = flat_operator(operator, b)

    name = getattr(method, "__name__", "linear_solve")

    def solve(matvec, rhs):
        x = method(matvec, rhs)
        residual = norm(rhs - matvec(x))
        result = RESULTS.where(
            jnp.isfinite(residual), RESULTS.successful, RESULTS.nonfinite_value
        )
        if throw:
            x = error_if_failed(x, result, name)
        return x, (result, residual)

    x, (result, residual) = lax.custom_linear_solve(
        op.matvec, b_flat, solve, solve, has_aux=True
    )
    return Solution(
        value=op.unflatten(x),
        result=result,
        num_steps=jnp.asarray(0, jnp.int32),
        residual=residual,
    )


def linear_solve(
    operator,
    b,
    *,
    method: str | Callable = "gmres",
    ridge=0.0,
    throw: bool = True,
    **options,
) -> Solution:
    r"""Solve ``(A + ridge I) x = b`` with the named method; differentiable.

    Args:
        operator: ``A``, a square ``(n, n)`` array or a function ``x -> A x``.
        b: the right-hand side.
        method: ``"cg"`` (symmetric positive definite ``A``), ``"gmres"`` (any
            non-singular ``A``, the default), ``"bicgstab"``, ``"dense"`` (LU, small
            systems), or a function ``solve(matvec, b) -> x``.
        ridge: a non-negative shift ``ridge I`` added to ``A``, which regularises
            singular or nearly singular systems (as in Tikhonov regularisation).
        throw: raise a runtime error if the solve fails.
        **options: passed to the method (``rtol``, ``atol``, ``max_steps``,
            ``preconditioner``, ``restart``, ...). ``"dense"`` is exact and ignores
            the iterative options ``rtol``, ``atol``, ``max_steps``, ``x0`` and
            ``preconditioner``, so that callers can switch methods freely.

    Returns:
        :class:`jaxsolve.Solution` with ``.value = x``.
    """
    if isinstance(ridge, (int, float)) and ridge < 0:
        raise ValueError(f"`ridge` must be >= 0, got {ridge}")
    if not (isinstance(ridge, (int, float)) and ridge == 0):
        operator = _with_ridge(operator, ridge)
    if callable(method):
        if options:
            raise ValueError(
                f"options {sorted(options)} apply to named methods only; bind them "
                "into your `method` function instead"
            )
        return _custom_method(method, operator, b, throw)
    if method not in LINEAR_METHODS:
        raise ValueError(
            f"`method` must be one of {sorted(LINEAR_METHODS)} or a function "
            f"solve(matvec, b) -> x, got {method!r}"
        )
    if method == "dense":
        options = {k: v for k, v in options.items() if k not in _ITERATIVE_ONLY}
    return LINEAR_METHODS[method](operator, b, throw=throw, **options)
