"""Lower-level inner solvers shared by the methods: warm-started gradient steps,
or any user function ``inner(x, y, *data) -> y``."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from ..._checks import check_static_int

__all__ = ["gradient_steps", "make_inner", "check_rate"]


def check_rate(value, name: str) -> float:
    """A concrete positive step size or weight (refused at once otherwise)."""
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"`{name}` must be a positive number, got {value!r}") from e
    if not v > 0 or v == float("inf"):
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}")
    return v


def gradient_steps(lower: Callable, lr: float, steps: int, project_y=None) -> Callable:
    """``inner(x, y, *data)``: ``steps`` gradient steps ``y <- y - lr grad_y f(x, y)``
    (projected by ``project_y`` if given), in a ``lax.fori_loop``."""
    grad_y = jax.grad(lower, argnums=1)

    def inner(x, y, *data):
        def body(_, y):
            g = grad_y(x, y, *data)
            y = jax.tree_util.tree_map(lambda a, b: a - lr * b, y, g)
            return y if project_y is None else project_y(y)

        return lax.fori_loop(0, steps, body, y)

    return inner


def make_inner(lower, inner, inner_lr, inner_steps, project_y, name) -> Callable:
    if inner is not None:
        if not callable(inner):
            raise ValueError(
                f"`inner` must be a function (x, y, *data) -> y, got {inner!r}"
            )
        return inner
    if inner_lr is None:
        raise ValueError(
            f"{name}: give `inner_lr` (the lower level's gradient step size) or an "
            "`inner(x, y, *data) -> y` solver"
        )
    lr = check_rate(inner_lr, "inner_lr")
    steps = check_static_int(inner_steps, "inner_steps")
    return gradient_steps(lower, lr, steps, project_y)


def tree_axpy(a, x, y):
    return jax.tree_util.tree_map(lambda u, v: v + a * u, x, y)


def zeros_like(tree):
    return jax.tree_util.tree_map(jnp.zeros_like, tree)
