r"""AID: approximate implicit differentiation (hypergradient descent).

For a strongly convex lower level, ``y*(x)`` solves ``grad_y f(x, y) = 0`` and the
implicit function theorem gives the hypergradient

    dF/dx = grad_x F - (hess_xy f) v,   (hess_yy f) v = grad_y F,

at ``(x, y*(x))`` (Pedregosa, ICML 2016; Grazzi et al., ICML 2020). The backward
(adjoint) system is solved by CG on Hessian-vector products. With ``recycle=True``
the method's state carries what earlier backward solves learned to the next one:
a start extrapolated from the last adjoint solutions, and a spectral
limited-memory preconditioner (:mod:`jaxsolve.solvers.linear._spectral`) from
Ritz pairs of the largest eigenvalues of the earlier Hessians, refreshed from
each solve's own CG directions at no Hessian product. The hypergradient is the
same (to the solve's tolerance) but later backward solves take about 3x fewer
Hessian products on the hyper-cleaning task. Why the largest eigenvalues: the
lower Hessians of regularised learning problems have a cluster at the ridge
(which CG resolves in one step) and a spread-out upper part that sets CG's rate;
deflating the *smallest* Ritz vectors (``recycle_dim``, the classic recycled CG)
saved only 1.3-1.7x there.

:func:`implicit_lower` is the same hypergradient through
:func:`jaxsolve.custom_root`: ``y*(x)`` as a differentiable function, for
``jax.grad``/``jax.jvp`` of any function of it.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PyTree

from ..._checks import check_static_int
from ..._solution import RESULTS
from ...implicit import custom_root
from ..linear._deflated_cg import recycled_cg
from ..linear._spectral import (
    SpectralPreconditioner,
    spectral_refresh,
    spectral_update,
)
from ._inner import check_rate, make_inner
from ._problem import BilevelMethod, check_variables

__all__ = ["aid", "hypergradient", "implicit_lower", "AIDState"]


class AIDState(eqx.Module):
    x: PyTree
    y: PyTree
    opt_state: PyTree
    grad: PyTree  # the last hypergradient (at the previous x and this y)
    v: Array  # the last adjoint solution, flat (the next solve's start)
    basis: Array  # (n, k) Ritz vectors deflated from the next solve
    spectral: SpectralPreconditioner | None  # the recycled preconditioner
    fewest_steps: Array  # the fewest CG steps of a solve since its last refresh
    solutions: Array  # (n, q) the last adjoint solutions, newest first
    rhs: Array  # (n, q) their right-hand sides
    step_count: Array
    info: dict


def hypergradient(
    upper: Callable,
    lower: Callable,
    x,
    y,
    *data,
    rtol=1e-10,
    max_steps: int | None = None,
    v0=None,
    basis=None,
    record: int = 0,
    ritz: int | None = None,
    initial_guess: Callable | None = None,
    spectral: SpectralPreconditioner | None = None,
    refresh=False,
):
    r"""The implicit hypergradient ``dF/dx`` at ``(x, y)`` (``y ~ y*(x)``).

    Solves ``(hess_yy f) v = grad_y F`` by (deflated) CG on Hessian-vector
    products (the Hessian is linearised once), then returns
    ``grad_x F - (hess_xy f) v`` as a pytree shaped like ``x``, and a dict with
    ``v`` (flat), ``basis`` (the next recycle basis: ``ritz`` (default all of
    ``basis``'s) Ritz vectors of the smallest Ritz values on ``span{basis, first
    record CG directions}`` when ``record > 0``), ``matvecs`` (Hessian products),
    ``steps`` and ``result`` (the backward solve's :class:`jaxsolve.RESULTS`).

    Args:
        rtol: relative tolerance of the backward solve.
        v0: a flat start for ``v`` (default zero); ``basis``: an ``(n, k)`` array
            to deflate (default none), with ``n`` the size of ``y``.
        initial_guess: ``b -> v0`` (flat), a start computed from the right-hand
            side ``b = grad_y F`` (overrides ``v0``).
        spectral: a :class:`~jaxsolve.solvers.linear.SpectralPreconditioner`
            for CG (default none); with ``record > 0`` its update for the next
            system is ``info["spectral"]``. ``refresh`` (a bool, traced or not):
            first recompute its products with this Hessian (``k`` products,
            counted in ``matvecs``).
    """
    y_flat, unravel = ravel_pytree(y)
    n = y_flat.size
    grad_x_upper, grad_y_upper = jax.grad(upper, argnums=(0, 1))(x, y, *data)
    b = ravel_pytree(grad_y_upper)[0]

    def grad_y_lower(x_, y_):
        return jax.grad(lower, argnums=1)(x_, y_, *data)

    # Linearise grad_y f once: every Hessian product reuses the stored point.
    _, hvp = jax.linearize(
        lambda yf: ravel_pytree(grad_y_lower(x, unravel(yf)))[0], y_flat
    )
    if initial_guess is not None:
        v0 = initial_guess(b)
    if v0 is None:
        v0 = jnp.zeros_like(b)
    if basis is None:
        basis = jnp.zeros((n, 0), b.dtype)
    max_steps = 10 * n if max_steps is None else max_steps
    extra = jnp.asarray(0, jnp.int32)
    if spectral is not None:
        size = spectral.W.shape[1]
        spectral, extra = jax.lax.cond(
            refresh,
            lambda s: (spectral_refresh(s, hvp), jnp.asarray(size, jnp.int32)),
            lambda s: (s, jnp.asarray(0, jnp.int32)),
            spectral,
        )
    sol, new_basis = recycled_cg(
        hvp,
        b,
        v0.astype(b.dtype),
        basis,
        rtol=rtol,
        max_steps=max_steps,
        record=record,
        ritz=ritz,
        preconditioner=spectral,
    )
    v = sol.value
    _, vjp_x = jax.vjp(lambda x_: grad_y_lower(x_, y), x)
    (cross,) = vjp_x(unravel(v))
    grad = jax.tree_util.tree_map(lambda a, c: a - c, grad_x_upper, cross)
    info = {
        "v": v,
        "basis": new_basis,
        "rhs": b,
        "matvecs": sol.stats["matvecs"] + extra,
        "steps": sol.num_steps,
        "result": sol.result,
    }
    if spectral is not None and record:
        p_rec, ap_rec, _, recorded = sol.aux["recycle"]
        info["spectral"] = spectral_update(spectral, p_rec, ap_rec, recorded)
    return grad, info


def _extrapolate(solutions, rhs, b):
    """A start for ``A_t v = b`` from earlier solutions ``A_j v_j = b_j``: ``V c``
    with ``c`` the least-squares fit ``B c ~ b``. It costs no operator product:
    ``A_t V c ~ B c`` holds while the operators change slowly (the error of that
    is what CG then removes)."""
    g = rhs.T @ rhs
    s, u = jnp.linalg.eigh(0.5 * (g + g.T))
    keep = s > 1e-12 * jnp.maximum(jnp.max(s), jnp.finfo(s.dtype).tiny)
    c = (u * jnp.where(keep, 1 / jnp.where(keep, s, 1), 0)) @ (u.T @ (rhs.T @ b))
    return solutions @ c


# fewest_steps before any solve: no refresh is triggered (3 * _NEVER fits in
# int32, as the slow-solve test computes it).
_NEVER = 2**28


def _spectral_size(requested: int, n: int) -> int:
    """Ritz pairs kept by the recycled preconditioner for ``n`` lower variables:
    at most ``n // 8``, so that a refresh (as many Hessian products) stays well
    below one CG solve's products (at most ``n``); 0 turns it off."""
    return min(requested, n // 8)


def _push(history, column):
    """``column`` first, then the older ones; the oldest is dropped."""
    return jnp.concatenate([column[:, None], history[:, :-1]], axis=1)


def implicit_lower(
    lower: Callable, inner: Callable, *, solve="cg", **kwargs
) -> Callable:
    r"""``y_star(x, y_init, *data)``: the lower solution ``inner(x, y_init, *data)``,
    differentiated in ``x`` (and ``data``) through :func:`jaxsolve.custom_root` on
    ``grad_y f(x, y) = 0`` (with ``solve="cg"``: the lower Hessian is SPD).

    ``jax.grad(lambda x: upper(x, y_star(x, y0, *data), *data))(x)`` is then the
    implicit hypergradient (and ``jax.jvp`` its forward mode); ``kwargs`` go to
    ``custom_root`` (``solve_options``, ``ridge``, ...).
    """

    def optimality(y, x, *data):
        return jax.grad(lower, argnums=1)(x, y, *data)

    @custom_root(optimality, solve=solve, **kwargs)
    def solver(y_init, x, *data):
        return inner(x, y_init, *data)

    def y_star(x, y_init, *data):
        return solver(jax.lax.stop_gradient(y_init), x, *data)

    return y_star


def aid(
    upper: Callable,
    lower: Callable,
    *,
    optimizer: optax.GradientTransformation | None = None,
    learning_rate: float | None = None,
    inner: Callable | None = None,
    inner_lr: float | None = None,
    inner_steps: int = 10,
    init_inner_rounds: int = 10,
    backward_rtol: float | None = None,
    backward_max_steps: int | None = None,
    recycle: bool = False,
    recycle_dim: int = 0,
    recycle_record: int = 40,
    recycle_solutions: int = 6,
    recycle_spectral: int = 80,
    recycle_refresh: int = 15,
    project_x: Callable | None = None,
) -> BilevelMethod:
    r"""Hypergradient descent with the implicit (AID) hypergradient.

    Each step: ``y <- inner(x, y, *data)`` (warm-started: by default
    ``inner_steps`` gradient steps of size ``inner_lr`` on ``f(x, .)``), the
    hypergradient at ``(x, y)`` (:func:`hypergradient`: CG on
    ``(hess_yy f) v = grad_y F`` to ``backward_rtol``, default ``eps ** 0.625`` of
    the dtype: 1.6e-10 in float64, 5e-5 in float32), then ``x`` by ``optimizer``
    (any optax transformation; default ``optax.sgd(learning_rate)``), projected by
    ``project_x`` if given. ``init`` refines ``y0`` by ``init_inner_rounds``
    calls of ``inner``.

    ``recycle=True``: the backward solve starts from the combination of the last
    ``recycle_solutions`` adjoint solutions whose right-hand sides best fit the
    new one (least squares; no Hessian product: the earlier products are their
    right-hand sides; cf. Fischer's projection for successive right-hand sides,
    CMAME 1998), and CG is preconditioned by a spectral limited-memory
    preconditioner built from ``recycle_spectral`` (at most ``n // 8`` for ``n``
    lower variables) Ritz pairs of the largest Ritz values of the earlier
    Hessians (:class:`~jaxsolve.solvers.linear.SpectralPreconditioner`). The
    pairs are refreshed after each step by Rayleigh-Ritz on their own vectors
    and the first ``recycle_record`` CG directions, at no Hessian product, and
    recomputed with the current Hessian every ``recycle_refresh`` steps and
    after a solve that took over 1.5x the fewest CG steps since the last
    refresh (``recycle_spectral`` products then). Measured on the
    hyper-cleaning task (``benchmarks/bilevel.py``): about 3x fewer Hessian
    products than unrecycled CG after the first steps, the same hypergradients.
    ``recycle_dim > 0`` also deflates that many Ritz vectors of the *smallest*
    Ritz values (``recycle_dim`` products a step; it pays where a few small
    eigenvalues are isolated). ``state.info`` records ``backward_matvecs``
    (Hessian products, including the refreshes and the deflation basis),
    ``backward_steps`` and ``backward_result`` for every step.

    Needs a strongly convex lower level (SPD ``hess_yy f``); no ``constraint``.
    """
    if optimizer is None:
        if learning_rate is None:
            raise ValueError("aid: give `learning_rate` or an optax `optimizer`")
        optimizer = optax.sgd(check_rate(learning_rate, "learning_rate"))
    if not hasattr(optimizer, "init") or not hasattr(optimizer, "update"):
        raise ValueError(
            f"`optimizer` must be an optax GradientTransformation, got {optimizer!r}"
        )
    inner_fn = make_inner(lower, inner, inner_lr, inner_steps, None, "aid")
    rounds = check_static_int(init_inner_rounds, "init_inner_rounds")
    if backward_rtol is not None:
        backward_rtol = check_rate(backward_rtol, "backward_rtol")
    k = check_static_int(recycle_dim, "recycle_dim") if recycle else 0
    q = check_static_int(recycle_solutions, "recycle_solutions") if recycle else 0
    spec = check_static_int(recycle_spectral, "recycle_spectral") if recycle else 0
    period = check_static_int(recycle_refresh, "recycle_refresh", 1) if spec else 1
    record = check_static_int(recycle_record, "recycle_record", 1) if k or spec else 0
    if recycle and k + q + spec == 0:
        raise ValueError(
            "`recycle_dim + recycle_solutions + recycle_spectral` must be >= 1 "
            "with `recycle=True`"
        )

    def init(x0, y0, *data):
        check_variables("aid", x0, y0, data, upper, lower)
        y = jax.lax.fori_loop(0, rounds, lambda _, y: inner_fn(x0, y, *data), y0)
        n = ravel_pytree(y)[0].size
        dtype = ravel_pytree(y)[0].dtype
        spectral_size = _spectral_size(spec, n)
        info = {
            "backward_matvecs": jnp.asarray(0, jnp.int32),
            "backward_steps": jnp.asarray(0, jnp.int32),
            "backward_result": jnp.asarray(0, jnp.int32),
        }
        return AIDState(
            x=x0,
            y=y,
            opt_state=optimizer.init(x0),
            grad=jax.tree_util.tree_map(jnp.zeros_like, x0),
            v=jnp.zeros((n,), dtype),
            basis=jnp.zeros((n, k), dtype),
            spectral=(
                SpectralPreconditioner.empty(n, spectral_size, dtype)
                if spectral_size
                else None
            ),
            fewest_steps=jnp.asarray(_NEVER, jnp.int32),
            solutions=jnp.zeros((n, q), dtype),
            rhs=jnp.zeros((n, q), dtype),
            step_count=jnp.asarray(0, jnp.int32),
            info=info,
        )

    def step(state: AIDState, *data) -> AIDState:
        # The preconditioner's products with the current Hessian (the carried
        # ones come from earlier Hessians) every `period` steps, and as soon as
        # a solve took over 1.5x the fewest CG steps since the last refresh
        # (the pairs went stale: a fast-moving x). Never before the first step.
        slow = 2 * state.info["backward_steps"] > 3 * state.fewest_steps
        refresh = (state.step_count > 0) & ((state.step_count % period == 0) | slow)
        x = state.x
        y = inner_fn(x, state.y, *data)
        dtype = state.v.dtype
        # eps ** 0.625: about 1.6e-10 in float64, 5e-5 in float32.
        rtol = (
            float(jnp.finfo(dtype).eps) ** 0.625
            if backward_rtol is None
            else backward_rtol
        )
        grad, h = hypergradient(
            upper,
            lower,
            x,
            y,
            *data,
            rtol=rtol,
            max_steps=backward_max_steps,
            v0=state.v if recycle else None,
            basis=state.basis,
            record=record,
            ritz=k,
            initial_guess=(
                (lambda b: _extrapolate(state.solutions, state.rhs, b)) if q else None
            ),
            spectral=state.spectral,
            refresh=refresh,
        )
        ok = h["result"] == RESULTS.successful
        updates, opt_state = optimizer.update(grad, state.opt_state, x)
        x = optax.apply_updates(x, updates)
        if project_x is not None:
            x = project_x(x)
        info = {
            "backward_matvecs": jnp.asarray(h["matvecs"], jnp.int32),
            "backward_steps": jnp.asarray(h["steps"], jnp.int32),
            "backward_result": jnp.asarray(h["result"]._value, jnp.int32),
        }
        return AIDState(
            x=x,
            y=y,
            opt_state=opt_state,
            grad=grad,
            # A failed backward solve (its best iterate is used, and the code
            # recorded) does not refresh the recycle space.
            v=jnp.where(ok, h["v"], state.v),
            basis=jnp.where(ok, h["basis"], state.basis),
            # A solve that failed with the preconditioner drops it (the next
            # solve is plain CG, and the pairs regrow from its directions).
            spectral=(
                jax.tree_util.tree_map(
                    lambda new, empty: jnp.where(ok, new, empty),
                    h["spectral"],
                    SpectralPreconditioner.empty(*state.spectral.W.shape, dtype),
                )
                if state.spectral is not None
                else None
            ),
            solutions=jnp.where(ok, _push(state.solutions, h["v"]), state.solutions),
            rhs=jnp.where(ok, _push(state.rhs, h["rhs"]), state.rhs),
            fewest_steps=jnp.where(
                refresh,
                h["steps"],
                jnp.minimum(state.fewest_steps, h["steps"]),
            ).astype(jnp.int32),
            step_count=state.step_count + 1,
            info=info,
        )

    def objective(state, *data):
        return upper(state.x, state.y, *data)

    return BilevelMethod(
        "aid",
        init,
        step,
        objective,
        {
            "recycle": recycle,
            "inner_steps": inner_steps,
            "backward_rtol": backward_rtol,
        },
    )
