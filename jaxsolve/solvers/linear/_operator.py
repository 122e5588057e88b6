"""Operators for the linear solvers: a dense matrix or a matrix-free function.

A linear operator ``A`` is given either as a square 2-D array (then ``b`` is a vector)
or as a function ``matvec(x) -> A x`` mapping arrays of ``b``'s shape to arrays of the
same shape (a stencil on a 2-D grid, say). Arrays closed over by ``matvec`` are the
operator's parameters: they receive gradients through ``jax.lax.custom_linear_solve``.

Internally every solver works on flat vectors; :func:`flat_operator` does the
reshaping and the trace-time shape checks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array

from ..._checks import as_float_array

__all__ = [
    "FlatOperator",
    "check_transposable",
    "flat_operator",
    "flat_preconditioner",
]


class FlatOperator:
    """``A`` as a function on flat vectors, with ``b``'s shape and dtype recorded."""

    def __init__(self, matvec: Callable, shape: tuple, dtype, matrix: Array | None):
        self.matvec = matvec
        self.shape = shape
        self.dtype = dtype
        self.size = math.prod(shape)
        self.matrix = matrix

    def unflatten(self, x: Array) -> Array:
        return x.reshape(self.shape)


def _trace_output(fn, shape, dtype, name: str):
    """The output shape and dtype of ``fn`` on an array of ``shape`` and ``dtype``;
    a ``ValueError`` naming the argument if it cannot be applied."""
    try:
        return jax.eval_shape(fn, jax.ShapeDtypeStruct(shape, dtype))
    except Exception as e:  # report which argument failed to trace
        raise ValueError(
            f"`{name}` could not be applied to an array of `b`'s shape {shape} and "
            f"dtype {dtype}: {type(e).__name__}: {e}"
        ) from e


def _check_output(out, shape, dtype, name: str):
    """``name`` must map arrays of ``shape``/``dtype`` to real floating arrays of
    the same shape, at least as precise as ``dtype`` (an integer, boolean or complex
    output, or a lower precision, would silently change the answer)."""
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != shape:
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"`{name}` must map arrays of `b`'s shape {shape} to the same shape "
            f"(a square operator), but it returned {got}"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(
            f"`{name}` must return a real floating array (`b` has dtype {dtype}), "
            f"but it returned dtype {out.dtype}"
        )
    if jnp.finfo(out.dtype).bits < jnp.finfo(dtype).bits:
        raise ValueError(
            f"`{name}` returned dtype {out.dtype}, less precise than `b`'s {dtype}: "
            "give `b` that dtype, or make the operator keep its input's dtype"
        )


def flat_operator(operator, b, *, name: str = "operator") -> tuple[FlatOperator, Array]:
    """Check ``operator`` against ``b`` and return it in flat form with flat ``b``.

    Raises ``ValueError`` at trace time for non-square matrices, shape mismatches,
    an empty ``b``, or a ``matvec`` that changes the shape of its argument or
    returns a non-floating (or less precise) dtype.
    """
    b = as_float_array(b, "b")
    if b.size == 0:
        raise ValueError(f"`b` must not be empty, got shape {b.shape}")
    if callable(operator) and not hasattr(operator, "shape"):
        out = _trace_output(operator, b.shape, b.dtype, name)
        _check_output(out, b.shape, b.dtype, name)
        dtype = jnp.result_type(b.dtype, out.dtype)
        b = b.astype(dtype)
        shape = b.shape

        def matvec(x):
            return jnp.reshape(operator(x.reshape(shape)), -1).astype(dtype)

        return FlatOperator(matvec, shape, dtype, None), b.reshape(-1)

    matrix = as_float_array(operator, name)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(
            f"`{name}` must be a square matrix (n, n) or a function x -> A x, "
            f"got an array of shape {matrix.shape}"
        )
    if b.ndim != 1 or b.shape[0] != matrix.shape[0]:
        raise ValueError(
            f"`b` must have shape ({matrix.shape[0]},) to match `{name}` of shape "
            f"{matrix.shape}, got {b.shape}"
        )
    dtype = jnp.result_type(matrix.dtype, b.dtype)
    matrix, b = matrix.astype(dtype), b.astype(dtype)
    return FlatOperator(lambda x: matrix @ x, b.shape, dtype, matrix), b


def check_transposable(op: FlatOperator, b_flat: Array, name: str = "operator"):
    """A non-symmetric solve is differentiated (and, inside
    ``lax.custom_linear_solve``, set up) with ``A^T``, which JAX forms by
    transposing ``matvec``: that fails for a non-linear function (``x ** 2``,
    ``abs``, ...) or an opaque one (a host callback). Refused at trace time with
    a ``ValueError`` naming the argument, not JAX's internal error."""

    def transposed(v):
        return jax.linear_transpose(op.matvec, v)(v)

    try:  # traced only (eval_shape): no product is computed
        jax.eval_shape(transposed, jax.ShapeDtypeStruct(b_flat.shape, op.dtype))
    except Exception as e:
        raise ValueError(
            f"`{name}` must be a linear function x -> A x that JAX can transpose "
            f"(this solver needs A^T): {type(e).__name__}: {e}"
        ) from e


def flat_preconditioner(preconditioner, op: FlatOperator) -> Callable | None:
    """``M ~ A^{-1}`` in flat form: ``None`` (identity: the loops then skip the
    product and the extra inner product), a matrix, or a function."""
    if preconditioner is None:
        return None
    if callable(preconditioner) and not hasattr(preconditioner, "shape"):
        out = _trace_output(preconditioner, op.shape, op.dtype, "preconditioner")
        _check_output(out, op.shape, op.dtype, "preconditioner")
        return lambda x: jnp.reshape(preconditioner(x.reshape(op.shape)), -1).astype(
            op.dtype
        )
    m = as_float_array(preconditioner, "preconditioner")
    if m.shape != (op.size, op.size):
        raise ValueError(
            f"`preconditioner` must have shape ({op.size}, {op.size}), got {m.shape}"
        )
    m = m.astype(op.dtype)
    return lambda x: m @ x
