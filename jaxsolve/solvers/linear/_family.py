"""Solving a family of related linear systems: sorting + Krylov recycling (SKR).

H. Wang, Z. Hao, J. Wang, Z. Geng, Z. Wang, B. Li, F. Wu, "Accelerating Data
Generation for Neural Operators via Krylov Subspace Recycling", ICLR 2024.
The systems are chained greedily by nearest neighbour in parameter space, so that
consecutive systems are close, and solved in that order by GCRO-DR, each starting
from the recycle space of the one before.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, PyTree

from ..._checks import as_float_array
from ..._solution import Solution
from ._gcrodr import RecycleSpace, gcrodr
from ._solve import LINEAR_METHODS

__all__ = ["solve_family", "greedy_order"]


def greedy_order(features: Array, start: int = 0) -> Array:
    r"""A nearest-neighbour chain through ``S`` points: start at ``start`` and go,
    again and again, to the closest point not yet visited (Euclidean distance of
    the rows of ``features``, ``(S, F)``). Returns the permutation ``(S,)`` (int32).

    ``O(S^2)`` distances, all in JAX (jit-able). For very many systems reduce the
    features first (a few low FFT modes of each field, say) and split the systems
    into groups along a space-filling curve, sorting (and solving) each group on
    its own: the groups are independent and can run in parallel (``vmap`` or one
    device each), the SKR paper's recipe for large ``S``.
    """
    features = jnp.asarray(features)
    num = features.shape[0]
    sq = jnp.sum(features**2, axis=1)
    # ||f_i - f_j||^2 via the Gram matrix, clipped at 0 against rounding.
    dist = jnp.maximum(sq[:, None] + sq[None, :] - 2 * features @ features.T, 0)

    def step(carry, _):
        current, visited = carry
        d = jnp.where(visited, jnp.inf, dist[current])
        nxt = jnp.argmin(d).astype(jnp.int32)
        return (nxt, visited.at[nxt].set(True)), current

    start = jnp.asarray(start, jnp.int32)
    visited = jnp.zeros((num,), bool).at[start].set(True)
    (last, _), order = lax.scan(step, (start, visited), None, length=num - 1)
    return jnp.concatenate([order, last[None]])


def _leading_size(params) -> int:
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves:
        raise ValueError("`params` must hold at least one array")
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
    if None in sizes or len(sizes) != 1:
        shapes = [jnp.shape(x) for x in leaves]
        raise ValueError(
            "`params` must be a pytree of arrays sharing a leading axis (one entry "
            f"per system), got leaf shapes {shapes}"
        )
    return sizes.pop()


def solve_family(
    make_operator: Callable,
    params: PyTree,
    b,
    *,
    method: str = "gcrodr",
    order: str = "sorted",
    features=None,
    make_preconditioner: Callable | None = None,
    **solver_options,
) -> Solution:
    r"""Solve ``S`` related systems ``A(p_s) x_s = b_s`` (the SKR pipeline).

    With ``method="gcrodr"`` the systems are solved one after the other
    (``lax.scan``), each starting from the recycle space of the previous one
    (:func:`jaxsolve.gcrodr`), in the order set by ``order``: ``"sorted"`` chains
    them greedily by nearest neighbour on ``features`` (:func:`greedy_order`),
    ``"given"`` keeps the input order. With a non-recycling method (``"gmres"``,
    ``"cg"``, ``"bicgstab"``, ...) each system is solved alone, in the same order
    (the ablation).

    Args:
        make_operator: ``p -> operator`` (a matrix, or a function ``x -> A x``) for
            one system's parameters ``p``.
        params: a pytree of arrays with a leading axis of ``S`` systems.
        b: one right-hand side (of the shape the operator acts on) or ``S`` of them
            stacked on a leading axis. ``b`` is taken as one right-hand side
            whenever the operator accepts its shape.
        method: ``"gcrodr"`` (default) or a name of :data:`LINEAR_METHODS`.
        order: ``"sorted"`` or ``"given"``.
        features: ``(S, F)`` features to sort by; default the flattened ``params``.
            For large ``S`` pass a reduction (e.g. a few FFT modes of each field).
        make_preconditioner: optional ``p -> preconditioner`` (one per system).
        **solver_options: passed to the solver (``rtol``, ``m``, ``k``, ``restart``,
            ``max_steps``, ``throw``, ...).

    Returns:
        One :class:`jaxsolve.Solution` with everything in the ORIGINAL order:
        ``value`` ``(S, ...)``, per-system ``result``, ``num_steps``, ``residual``,
        ``stats["matvecs"]`` ``(S,)``, plus ``stats["order"]``, the order in which
        the systems were solved. For ``"gcrodr"`` ``aux`` holds the last recycle
        space.
    """
    num = _leading_size(params)
    if order not in ("sorted", "given"):
        raise ValueError(f"`order` must be 'sorted' or 'given', got {order!r}")
    if method != "gcrodr" and method not in LINEAR_METHODS:
        raise ValueError(
            f"`method` must be 'gcrodr' or one of {sorted(LINEAR_METHODS)}, "
            f"got {method!r}"
        )
    for key in ("recycle", "preconditioner"):
        if key in solver_options:
            raise ValueError(
                f"`{key}` is set per system by solve_family"
                + (" (use `make_preconditioner`)" if key == "preconditioner" else "")
            )
    b = as_float_array(b, "b")
    p0 = jax.tree_util.tree_map(lambda x: x[0], params)
    op0 = make_operator(p0)
    single = _accepts(op0, b.shape, b.dtype)
    if not single:
        if b.ndim == 0 or b.shape[0] != num or not _accepts(op0, b.shape[1:], b.dtype):
            raise ValueError(
                f"`b` must be one right-hand side the operator accepts or {num} of "
                f"them stacked on a leading axis (params have {num} systems); got "
                f"shape {b.shape}"
            )

    if order == "sorted":
        if features is None:
            feats = jnp.concatenate(
                [
                    jnp.reshape(x, (num, -1)).astype(b.dtype)
                    for x in jax.tree_util.tree_leaves(params)
                ],
                axis=1,
            )
        else:
            feats = as_float_array(features, "features")
            if feats.ndim != 2 or feats.shape[0] != num:
                raise ValueError(
                    f"`features` must have shape ({num}, F), got {feats.shape}"
                )
        perm = greedy_order(feats)
    else:
        perm = jnp.arange(num, dtype=jnp.int32)

    sorted_params = jax.tree_util.tree_map(lambda x: jnp.take(x, perm, axis=0), params)
    sorted_b = None if single else jnp.take(b, perm, axis=0)

    def options(p):
        out = dict(solver_options)
        if make_preconditioner is not None:
            out["preconditioner"] = make_preconditioner(p)
        return out

    if method == "gcrodr":
        m = solver_options.get("m", 40)
        k = solver_options.get("k", 20)
        size = math.prod(b.shape if single else b.shape[1:])
        if m > size:  # gcrodr clips m (and k) to the system size
            m = size
            k = min(k, m - 1)
        zeros = jnp.zeros((size, k), b.dtype)
        init = RecycleSpace(U=zeros, C=zeros)

        def body(recycle, item):
            p, rhs = item
            rhs = b if single else rhs
            sol = gcrodr(make_operator(p), rhs, recycle=recycle, **options(p))
            plain = Solution(
                value=sol.value,
                result=sol.result,
                num_steps=sol.num_steps,
                residual=sol.residual,
                stats=sol.stats,
            )
            return sol.recycle, plain

        last, sols = lax.scan(body, init, (sorted_params, sorted_b))
        aux = last
    else:
        solver = LINEAR_METHODS[method]

        def body(_, item):
            p, rhs = item
            rhs = b if single else rhs
            sol = solver(make_operator(p), rhs, **options(p))
            plain = Solution(
                value=sol.value,
                result=sol.result,
                num_steps=sol.num_steps,
                residual=sol.residual,
                stats=sol.stats,
            )
            return None, plain

        _, sols = lax.scan(body, None, (sorted_params, sorted_b))
        aux = None

    inverse = jnp.argsort(perm)
    restore = lambda x: jnp.take(x, inverse, axis=0)  # noqa: E731
    return Solution(
        value=jax.tree_util.tree_map(restore, sols.value),
        result=jax.tree_util.tree_map(restore, sols.result),
        num_steps=restore(sols.num_steps),
        residual=restore(sols.residual),
        stats={**{k: restore(v) for k, v in sols.stats.items()}, "order": perm},
        aux=aux,
    )


def _accepts(operator, shape, dtype) -> bool:
    """Whether ``operator`` (a matrix or a function) acts on arrays of ``shape``."""
    if callable(operator) and not hasattr(operator, "shape"):
        try:
            out = jax.eval_shape(operator, jax.ShapeDtypeStruct(shape, dtype))
        except Exception:
            return False
        return getattr(out, "shape", None) == tuple(shape)
    mat_shape = jnp.shape(operator)
    return len(shape) == 1 and len(mat_shape) == 2 and mat_shape[1] == shape[0]
