r"""BO-REP: bilevel optimisation under unbounded smoothness of the upper level.

J. Hao, X. Gong, M. Liu, "Bilevel Optimization under Unbounded Smoothness: A New
Algorithm and Convergence Analysis", ICLR 2024.

    initialisation refinement: y0 <- many lower-level gradient steps at x0
    for k:  if k mod I == 0: N lower-level gradient steps on y  (periodic updates)
            z <- Proj_ball( z - nu (hess_yy f z - grad_y F) )   (adjoint step)
            h = grad_x F - hess_xy f z
            m <- beta m + (1 - beta) h ;  x <- x - lr m / ||m||  (normalised momentum)

The normalised step keeps the update bounded where the upper level's smoothness
grows with its gradient (the paper's (L0, L1)-smoothness), e.g. recurrent networks.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import PyTree

from ..._checks import check_positive_int, check_static_int
from ._inner import check_rate, gradient_steps
from ._problem import BilevelMethod, check_variables, tree_norm

__all__ = ["bo_rep", "BOREPState"]


class BOREPState(eqx.Module):
    x: PyTree
    y: PyTree
    z: PyTree  # the adjoint estimate, shaped like y
    m: PyTree  # momentum, shaped like x
    step_count: object
    info: dict


def bo_rep(
    upper: Callable,
    lower: Callable,
    *,
    learning_rate: float,
    inner_lr: float,
    momentum: float = 0.9,
    adjoint_lr: float | None = None,
    period: int = 1,
    inner_steps: int = 10,
    init_inner_steps: int = 100,
    adjoint_radius: float | None = None,
    project_x: Callable | None = None,
) -> BilevelMethod:
    r"""BO-REP (Hao, Gong & Liu, ICLR 2024).

    Args:
        learning_rate: the normalised step length ``lr`` of ``x`` (``||dx|| = lr``).
        inner_lr: the lower level's gradient step size.
        momentum: ``beta`` of the momentum ``m``.
        adjoint_lr: ``nu``, the step of ``z`` on ``(hess_yy f) z = grad_y F``
            (default ``inner_lr``).
        period: ``I``: ``y`` is updated at steps ``k`` with ``k mod I == 0``.
        inner_steps: ``N`` gradient steps of ``y`` per update.
        init_inner_steps: the initialisation refinement of ``y0`` at ``x0``.
        adjoint_radius: project ``z`` onto the ball of this radius (the paper's
            ``rho``); ``None``: no projection.
        project_x: a projection of ``x`` onto a simple set.
    """
    lr = check_rate(learning_rate, "learning_rate")
    inner_lr = check_rate(inner_lr, "inner_lr")
    nu = inner_lr if adjoint_lr is None else check_rate(adjoint_lr, "adjoint_lr")
    if not 0 <= float(momentum) < 1:
        raise ValueError(f"`momentum` must be in [0, 1), got {momentum}")
    period = check_positive_int(period, "period")
    steps_n = check_static_int(inner_steps, "inner_steps")
    init_steps = check_static_int(init_inner_steps, "init_inner_steps")
    radius = (
        None if adjoint_radius is None else check_rate(adjoint_radius, "adjoint_radius")
    )
    refine = gradient_steps(lower, inner_lr, init_steps)
    update_y = gradient_steps(lower, inner_lr, steps_n)
    grad_F = jax.grad(upper, argnums=(0, 1))

    def init(x0, y0, *data):
        check_variables("bo_rep", x0, y0, data, upper, lower)
        y = refine(x0, y0, *data)
        zeros = lambda t: jax.tree_util.tree_map(jnp.zeros_like, t)  # noqa: E731
        return BOREPState(
            x=x0,
            y=y,
            z=zeros(y),
            m=zeros(x0),
            step_count=jnp.asarray(0, jnp.int32),
            info={
                "hypergradient_norm": jnp.asarray(
                    0.0, jnp.result_type(*jax.tree_util.tree_leaves(x0))
                )
            },
        )

    def step(state: BOREPState, *data) -> BOREPState:
        x, z, m = state.x, state.z, state.m
        y = lax.cond(
            state.step_count % period == 0,
            lambda y: update_y(x, y, *data),
            lambda y: y,
            state.y,
        )
        gFx, gFy = grad_F(x, y, *data)

        def grad_y_lower(x_, y_):
            return jax.grad(lower, argnums=1)(x_, y_, *data)

        # (hess_yy f) z by a jvp; (hess_xy f) z by a vjp of grad_y f in x.
        _, hz = jax.jvp(lambda y_: grad_y_lower(x, y_), (y,), (z,))
        z = jax.tree_util.tree_map(lambda a, b, c: a - nu * (b - c), z, hz, gFy)
        if radius is not None:
            nz = tree_norm(z)
            z = jax.tree_util.tree_map(
                lambda a: a * jnp.minimum(1, radius / jnp.maximum(nz, 1e-30)), z
            )
        _, vjp_x = jax.vjp(lambda x_: grad_y_lower(x_, y), x)
        (cross,) = vjp_x(z)
        h = jax.tree_util.tree_map(lambda a, b: a - b, gFx, cross)
        m = jax.tree_util.tree_map(lambda a, b: momentum * a + (1 - momentum) * b, m, h)
        mn = tree_norm(m)
        scale = lr / jnp.where(mn > 0, mn, 1)
        x = jax.tree_util.tree_map(lambda a, b: a - scale * b, x, m)
        if project_x is not None:
            x = project_x(x)
        return BOREPState(
            x=x,
            y=y,
            z=z,
            m=m,
            step_count=state.step_count + 1,
            info={"hypergradient_norm": tree_norm(h)},
        )

    def objective(state, *data):
        return upper(state.x, state.y, *data)

    return BilevelMethod(
        "bo_rep",
        init,
        step,
        objective,
        {
            "learning_rate": lr,
            "inner_lr": inner_lr,
            "period": period,
            "inner_steps": steps_n,
        },
    )
