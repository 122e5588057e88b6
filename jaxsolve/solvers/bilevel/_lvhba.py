r"""LV-HBA: a single-loop, Hessian-free method for bilevel problems whose lower
level has (coupled) constraints.

W. Yao, C. Yu, S. Zeng, J. Zhang, "Constrained Bi-Level Optimization: Proximal
Lagrangian Value function Approach and Hessian-free Algorithm", ICLR 2024.

The proximal Lagrangian value function, with multipliers in ``Z = [0, r]^p``,

    v(x, y, z) = min_theta max_{lam in Z} f(x, theta) + lam.g(x, theta)
                 + ||theta - y||^2 / (2 g1) - ||lam - z||^2 / (2 g2),

turns the bilevel problem into ``min (1/c_k) F + f - v`` over ``(x, y) in C``,
``z in Z``, with ``c_k = c0 (k + 1)^p_c`` (``p_c in (0, 1/2)``). Each iteration:

    theta  <- Proj_Y( theta - eta [grad_y f(x,theta) + J_y g(x,theta)^T lam
                           + (theta - y)/g1] )
    lam    <- Proj_Z( lam + eta [g(x,theta) - (lam - z)/g2] )   (from the old values)
    d_x = grad_x F(x,y)/c_k + grad_x f(x,y) - grad_x f(x,theta) - J_x g(x,theta)^T lam
    d_y = grad_y F(x,y)/c_k + grad_y f(x,y) - (y - theta)/g1
    (x, y) <- Proj_C( (x, y) - alpha (d_x, d_y) )
    z      <- Proj_Z( z - beta (z - lam)/g2 )

with the new ``theta``, ``lam`` in ``d_x``, ``d_y`` and the ``z`` step. Only
gradients and Jacobian-transpose products: no Hessian, no inner loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree

from ._inner import check_rate
from ._problem import BilevelMethod, check_variables

__all__ = ["lv_hba", "LVHBAState"]


class LVHBAState(eqx.Module):
    x: PyTree
    y: PyTree
    theta: PyTree
    lam: Array
    z: Array
    step_count: Array
    info: dict


def _sub(a, b):
    return jax.tree_util.tree_map(lambda u, v: u - v, a, b)


def lv_hba(
    upper: Callable,
    lower: Callable,
    *,
    constraint: Callable | None = None,
    project: Callable | None = None,
    project_y: Callable | None = None,
    alpha: float = 0.008,
    beta: float = 0.02,
    eta: float = 0.01,
    gamma1: float = 10.0,
    gamma2: float = 10.0,
    c0: float = 0.025,
    c_power: float = 0.3,
    multiplier_bound: float = 1000.0,
    equality: bool = False,
    infeasible_start: str = "error",
    feasibility_tol: float = 1e-6,
) -> BilevelMethod:
    r"""LV-HBA (Yao et al., ICLR 2024); the defaults are the step sizes of the paper's
    toy code. On that toy (:func:`jaxsolve.problems.bilevel.lv_hba_toy`) they make
    the inner (theta, lambda) gradient descent-ascent oscillate with a growing
    amplitude (as does a direct transcription of the paper's equations); the
    toy reaches a relative error of 1e-3 in about 1.2e5 iterations (0.6 s on a CPU)
    with ``alpha=0.008, eta=0.012, gamma1=gamma2=1, c0=4, c_power=0.49``: the
    penalty's bias is about ``0.5 / c_k``, so ``c_k`` must grow to the hundreds.

    Args:
        upper, lower: ``F(x, y, *data)``, ``f(x, y, *data)``.
        constraint: ``g(x, y, *data)``, an array feasible where ``<= 0`` (an
            equality ``h = 0`` is ``g = (h, -h)``); ``None``: unconstrained lower level.
        project: ``(x, y) -> (x, y)``, the projection onto the simple set ``C`` of the
            update of ``(x, y)`` (e.g. a coupling hyperplane); ``None``: no set.
        project_y: ``theta -> theta``, the projection onto the lower level's simple
            set ``Y``; ``None``: all of the space.
        alpha, beta, eta: step sizes of ``(x, y)``, ``z`` and ``(theta, lam)``.
        gamma1, gamma2: proximal parameters ``g1``, ``g2`` of the value function.
        c0, c_power: the penalty schedule ``c_k = c0 (k + 1)^c_power``.
        multiplier_bound: ``r`` in ``Z = [0, r]^p``.
        equality: ``constraint`` is an equality ``h(x, y) = 0``: signed multipliers,
            ``Z = [-r, r]^p`` (as in the paper's toy), instead of ``g <= 0``.
        infeasible_start: with a ``constraint``: ``"error"`` raises (a runtime
            error, under ``jit`` too) when ``max g(x0, y0) > feasibility_tol`` after
            ``project``; ``"allow"`` starts anyway (the penalty pulls ``y`` towards
            feasibility). ``init`` always applies ``project`` to ``(x0, y0)`` first.
    """
    for name, v in [
        ("alpha", alpha),
        ("beta", beta),
        ("eta", eta),
        ("gamma1", gamma1),
        ("gamma2", gamma2),
        ("c0", c0),
        ("multiplier_bound", multiplier_bound),
    ]:
        check_rate(v, name)
    if not 0 <= float(c_power) < 1:
        raise ValueError(
            f"`c_power` must be in [0, 1) (the paper: (0, 1/2)), got {c_power}"
        )
    if infeasible_start not in ("error", "allow"):
        raise ValueError(
            f"`infeasible_start` must be 'error' or 'allow', got {infeasible_start!r}"
        )
    lo = -float(multiplier_bound) if equality else 0.0
    grad_f = jax.grad(lower, argnums=(0, 1))
    grad_F = jax.grad(upper, argnums=(0, 1))

    def g_terms(x, theta, lam, data):
        """``(J_x g^T lam, J_y g^T lam, g)`` at ``(x, theta)``."""
        if constraint is None:
            zx = jax.tree_util.tree_map(jnp.zeros_like, x)
            zy = jax.tree_util.tree_map(jnp.zeros_like, theta)
            return zx, zy, jnp.zeros((0,), lam.dtype)
        g, vjp = jax.vjp(lambda x_, t_: constraint(x_, t_, *data), x, theta)
        jx, jy = vjp(lam.reshape(g.shape).astype(g.dtype))
        return jx, jy, g.reshape(-1)

    def init(x0, y0, *data):
        g_shape = check_variables("lv_hba", x0, y0, data, upper, lower, constraint)
        if project is not None:
            x0, y0 = project(x0, y0)
        p = 0 if constraint is None else math.prod(g_shape)
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(y0))
        if constraint is not None and infeasible_start == "error":
            g0 = constraint(x0, y0, *data)
            g0 = jnp.max(jnp.abs(g0)) if equality else jnp.max(g0)
            x0 = eqx.error_if(
                x0,
                ~(g0 <= feasibility_tol),
                "lv_hba: the start (x0, y0) is infeasible (max constraint(x0, y0) > "
                "feasibility_tol) or the constraint is NaN; give a `project` onto a "
                "set of feasible points, a feasible start, or infeasible_start='allow'",
            )
        return LVHBAState(
            x=x0,
            y=y0,
            theta=y0,
            lam=jnp.zeros((p,), dtype),
            z=jnp.zeros((p,), dtype),
            step_count=jnp.asarray(0, jnp.int32),
            info={
                "penalty": jnp.asarray(c0, dtype),
                "max_constraint": jnp.asarray(0.0, dtype),
            },
        )

    def step(state: LVHBAState, *data) -> LVHBAState:
        x, y, theta, lam, z = state.x, state.y, state.theta, state.lam, state.z
        dtype = lam.dtype
        c_k = c0 * (state.step_count.astype(dtype) + 1) ** c_power
        # theta and lambda: one projected gradient step on the inner min-max, from
        # the old values (a simultaneous update, as in the paper).
        _, gy_theta = grad_f(x, theta, *data)
        _, jy_lam, g_theta = g_terms(x, theta, lam, data)
        d_theta = jax.tree_util.tree_map(
            lambda a, b, t, y_: a + b + (t - y_) / gamma1, gy_theta, jy_lam, theta, y
        )
        theta_new = jax.tree_util.tree_map(lambda t, d: t - eta * d, theta, d_theta)
        if project_y is not None:
            theta_new = project_y(theta_new)
        lam_new = jnp.clip(
            lam + eta * (g_theta - (lam - z) / gamma2), lo, multiplier_bound
        )
        # (x, y): the penalised objective's gradient at the new theta, lambda.
        gFx, gFy = grad_F(x, y, *data)
        gfx, gfy = grad_f(x, y, *data)
        gfx_theta, _ = grad_f(x, theta_new, *data)
        jx_lam, _, _ = g_terms(x, theta_new, lam_new, data)
        d_x = jax.tree_util.tree_map(
            lambda a, b, c, d: a / c_k + b - c - d, gFx, gfx, gfx_theta, jx_lam
        )
        d_y = jax.tree_util.tree_map(
            lambda a, b, y_, t: a / c_k + b - (y_ - t) / gamma1, gFy, gfy, y, theta_new
        )
        x_new = _sub(x, jax.tree_util.tree_map(lambda d: alpha * d, d_x))
        y_new = _sub(y, jax.tree_util.tree_map(lambda d: alpha * d, d_y))
        if project is not None:
            x_new, y_new = project(x_new, y_new)
        z_new = jnp.clip(z - beta * (z - lam_new) / gamma2, lo, multiplier_bound)
        # The constraint violation of the new iterate (|h| for an equality).
        if constraint is None:
            max_g = jnp.asarray(0.0, dtype)
        else:
            g_xy = constraint(x_new, y_new, *data)
            max_g = jnp.max(jnp.abs(g_xy)) if equality else jnp.max(g_xy)
        return LVHBAState(
            x=x_new,
            y=y_new,
            theta=theta_new,
            lam=lam_new,
            z=z_new,
            step_count=state.step_count + 1,
            info={"penalty": c_k, "max_constraint": max_g.astype(dtype)},
        )

    def objective(state, *data):
        return upper(state.x, state.y, *data)

    return BilevelMethod(
        "lv_hba",
        init,
        step,
        objective,
        {"alpha": alpha, "beta": beta, "eta": eta, "gamma1": gamma1, "gamma2": gamma2},
    )
