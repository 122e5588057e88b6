r"""ITD: iterative differentiation, the hypergradient of ``F(x, y_T(x))`` with
``y_T(x)`` the result of ``T`` unrolled (warm-started) gradient steps on
``f(x, .)``, by reverse mode through the steps (Maclaurin et al. 2015, Franceschi
et al. 2017). A baseline only: its memory grows with ``T`` and its hypergradient is
biased by the truncation; :func:`aid` is the implicit alternative.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import PyTree

from ..._checks import check_static_int
from ._inner import check_rate, gradient_steps
from ._problem import BilevelMethod, check_variables, tree_norm

__all__ = ["itd", "ITDState"]


class ITDState(eqx.Module):
    x: PyTree
    y: PyTree
    opt_state: PyTree
    step_count: object
    info: dict


def itd(
    upper: Callable,
    lower: Callable,
    *,
    inner_lr: float,
    inner_steps: int = 20,
    optimizer: optax.GradientTransformation | None = None,
    learning_rate: float | None = None,
    project_x: Callable | None = None,
) -> BilevelMethod:
    r"""Hypergradient descent with the unrolled (ITD) hypergradient: each step
    differentiates ``x -> F(x, y_T(x))`` through ``inner_steps`` gradient steps of
    size ``inner_lr`` started (without gradient) from the previous ``y``; ``x`` is
    updated by ``optimizer`` (default ``optax.sgd(learning_rate)``).
    """
    if optimizer is None:
        if learning_rate is None:
            raise ValueError("itd: give `learning_rate` or an optax `optimizer`")
        optimizer = optax.sgd(check_rate(learning_rate, "learning_rate"))
    inner_lr = check_rate(inner_lr, "inner_lr")
    steps_t = check_static_int(inner_steps, "inner_steps", 1)
    unrolled = gradient_steps(lower, inner_lr, steps_t)

    def init(x0, y0, *data):
        check_variables("itd", x0, y0, data, upper, lower)
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(x0))
        return ITDState(
            x=x0,
            y=y0,
            opt_state=optimizer.init(x0),
            step_count=jnp.asarray(0, jnp.int32),
            info={"hypergradient_norm": jnp.asarray(0.0, dtype)},
        )

    def step(state: ITDState, *data) -> ITDState:
        y_start = jax.lax.stop_gradient(state.y)

        def outer(x):
            y = unrolled(x, y_start, *data)
            return upper(x, y, *data), y

        (_, y), grad = jax.value_and_grad(outer, has_aux=True)(state.x)
        updates, opt_state = optimizer.update(grad, state.opt_state, state.x)
        x = optax.apply_updates(state.x, updates)
        if project_x is not None:
            x = project_x(x)
        return ITDState(
            x=x,
            y=y,
            opt_state=opt_state,
            step_count=state.step_count + 1,
            info={"hypergradient_norm": tree_norm(grad)},
        )

    def objective(state, *data):
        return upper(state.x, state.y, *data)

    return BilevelMethod(
        "itd", init, step, objective, {"inner_lr": inner_lr, "inner_steps": steps_t}
    )
