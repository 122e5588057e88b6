"""The Deep Conjugate Direction Method (Kaneda et al., ICML 2023, arXiv 2205.10763)."""

from __future__ import annotations

import math
import os

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from ...._checks import check_positive_int, check_static_int
from ...._compiled import compiled_once
from ...._iterate import iterate
from ...._solution import RESULTS, Solution
from .._krylov import krylov_solve, start_result
from ._io import default_model, load_model
from ._model import DCDMNet

__all__ = ["dcdm", "resolve_model"]


def resolve_model(model, grid_shape: tuple):
    """``model`` as a callable on grids of ``grid_shape``: ``None`` (the shipped
    model for ``len(grid_shape)`` dimensions), a path to a weights file, a
    :class:`DCDMNet`, or any function ``r -> q`` on grid-shaped arrays. Trace-time
    ``ValueError`` when ``b`` is not grid-shaped or the model cannot take it."""
    if len(grid_shape) not in (2, 3):
        raise ValueError(
            "`b` must be grid-shaped, a 2-D (N, N) or 3-D (N, N, N) array (DCDM's "
            f"network is convolutional), got shape {grid_shape}; for flat vectors "
            "pass `grid_shape=` (e.g. custom_root(..., solve='dcdm', "
            "solve_options={'grid_shape': x.shape}))"
        )
    if model is None:
        model = default_model(len(grid_shape))
    elif isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    if isinstance(model, DCDMNet):
        model.check_grid(grid_shape, "b")
    elif not callable(model):
        raise ValueError(
            "`model` must be None, a DCDMNet, a path to DCDM weights or a function "
            f"r -> q on grid-shaped arrays, got {type(model).__name__}"
        )
    else:
        out = jax.eval_shape(model, jax.ShapeDtypeStruct(grid_shape, jnp.float32))
        if getattr(out, "shape", None) != grid_shape:
            raise ValueError(
                f"`model` must map arrays of `b`'s shape {grid_shape} to the same "
                f"shape, got {getattr(out, 'shape', type(out).__name__)}"
            )
    return model


def _dcdm_loop(network, shape, residual_every, mask, orthogonalize):
    if mask is not None:
        mask = mask.reshape(-1)

    def direction(r):
        if mask is None:
            return network(r.reshape(shape)).reshape(-1)
        # decoupled (identity-row) cells: the network sees and proposes only the
        # coupled cells; A^{-1} r = r is exact on the others
        q = network((mask * r).reshape(shape)).reshape(-1)
        return mask * q + (1 - mask) * r

    def loop(matvec, b, x0, r, precond, tol, max_steps, input_code):
        del precond  # the network is the "preconditioner"
        one = jnp.ones((), b.dtype)
        tol2 = tol**2
        pre = 0
        if mask is not None:
            # The decoupled cells first, in one step along s = (1 - mask) r (exact
            # for identity rows): the network then sees a residual that vanishes
            # there, as in training.
            s = (1 - mask) * r
            as_ = matvec(s)
            sas = jnp.vdot(s, as_)
            step = jnp.where(sas > 0, jnp.vdot(s, r) / jnp.where(sas > 0, sas, 1), 0)
            x0, r = x0 + step * s, r - step * as_
            pre = 1
        # state: x, r, ||r||^2, the last `orthogonalize` directions P (newest
        # first) with A P and p^T A p (zero directions with p^T A p = 1 at the
        # start), the products spent, the result
        k_dirs = max(orthogonalize, 1)
        init = (
            x0, r, jnp.vdot(r, r), jnp.zeros((k_dirs,) + b.shape, b.dtype),
            jnp.zeros((k_dirs,) + b.shape, b.dtype), jnp.ones((k_dirs,), b.dtype),
            jnp.asarray(0, jnp.int32), start_result(input_code, r),
        )  # fmt: skip

        def keep_going(state):
            rr, result = state[2], state[-1]
            return (result == RESULTS.successful) & (rr > tol2)

        def step(state):
            x, r, rr, p, ap, pap, k, result = state
            # the network sees the normalised residual: it was trained on unit
            # vectors, and the line search below fixes the scale
            rn = jnp.sqrt(rr)
            q = direction(r / jnp.where(rn > 0, rn, 1)).astype(b.dtype)
            if orthogonalize:
                # A-orthogonalise against the last `orthogonalize` directions,
                # which are A-orthogonal to each other (each was made so against
                # its predecessors in the window): one classical Gram-Schmidt pass
                q = q - ((ap @ q) / pap) @ p
            aq = matvec(q)
            qaq = jnp.vdot(q, aq)
            # q^T A q <= 0 proves A is not positive definite (or q = 0: the network
            # gave nothing new); NaN means overflow. The step is then not taken.
            bad = ~(qaq > 0)
            safe = jnp.where(bad, one, qaq)
            alpha = jnp.where(bad, 0, jnp.vdot(q, r) / safe)
            x = x + alpha * q
            k = k + 1
            # the recursive residual drifts from b - A x in finite precision:
            # recompute it every `residual_every` steps (one more product)
            r = lax.cond(
                k % residual_every == 0,
                lambda: b - matvec(x),
                lambda: r - alpha * aq,
            )
            code = RESULTS.where(
                jnp.isfinite(qaq),
                RESULTS.not_positive_definite,
                RESULTS.nonfinite_value,
            )
            result = RESULTS.where(bad, code, result)
            p = jnp.concatenate([q[None], p[:-1]])
            ap = jnp.concatenate([aq[None], ap[:-1]])
            pap = jnp.concatenate([safe[None], pap[:-1]])
            return (x, r, jnp.vdot(r, r), p, ap, pap, k, result)

        state, num_steps = iterate(step, keep_going, init, max_steps)
        matvecs = num_steps + num_steps // residual_every + pre
        return (
            state[0],
            state[-1],
            num_steps,
            {
                "matvecs": matvecs,
                "network_calls": num_steps,
            },
        )

    return loop


@compiled_once
def dcdm(
    operator,
    b,
    *,
    model=None,
    rtol=1e-6,
    atol=0.0,
    max_steps: int | None = None,
    x0=None,
    throw: bool = True,
    residual_every: int = 20,
    orthogonalize: int = 16,
    mask=None,
    grid_shape: tuple | None = None,
) -> Solution:
    r"""Solve ``A x = b`` on a grid, ``A`` symmetric positive definite, by the Deep
    Conjugate Direction Method (Kaneda, Akar, Chen, Kala, Hyde, Teran, ICML 2023).

    Each step, a convolutional network ``f ~ A^{-1}`` (up to scale) applied to the
    normalised residual proposes a direction ``q = f(r / ||r||)``; it is
    A-orthogonalised against the last ``orthogonalize`` directions, ``q <- q -
    sum_j (q^T A p_j)/(p_j^T A p_j) p_j`` (the paper: the last two), and an exact
    line search ``alpha = q^T r / q^T A q``
    updates ``x += alpha q``, ``r -= alpha A q`` (the true residual ``b - A x`` is
    recomputed every ``residual_every`` steps). The network need not be a symmetric
    preconditioner: this is a conjugate-*direction* method, not PCG. Stops when
    ``||b - A x||_2 <= max(rtol ||b||_2, atol)``.

    Args:
        operator: ``A`` as a function ``x -> A x`` on arrays of ``b``'s shape (e.g.
            :func:`jaxsolve.problems.poisson_obstacles`); symmetric positive
            definite.
        b: the right-hand side, grid-shaped: ``(N1, N2)`` or ``(N1, N2, N3)``.
        model: the network: ``None`` (the model shipped with jaxsolve for ``b``'s
            number of dimensions, trained on the obstacle-free Laplacian, 64x64
            in 2-D, 16x16x16 then 32x32x32 in 3-D), a path to a weights file
            (:func:`jaxsolve.load_dcdm_model`), a :class:`jaxsolve.DCDMNet`, or
            any function ``r -> q`` on grids.
        rtol, atol: relative and absolute tolerances (non-negative).
        max_steps: iteration cap (default 1000).
        x0: initial guess of ``b``'s shape (default zeros).
        throw: raise a runtime error if the solve fails (else inspect ``.result``).
        residual_every: steps between true-residual recomputations.
        orthogonalize: how many previous directions (static, ``>= 0``) each new
            one is A-orthogonalised against; the solver keeps them and their
            ``A p``, ``2 * orthogonalize`` grid-sized arrays. The paper takes 2,
            enough for a linear symmetric preconditioner (1 is then CG); the
            network is nonlinear, so older directions lose A-orthogonality, and a
            deeper window (a truncated flexible CG, Notay 2000) takes fewer steps:
            on ``benchmarks/dcdm.py``'s 2-D obstacle problems, 16 instead of 2
            takes the shipped model from 22 / 25 to 14 / 19 iterations (discs /
            blobs, 64^2) and from 18 / 32 to 15 / 30 (256^2), a model trained
            without white noise from 26 / 31 to 17 / 24 (64^2) and 30 / 51 to
            23 / 35 (128^2); deeper than 16 changes little.
        mask: ``1`` on the cells the network acts on, ``0`` on cells decoupled
            as identity rows of ``A`` (the solid cells of
            :func:`jaxsolve.problems.poisson_obstacles`), where the direction is
            the residual itself (exact there). Default: ``operator.fluid`` when
            the operator has that attribute (operators of
            :func:`~jaxsolve.problems.poisson_obstacles` do), else no mask. The
            network was trained without obstacles; without the mask the solid
            cells' residual, which it never saw, slows DCDM many times over.
        grid_shape: for a *flat* ``b`` of size ``prod(grid_shape)`` (and an
            operator on flat vectors, as in the derivative solves of
            :func:`jaxsolve.custom_root`, which ravel ``x``): the grid the
            network sees. ``x`` is then returned flat.

    Returns:
        :class:`jaxsolve.Solution` with ``.value = x`` (``b``'s shape),
        ``.num_steps``, ``.residual = ||b - A x||_2`` and ``.stats["matvecs"]``
        (operator products, including the solver's operator checks) and
        ``.stats["network_calls"]``. A non-SPD or singular operator ends with a
        code (``not_positive_definite`` when ``q^T A q <= 0`` is met,
        ``not_symmetric`` from the probe of :mod:`jaxsolve`'s Krylov core, else
        ``max_steps_reached``) within ``max_steps``.

    Differentiable with respect to ``b`` and the operator's arrays through
    ``jax.lax.custom_linear_solve`` (the solution does not depend on the directions
    taken): the tangent and transposed systems are solved by DCDM too.
    """
    if grid_shape is not None:
        return _dcdm_flat(
            operator, b, grid_shape, model=model, rtol=rtol, atol=atol,
            max_steps=max_steps, x0=x0, throw=throw, residual_every=residual_every,
            orthogonalize=orthogonalize, mask=mask,
        )  # fmt: skip
    b_shape = jnp.shape(b)
    network = resolve_model(model, tuple(b_shape))
    residual_every = check_positive_int(residual_every, "residual_every")
    orthogonalize = check_static_int(orthogonalize, "orthogonalize")
    if mask is None:
        mask = getattr(operator, "fluid", None)
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.shape != tuple(b_shape):
            raise ValueError(
                f"`mask` must have `b`'s shape {tuple(b_shape)}, got {mask.shape}"
            )
        mask = lax.stop_gradient(mask.astype(jnp.result_type(b, jnp.float32)))
    solution = krylov_solve(
        _dcdm_loop(network, tuple(b_shape), residual_every, mask, orthogonalize),
        "dcdm",
        operator,
        b,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        x0=x0,
        preconditioner=None,
        throw=throw,
        symmetric=True,
        default_max_steps=lambda n: 1000,
    )
    aux = dict(solution.aux or {})
    stats = dict(solution.stats)
    stats["network_calls"] = aux.pop("network_calls")
    return Solution(
        value=solution.value,
        result=solution.result,
        num_steps=solution.num_steps,
        residual=solution.residual,
        stats=stats,
        aux=aux or None,
    )


def _dcdm_flat(operator, b, grid_shape, *, x0, mask, **options) -> Solution:
    try:
        grid_shape = tuple(int(n) for n in grid_shape)
    except TypeError as e:
        raise ValueError(
            f"`grid_shape` must be a tuple of ints, got {grid_shape}"
        ) from e
    size = math.prod(grid_shape)
    if jnp.ndim(b) != 1 or jnp.shape(b)[0] != size:
        raise ValueError(
            f"with `grid_shape` {grid_shape}, `b` must be a flat vector of size "
            f"{size}, got shape {jnp.shape(b)}"
        )
    if callable(operator) and not hasattr(operator, "shape"):
        grid_operator = lambda x: jnp.reshape(operator(x.reshape(-1)), grid_shape)  # noqa: E731
    else:
        matrix = jnp.asarray(operator)
        grid_operator = lambda x: jnp.reshape(matrix @ x.reshape(-1), grid_shape)  # noqa: E731
    solution = dcdm(
        grid_operator,
        jnp.reshape(b, grid_shape),
        x0=None if x0 is None else jnp.reshape(x0, grid_shape),
        mask=None if mask is None else jnp.reshape(mask, grid_shape),
        **options,
    )
    return eqx.tree_at(lambda s: s.value, solution, solution.value.reshape(-1))
