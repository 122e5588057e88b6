"""Point clouds with a cost function: OT without the ``n x m`` cost matrix.

A :class:`PointCloud` stands in for ``C`` in :func:`~jaxsolve.solvers.ot.sinkhorn`
and :func:`~jaxsolve.solvers.ot.sinkhorn_newton_sparse`. The solvers touch the
cost only through a few reductions of the plan (``_kernel.py``); for a point cloud
these run over blocks of ``block_size`` rows, recomputing ``C`` block by block,
so memory is ``O(block_size m)`` for the block plus ``O((n + m) k)`` for the
solver's state. :class:`SparsePlan` is the plan of a large problem: its largest
entries per row.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from ..._checks import all_finite, as_float_array, check_positive_int

__all__ = ["PointCloud", "SparsePlan"]

_COSTS = ("sqeuclidean", "l1", "euclidean")
_PLANS = ("auto", "dense", "sparse")
# plan="auto" gives a dense plan up to this many entries (32 MB in float64).
_DENSE_PLAN_LIMIT = 2**22
# block_size=None: blocks of about this many entries (8 MB in float64).
_BLOCK_ENTRIES = 2**20


def _points(x, name):
    x = as_float_array(x, name)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(
            f"`{name}` must be a non-empty array of points (n, d), got shape {x.shape}"
        )
    return x


class PointCloud(eqx.Module):
    r"""The cost ``C_ij = c(x_i, y_j)`` between two point clouds, never formed whole.

    Pass it in place of ``C`` to :func:`~jaxsolve.solvers.ot.sinkhorn` or
    :func:`~jaxsolve.solvers.ot.sinkhorn_newton_sparse`. Every pass over the plan
    ``P_ij = exp((f_i + g_j - C_ij) / epsilon - 1)`` (log-sum-exps, row and
    column sums, the top-k entries of each row, the line search's sums) runs over
    blocks of ``block_size`` rows in a ``lax.scan``, recomputing the block of
    ``C``; column reductions are accumulated across blocks (an online
    log-sum-exp for Sinkhorn's column update). Memory: ``O(block_size m d)`` for
    a block, ``O((n + m) k)`` for SNS's state (``k`` entries per row of the
    sparsified Hessian); time: one evaluation of ``c`` per entry per pass. The
    results equal those of the dense ``C`` (:meth:`dense`) up to rounding.

    Derivatives through the implicit layer reach ``x`` and ``y`` (and ``a``,
    ``b``, ``epsilon``) as they reach ``C``; each block is rematerialised
    (``jax.checkpoint``), so derivatives keep the memory bound.

    Args:
        x: points ``(n, d)`` (or ``(n,)`` for ``d = 1``).
        y: points ``(m, d)``, the same ``d``.
        cost: ``"sqeuclidean"`` (``||x - y||_2^2``), ``"l1"``, ``"euclidean"``,
            or a function ``c(x_i, y_j) -> scalar`` of two points ``(d,)``
            (vectorised with ``vmap``; differentiable for derivatives in the
            points).
        block_size: rows of ``C`` per block (static). Larger blocks mean fewer
            scan steps and more memory (``block_size m`` entries, a few arrays
            of them at a time). Default ``None``: ``2^20 / m`` rows, clipped to
            ``[8, 256]``, so that a block (8 MB in float64) stays in the
            processor's caches: at ``n = m = 20,000`` (52 rows), one core,
            a float64 log-sum-exp 0.95 s against 1.26 s with 256 rows, row
            and column sums 0.79 s against 0.94 s; up to ``m = 4096`` it is
            256.
        plan: what ``solution.plan`` is: ``"dense"`` the ``(n, m)`` array,
            ``"sparse"`` a :class:`SparsePlan` (the ``plan_k`` largest entries of
            each row), ``"auto"`` (default) dense up to ``2**22`` entries.
        plan_k: entries per row of a sparse plan (static).

    SNS's default ``k = max(32, ceil(n / 20))`` (1,000 at ``n = 20,000``) is what
    a 2-D cloud at ``epsilon = 1e-3`` (normalised costs) needs: at ``n = 20,000``,
    ``k = 700`` stopped at 1e-6 after 20 Newton steps, while 1,000 reaches 7.6e-9
    in 8 (14 before SNS's Anderson mixing, when 1,500 took 6 and 2,000 took 4,
    but no less time: each selection, a top-k of every row, costs 7 s at 1,000
    and 12.7 s at 2,000 on one core (the other busy), and memory grows with
    ``n k``: peak 1.9 GB at 1,000, 2.5 GB at 1,500). A solve there selects once
    and keeps the pattern while it holds the plan's mass
    (``stats["pattern_selections"]``).

    ``sol.cost`` is the regularised cost ``<C, P> + epsilon sum P log P`` with its
    envelope gradient in the points. Costs should be normalised (e.g. divided by
    their largest value) before choosing ``epsilon`` as for a matrix.
    """

    x: Array
    y: Array
    cost: str | Callable = eqx.field(static=True)
    block_size: int = eqx.field(static=True)
    plan: str = eqx.field(static=True)
    plan_k: int = eqx.field(static=True)
    # The transposed cloud of a callable cost evaluates c(y_j, x_i) as c(x_i, y_j).
    swapped: bool = eqx.field(static=True)
    # As given (None: block_size was chosen from m), for the transpose.
    block_size_given: int | None = eqx.field(static=True)

    def __init__(
        self,
        x,
        y,
        cost: str | Callable = "sqeuclidean",
        *,
        block_size: int | None = None,
        plan: str = "auto",
        plan_k: int = 32,
        swapped: bool = False,
    ):
        x, y = _points(x, "x"), _points(y, "y")
        if x.shape[1] != y.shape[1]:
            raise ValueError(
                f"`x` and `y` must have the same dimension, got points of "
                f"dimension {x.shape[1]} and {y.shape[1]}"
            )
        if isinstance(cost, str):
            if cost not in _COSTS:
                raise ValueError(
                    f"`cost` must be one of {_COSTS} or a function c(x_i, y_j), "
                    f"got {cost!r}"
                )
        elif not callable(cost):
            raise ValueError(
                "`cost` must be one of "
                f"{_COSTS} or a function c(x_i, y_j) -> scalar, got "
                f"{type(cost).__name__}"
            )
        else:
            u, v = (y, x) if swapped else (x, y)
            out = jax.eval_shape(cost, u[0], v[0])
            if getattr(out, "shape", None) != ():
                raise ValueError(
                    "`cost` must map two points of shape "
                    f"({x.shape[1]},) to a scalar, got {out}"
                )
        if plan not in _PLANS:
            raise ValueError(f"`plan` must be one of {_PLANS}, got {plan!r}")
        self.x, self.y = x, y
        self.cost = cost
        if block_size is not None:
            block_size = check_positive_int(block_size, "block_size")
        self.block_size_given = block_size
        self.block_size = (
            block_size
            if block_size is not None
            else min(256, max(8, _BLOCK_ENTRIES // y.shape[0]))
        )
        self.plan = plan
        self.plan_k = check_positive_int(plan_k, "plan_k")
        self.swapped = bool(swapped)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.x.shape[0], self.y.shape[0])

    @property
    def dtype(self):
        return jnp.result_type(self.x, self.y)

    def astype(self, dtype) -> PointCloud:
        return eqx.tree_at(
            lambda g: (g.x, g.y), self, (self.x.astype(dtype), self.y.astype(dtype))
        )

    @property
    def T(self) -> PointCloud:
        """The cloud of ``C^T``: ``y`` against ``x``."""
        return PointCloud(
            self.y,
            self.x,
            self.cost,
            block_size=self.block_size_given,
            plan=self.plan,
            plan_k=self.plan_k,
            swapped=not self.swapped,
        )

    def cost_block(self, xb: Array) -> Array:
        """``C`` on the rows of the points ``xb`` ``(r, d)``: ``(r, m)``."""
        if isinstance(self.cost, str):
            # Explicit differences (exact, as in pairwise_cost), summed over the
            # dimensions by a Python loop: XLA's CPU reduction over a short
            # last axis is ~3x slower than these elementwise sums.
            total = None
            for k in range(xb.shape[1]):
                diff = xb[:, k, None] - self.y[None, :, k]
                term = jnp.abs(diff) if self.cost == "l1" else diff * diff
                total = term if total is None else total + term
            if self.cost != "euclidean":
                return total
            # sqrt has an infinite derivative at 0: differentiate a safe argument.
            positive = total > 0
            return jnp.where(positive, jnp.sqrt(jnp.where(positive, total, 1)), 0)
        c = self.cost
        if self.swapped:
            c = lambda u, v, c=self.cost: c(v, u)  # noqa: E731
        return jax.vmap(jax.vmap(c, (None, 0)), (0, None))(xb, self.y)

    def dense(self) -> Array:
        """The whole ``(n, m)`` cost matrix (for checks on small clouds)."""
        return self.cost_block(self.x)

    def finite(self) -> Array:
        return all_finite(self.x, self.y)

    def sparse_plan(self) -> bool:
        if self.plan == "auto":
            return self.shape[0] * self.shape[1] > _DENSE_PLAN_LIMIT
        return self.plan == "sparse"


class SparsePlan(eqx.Module):
    """The largest entries of each row of a transport plan ``P`` ``(n, m)``.

    Attributes:
        indices: ``(n, k)`` int32 column indices, row ``i``'s ``k`` largest
            entries (in decreasing order).
        values: ``(n, k)`` the plan's entries there, ``P[i, indices[i]]``
            (differentiable like a dense plan).
        shape: ``(n, m)``, static.

    It is exact where each row's mass lies within ``k`` entries; otherwise it
    misses ``sum(a) - values.sum()`` of the mass (the marginals of the solve, its
    ``residual`` and ``cost`` are computed from the whole plan, not from this).
    """

    indices: Array
    values: Array
    shape: tuple[int, int] = eqx.field(static=True)

    def todense(self) -> Array:
        """The ``(n, m)`` array with zeros outside the kept entries."""
        n, m = self.shape
        rows = jnp.broadcast_to(jnp.arange(n)[:, None], self.indices.shape)
        return (
            jnp.zeros((n, m), self.values.dtype).at[rows, self.indices].add(self.values)
        )
