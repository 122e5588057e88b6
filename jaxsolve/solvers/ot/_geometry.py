"""Cost matrices: between point clouds, and between the pixels of a grid."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ..._checks import as_float_array, check_positive_int

__all__ = [
    "pairwise_cost",
    "sqeuclidean_cost",
    "l1_cost",
    "grid_points",
    "grid_cost",
]

_METRICS = ("sqeuclidean", "l1", "euclidean")


def _points(x, name):
    x = as_float_array(x, name)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"`{name}` must be points of shape (n, d), got {x.shape}")
    return x


def pairwise_cost(x, y=None, metric: str = "sqeuclidean") -> Array:
    r"""The cost matrix ``C_ij = c(x_i, y_j)`` between two point clouds.

    Args:
        x: points ``(n, d)`` (or ``(n,)`` for ``d = 1``).
        y: points ``(m, d)``; default ``x``.
        metric: ``"sqeuclidean"`` (``||x - y||_2^2``, W2), ``"l1"``
            (``||x - y||_1``) or ``"euclidean"`` (``||x - y||_2``, W1).

    Returns:
        ``(n, m)`` array, differentiable with respect to the points (the
        Euclidean norm has a zero subgradient where two points coincide).
        Memory ``O(n m d)``: the differences are formed explicitly, which is
        exact (no ``|x|^2 + |y|^2 - 2 x.y`` cancellation) for small ``d``.
    """
    if metric not in _METRICS:
        raise ValueError(f"`metric` must be one of {_METRICS}, got {metric!r}")
    x = _points(x, "x")
    y = x if y is None else _points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"`x` and `y` must have the same dimension, got {x.shape[1]} and "
            f"{y.shape[1]}"
        )
    diff = x[:, None, :] - y[None, :, :]
    if metric == "l1":
        return jnp.sum(jnp.abs(diff), axis=-1)
    sq = jnp.sum(diff * diff, axis=-1)
    if metric == "sqeuclidean":
        return sq
    # sqrt has an infinite derivative at 0: differentiate a safe argument.
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1)), 0)


def sqeuclidean_cost(x, y=None) -> Array:
    """``C_ij = ||x_i - y_j||_2^2`` (see :func:`pairwise_cost`)."""
    return pairwise_cost(x, y, "sqeuclidean")


def l1_cost(x, y=None) -> Array:
    """``C_ij = ||x_i - y_j||_1`` (see :func:`pairwise_cost`)."""
    return pairwise_cost(x, y, "l1")


def grid_points(shape, dtype=None) -> Array:
    """The centres of the pixels of a ``shape = (h, w)`` grid (an int gives a
    square grid) in the unit square, in row-major (C) order: ``(h w, 2)``, pixel
    ``(i, j)`` at ``((i + 1/2) / h, (j + 1/2) / w)``. So an image ``img`` of that
    shape is the density ``img.reshape(-1)`` on these points."""
    if isinstance(shape, (int, np.integer)):
        shape = (shape, shape)
    if not isinstance(shape, (tuple, list)) or len(shape) != 2:
        raise ValueError(
            f"`shape` must be an int or a pair of ints (h, w), got {shape!r}"
        )
    h, w = (check_positive_int(s, "shape") for s in shape)
    dtype = dtype or jnp.result_type(float)
    rows = (jnp.arange(h, dtype=dtype) + 0.5) / h
    cols = (jnp.arange(w, dtype=dtype) + 0.5) / w
    ii, jj = jnp.meshgrid(rows, cols, indexing="ij")
    return jnp.stack([ii.reshape(-1), jj.reshape(-1)], axis=1)


def grid_cost(shape, metric: str = "sqeuclidean", dtype=None) -> Array:
    """The ``(h w, h w)`` cost matrix between the pixels of an ``(h, w)`` grid
    (see :func:`grid_points`): for transporting one image (density on the grid,
    flattened in row-major order) onto another, as in the MNIST experiments of
    Tang et al. (2024)."""
    points = grid_points(shape, dtype)
    return pairwise_cost(points, points, metric)
