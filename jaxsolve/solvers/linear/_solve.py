"""One entry point to every linear solver, by name: what the implicit layer and
other solvers call for their inner linear systems."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from ..._checks import check_nonnegative
from ..._compiled import compiled_once
from ..._solution import RESULTS, Solution, error_if_failed, finalize
from ._bicgstab import bicgstab
from ._cg import cg
from ._dense import dense_solve
from ._gmres import gmres
from ._krylov import checked_inside, checked_outside, norm, operator_checks
from ._operator import check_transposable, flat_operator

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


def _check_ridge(ridge, operator, b):
    """Refuse a non-scalar or concrete negative ``ridge`` (and an operator that
    is not square, before the ridge would broadcast it into one); return the
    traced check ``ridge >= 0``."""
    flat_operator(operator, b)
    if not isinstance(ridge, (int, float)) and jnp.ndim(ridge) != 0:
        raise ValueError(f"`ridge` must be a scalar, got shape {jnp.shape(ridge)}")
    return check_nonnegative(ridge, "ridge")


def _custom_method(method: Callable, operator, b, throw: bool) -> Solution:
    """A user's ``solve(matvec, b) -> x`` (JAXopt's convention: jaxopt.linear_solve
    functions work too), made differentiable by ``custom_linear_solve``; the same
    function then solves the transposed systems of reverse mode."""
    op, b_flat = flat_operator(operator, b)
    if op.matrix is None:
        check_transposable(op, b_flat)
    input_code, check_products = operator_checks(op, symmetric=False)
    name = getattr(method, "__name__", "linear_solve")

    def solve(matvec, rhs):
        x = method(matvec, rhs)
        residual = norm(rhs - matvec(x))
        result = RESULTS.where(
            input_code == RESULTS.successful,
            RESULTS.where(
                jnp.isfinite(residual), RESULTS.successful, RESULTS.nonfinite_value
            ),
            input_code,
        )
        return checked_inside(x, (result, residual), result, name, throw)

    x, ((result, residual), last) = lax.custom_linear_solve(
        op.matvec, b_flat, solve, solve, has_aux=True
    )
    solution = Solution(
        value=op.unflatten(x),
        result=result,
        num_steps=jnp.asarray(0, jnp.int32),
        residual=residual,
        # The method's own products are unknown: the residual and the checks.
        stats={"matvecs": jnp.asarray(1 + check_products, jnp.int32)},
    )
    return checked_outside(solution, op.unflatten(last), throw, name)


@compiled_once
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
        ridge: a non-negative scalar shift ``ridge I`` added to ``A``, which
            regularises singular or nearly singular systems (as in Tikhonov
            regularisation). A negative one is refused: ``ValueError`` for a
            Python number; for an array (an eager call is compiled, see
            ``jaxsolve._compiled``) or a traced value, ``RESULTS.invalid_input``
            with ``throw=False`` or a runtime error.
        throw: raise a runtime error if the solve fails.
        **options: passed to the method (``rtol``, ``atol``, ``max_steps``,
            ``preconditioner``, ``restart``, ...). ``"dense"`` is exact and ignores
            the iterative options ``rtol``, ``atol``, ``max_steps``, ``x0`` and
            ``preconditioner``, so that callers can switch methods freely.

    Returns:
        :class:`jaxsolve.Solution` with ``.value = x``.
    """
    ridge_ok = True
    if not (isinstance(ridge, (int, float)) and ridge == 0):
        ridge_ok = _check_ridge(ridge, operator, b)
        if isinstance(ridge, jax.core.Tracer) and throw:
            # Raised before the solve uses the ridge: a negative one is named
            # as such, not as the failure it would cause.
            ridge = error_if_failed(
                ridge,
                RESULTS.where(ridge_ok, RESULTS.successful, RESULTS.invalid_input),
                "linear_solve",
                {"invalid_input": "`ridge` must be >= 0"},
            )
        operator = _with_ridge(operator, ridge)
    if callable(method):
        if options:
            raise ValueError(
                f"options {sorted(options)} apply to named methods only; bind them "
                "into your `method` function instead"
            )
        solution = _custom_method(method, operator, b, throw)
    elif method not in LINEAR_METHODS:
        raise ValueError(
            f"`method` must be one of {sorted(LINEAR_METHODS)} or a function "
            f"solve(matvec, b) -> x, got {method!r}"
        )
    else:
        if method == "dense":
            options = {k: v for k, v in options.items() if k not in _ITERATIVE_ONLY}
        solution = LINEAR_METHODS[method](operator, b, throw=throw, **options)
    if not isinstance(ridge, jax.core.Tracer) or throw:
        return solution
    # A traced negative ridge with throw=False: the code says so, and the
    # derivatives are NaN.
    result = RESULTS.where(ridge_ok, solution.result, RESULTS.invalid_input)
    return finalize(eqx.tree_at(lambda s: s.result, solution, result), False, "")
