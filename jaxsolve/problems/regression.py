"""Synthetic classification data and logistic-regression objectives."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array


def make_classification(
    key, n_samples: int, n_features: int, *, noise: float = 1.0, dtype=None
) -> tuple[Array, Array]:
    """Features ``X ~ N(0, I)`` (``(n_samples, n_features)``) and labels in {0, 1}
    drawn from a logistic model with a random true weight vector."""
    dtype = dtype or jnp.result_type(float)
    k1, k2, k3 = jax.random.split(key, 3)
    X = jax.random.normal(k1, (n_samples, n_features), dtype)
    w_true = jax.random.normal(k2, (n_features,), dtype) / jnp.sqrt(n_features)
    logits = 3 * X @ w_true + noise * jax.random.logistic(k3, (n_samples,), dtype)
    return X, (logits > 0).astype(dtype)


def logistic_loss(w: Array, X: Array, y: Array) -> Array:
    """Mean binary cross-entropy of the linear model ``X w`` (labels in {0, 1})."""
    z = X @ w
    return jnp.mean(jnp.logaddexp(0, z) - y * z)


def ridge_logistic_objective(w: Array, lam: Array, X: Array, y: Array) -> Array:
    """``logistic_loss(w) + (lam / 2) ||w||^2``: strongly convex for ``lam > 0``."""
    return logistic_loss(w, X, y) + 0.5 * lam * jnp.vdot(w, w)
