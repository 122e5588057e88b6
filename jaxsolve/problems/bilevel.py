r"""Bilevel tasks: the LV-HBA toy with its known solution, data hyper-cleaning on
scikit-learn's digits, and l2-strength hyperparameter optimisation of logistic
regression.

A task is ``min_x F(x, y*(x))``, ``y*(x) in argmin_y {f(x, y) : g(x, y) <= 0}``
given as plain functions ``upper(x, y, *data)``, ``lower(x, y, *data)`` and
optionally ``constraint(x, y, *data)`` (feasible where ``<= 0``) and a projection
``project(x, y) -> (x, y)`` onto a simple set. Data only: no solver is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

__all__ = [
    "BilevelTask",
    "lv_hba_toy",
    "hyper_cleaning",
    "logistic_l2_tuning",
    "multinomial_loss",
    "accuracy",
]


class BilevelTask(NamedTuple):
    """A ready-made bilevel problem.

    Attributes:
        upper, lower: ``F(x, y, *data)`` and ``f(x, y, *data)`` (scalars).
        constraint: ``g(x, y, *data)`` (an array, feasible where ``<= 0``) or ``None``.
        project: ``(x, y) -> (x, y)``, the projection onto a simple set containing
            the feasible points, or ``None``.
        x0, y0: a starting point (pytrees).
        data: the ``*data`` tuple the functions take.
        extra: task-specific arrays and functions (known solution, test set, ...).
    """

    upper: Callable
    lower: Callable
    constraint: Callable | None
    project: Callable | None
    x0: Any
    y0: Any
    data: tuple
    extra: dict


# --- the LV-HBA toy ---------------------------------------------------------------


def lv_hba_toy(n: int = 100, *, key=None, dtype=None) -> BilevelTask:
    r"""The toy of Yao, Yu, Zeng & Zhang (ICLR 2024), with ``x in R^n`` and
    ``y = (y1, y2)``, ``y1, y2 in R^n``:

        F(x, y) = ||x - y2||^2 / 2 + ||y1 - 1||^2 / 2
        f(x, y) = ||y1||^2 / 2 - x.y1 + 1.y2
        s.t.      1.x + 1.y1 + 1.y2 = 0   (as two inequalities, g = (s, -s))

    Known solution (every entry): ``x* = -0.3``, ``y1* = 0.7``, ``y2* = -0.4``
    (lower level: ``y1 = x + 1``, ``sum(y2) = -2 sum(x) - n``; then the upper
    objective per entry ``(3a + 1)^2/2 + a^2/2`` is least at ``a = -0.3``).
    ``project`` is the projection onto the coupling hyperplane (the set C of the
    paper's update). The start is the official one, every entry 10 (infeasible;
    ``project`` makes it feasible), or with ``key`` drawn from ``N(0, 1)``.
    ``constraint`` returns the coupling ``h`` itself, shape ``(1,)``: an equality
    (``lv_hba(..., equality=True)``: a signed multiplier, as in the paper's code).
    """
    dtype = dtype or jnp.result_type(float)

    def upper(x, y):
        y1, y2 = y
        return 0.5 * jnp.sum((x - y2) ** 2) + 0.5 * jnp.sum((y1 - 1) ** 2)

    def lower(x, y):
        y1, y2 = y
        return 0.5 * jnp.sum(y1**2) - jnp.vdot(x, y1) + jnp.sum(y2)

    def constraint(x, y):
        return (jnp.sum(x) + jnp.sum(y[0]) + jnp.sum(y[1]))[None]

    def project(x, y):
        # Euclidean projection onto {1.x + 1.y1 + 1.y2 = 0}.
        y1, y2 = y
        shift = (jnp.sum(x) + jnp.sum(y1) + jnp.sum(y2)) / (x.size + y1.size + y2.size)
        return x - shift, (y1 - shift, y2 - shift)

    if key is None:
        x0 = jnp.full((n,), 10.0, dtype)
        y0 = (jnp.full((n,), 10.0, dtype), jnp.full((n,), 10.0, dtype))
    else:
        kx, k1, k2 = jax.random.split(key, 3)
        x0 = jax.random.normal(kx, (n,), dtype)
        y0 = (jax.random.normal(k1, (n,), dtype), jax.random.normal(k2, (n,), dtype))
    solution = (
        jnp.full((n,), -0.3, dtype),
        (jnp.full((n,), 0.7, dtype), jnp.full((n,), -0.4, dtype)),
    )

    def relative_error(x, y):
        num = jnp.sqrt(
            jnp.sum((x - solution[0]) ** 2)
            + jnp.sum((y[0] - solution[1][0]) ** 2)
            + jnp.sum((y[1] - solution[1][1]) ** 2)
        )
        return num / jnp.sqrt(n * (0.3**2 + 0.7**2 + 0.4**2))

    return BilevelTask(
        upper,
        lower,
        constraint,
        project,
        x0,
        y0,
        (),
        {"solution": solution, "relative_error": relative_error},
    )


# --- classification helpers -------------------------------------------------------


def multinomial_loss(params, X: Array, labels: Array) -> Array:
    """Per-sample cross-entropy of the linear model ``X W + b`` (``params = {"W":
    (d, c), "b": (c,)}``, integer ``labels``): an ``(n,)`` array."""
    logits = X @ params["W"] + params["b"]
    return (
        jax.nn.logsumexp(logits, axis=-1)
        - jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    )


def accuracy(params, X: Array, labels: Array) -> Array:
    """Fraction of ``argmax(X W + b) == labels``."""
    return jnp.mean(jnp.argmax(X @ params["W"] + params["b"], axis=-1) == labels)


# --- data hyper-cleaning ----------------------------------------------------------


def hyper_cleaning(
    *,
    n_train: int = 500,
    n_val: int = 300,
    corruption: float = 0.5,
    l2: float = 1e-3,
    seed: int = 0,
    dtype=None,
) -> BilevelTask:
    r"""Data hyper-cleaning on scikit-learn's bundled digits (1797 8x8 images, 10
    classes, pixels scaled to [0, 1]; Franceschi et al. 2017, Shaban et al. 2019).

    A fraction ``corruption`` of the ``n_train`` training labels is replaced by a
    different, uniformly drawn class. Upper variable ``x`` (``(n_train,)``): the
    per-sample weights are ``sigmoid(x)``; lower variable ``y = {"W": (64, 10),
    "b": (10,)}``:

        f(x, y) = mean_i sigmoid(x_i) CE(y; X_i, noisy_i) + (l2 / 2) ||y||^2
        F(x, y) = mean_j CE(y; Xval_j, val_j)       (clean validation labels)

    ``data = (X_train, noisy_labels, X_val, val_labels)``; ``extra`` holds the test
    split, the clean training labels, the ``corrupted`` mask and ``l2``. The
    remaining ``1797 - n_train - n_val`` images are the test set.
    """
    from sklearn.datasets import load_digits

    dtype = dtype or jnp.result_type(float)
    images, labels = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    images, labels = images[order] / 16.0, labels[order]
    n_classes = 10
    if n_train + n_val >= len(labels):
        raise ValueError(
            f"`n_train + n_val` must be < {len(labels)}, got {n_train + n_val}"
        )
    tr, va, te = (
        slice(0, n_train),
        slice(n_train, n_train + n_val),
        slice(n_train + n_val, None),
    )
    clean = labels[tr].copy()
    corrupted = rng.random(n_train) < corruption
    # A corrupted label is a *different* class, drawn uniformly.
    shift = rng.integers(1, n_classes, size=n_train)
    noisy = np.where(corrupted, (clean + shift) % n_classes, clean)

    def as_x(a):
        return jnp.asarray(a, dtype)

    def as_label(a):
        return jnp.asarray(a, jnp.int32)

    X_train, X_val, X_test = as_x(images[tr]), as_x(images[va]), as_x(images[te])
    d = X_train.shape[1]

    def lower(x, y, X, noisy, X_val, val_labels):
        del X_val, val_labels
        weights = jax.nn.sigmoid(x)
        # l2 on the bias too: the lower level is then strongly convex (the
        # softmax is invariant to a shift of all biases).
        penalty = jnp.sum(y["W"] ** 2) + jnp.sum(y["b"] ** 2)
        return jnp.mean(weights * multinomial_loss(y, X, noisy)) + 0.5 * l2 * penalty

    def upper(x, y, X, noisy, X_val, val_labels):
        del x, X, noisy
        return jnp.mean(multinomial_loss(y, X_val, val_labels))

    x0 = jnp.zeros((n_train,), dtype)
    y0 = {"W": jnp.zeros((d, n_classes), dtype), "b": jnp.zeros((n_classes,), dtype)}
    data = (X_train, as_label(noisy), X_val, as_label(labels[va]))
    extra = {
        "X_test": X_test,
        "test_labels": as_label(labels[te]),
        "clean_labels": as_label(clean),
        "corrupted": jnp.asarray(corrupted),
        "l2": l2,
    }
    return BilevelTask(upper, lower, None, None, x0, y0, data, extra)


# --- l2-strength hyperparameter optimisation -------------------------------------


def logistic_l2_tuning(
    *, per_feature: bool = True, n_train: int = 200, seed: int = 0, dtype=None
) -> BilevelTask:
    r"""Hyperparameter optimisation of the l2 strengths of a logistic regression on
    scikit-learn's bundled breast-cancer data (569 samples, 30 standardised
    features, binary labels).

    Upper variable ``x``: log-strengths (``(30,)`` per feature, or ``()``);
    lower ``y = {"w": (30,), "b": ()}``:

        f(x, y) = mean_i logistic(y; X_i, t_i) + sum_j exp(x_j) w_j^2 / 2
        F(x, y) = mean_j logistic(y; Xval_j, tval_j)

    ``data = (X_train, t_train, X_val, t_val)`` (the first ``n_train`` shuffled
    samples train, the rest validate); ``x0`` is ``log(1)``: strong regularisation.
    """
    from sklearn.datasets import load_breast_cancer

    dtype = dtype or jnp.result_type(float)
    X, t = load_breast_cancer(return_X_y=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(t))
    X, t = X[order], t[order]
    X = (X - X[:n_train].mean(0)) / X[:n_train].std(0)
    d = X.shape[1]

    def loss(y, X, t):
        z = X @ y["w"] + y["b"]
        return jnp.mean(jnp.logaddexp(0, z) - t * z)

    def lower(x, y, X, t, X_val, t_val):
        del X_val, t_val
        return loss(y, X, t) + 0.5 * jnp.sum(jnp.exp(x) * y["w"] ** 2)

    def upper(x, y, X, t, X_val, t_val):
        del x, X, t
        return loss(y, X_val, t_val)

    x0 = jnp.zeros((d,) if per_feature else (), dtype)
    y0 = {"w": jnp.zeros((d,), dtype), "b": jnp.zeros((), dtype)}
    data = tuple(
        jnp.asarray(a, dtype)
        for a in (X[:n_train], t[:n_train], X[n_train:], t[n_train:])
    )
    return BilevelTask(upper, lower, None, None, x0, y0, data, {"loss": loss})
