"""The few things the OT solvers need from the cost, for a matrix or a point cloud.

The solvers never index ``C`` themselves: they call the reductions of the plan

    log P_ij = (f_i + g_j - C_ij) / epsilon - 1     on the support a_i > 0, b_j > 0
    (-inf off it)

defined here. Each is written once, as a function of a block of rows of ``C``
(``C_block (r, m)`` with the row arrays ``(r, ...)``) returning per-row outputs
and a column (or scalar) partial result. For a matrix the block is the whole
matrix (one call, the same arithmetic as forming ``P``); for a
:class:`~jaxsolve.solvers.ot.PointCloud` a ``lax.scan`` runs over blocks of
``block_size`` rows, recomputing ``C`` per block, and combines the partial
results (a sum). The scan body is rematerialised (``jax.checkpoint``) so that
linearising or transposing a pass (the implicit layer does both) stores the block
inputs only, not the ``n x m`` intermediates.

Blocks of a point cloud are reduced differently from a matrix (``fast``), for
XLA's CPU code: a reduction fused with ``exp`` runs a scalar loop, and a
reduction over the leading axis is slower still (measured on a 256 x 20,000
block: ``exp`` then a row sum 101 ms, a column sum 120 ms, a column log-sum-exp
240 ms, against 54 ms for ``exp`` alone). So the block's ``exp`` is materialised
(``optimization_barrier``) and summed by matrix-vector products (56 ms for row
and column sums together), and a column log-sum-exp is a row log-sum-exp of the
transposed cloud. A small matrix keeps the plain reductions.

A large matrix (``2^16`` entries or more) is held by the solver loops in both
layouts (:class:`BothLayouts`), so that every pass is a row pass, and its
exponents are written with broadcast vectors only (:func:`_exponent_parts`), the
form that XLA's vectorised CPU reductions (``__ynn_fusion``, which postdate the
point-cloud measurements above) fuse whole; Sinkhorn's log-sum-exps there take
the previous potential as their stabiliser (:func:`row_lse`). Measured on one
core at ``n = m = 5000``: a Sinkhorn step 217 ms before, 85-110 ms after; SNS on
``benchmarks/ot.py``'s ``points-5000`` 12.9 s to 8.1-8.6 s.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from ._pointcloud import PointCloud, SparsePlan

__all__ = [
    "BothLayouts",
    "both_layouts",
    "shape",
    "row_lse",
    "col_lse",
    "plan_sums",
    "select",
    "pattern_log_plan",
    "phi_sum",
    "schur_col",
    "support_max",
    "total_mass",
    "plan",
]


class BothLayouts(NamedTuple):
    """A cost matrix held in both layouts: ``C`` and a materialised ``Ct = C.T``.

    A column reduction of the plan (Sinkhorn's column log-sum-exp, ``P^T 1``)
    is then a row reduction of ``Ct``: XLA's CPU code reduces along the
    contiguous axis far faster (at ``n = m = 5000``, in a Sinkhorn loop on one
    core: 217 ms a step with a column log-sum-exp of ``C``, 124 ms with a row
    log-sum-exp of ``Ct``; ``P 1`` and ``P^T 1`` by two row passes 52 ms against
    one pass with a column sum 71 ms). The solvers' loops build it once per
    solve (:func:`both_layouts`), at the price of a second ``n x m`` array.
    """

    C: Array
    Ct: Array

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.C.shape)

    @property
    def dtype(self):
        return self.C.dtype

    @property
    def T(self) -> BothLayouts:
        return BothLayouts(self.Ct, self.C)


# Below this many entries (256 x 256) a matrix sits in the caches, a column
# reduction costs little, and the plain form compiles faster: small problems
# (minibatches, tests) keep it.
_BOTH_LAYOUTS_MIN = 2**16


def both_layouts(C):
    """``C`` as :class:`BothLayouts` (the transposed copy made here, once), for a
    matrix with at least ``2^16`` entries; anything else unchanged."""
    if isinstance(C, PointCloud) or C.size < _BOTH_LAYOUTS_MIN:
        return C
    return BothLayouts(C, _transposed_copy(C))


def _transposed_copy(C, rows=8):
    """``C.T``, written once into a buffer of its own by a loop over blocks of
    ``rows`` rows (as fast as XLA's transpose: 138 against 134 ms at 5000 x
    5000). A plain ``C.T`` is a layout change that XLA materialised once per
    consuming loop (twice in SNS: 0.5 s at 5000 x 5000), the optimization
    barrier around it notwithstanding."""
    n, m = C.shape
    rows = min(rows, n)
    blocks = -(-n // rows)

    def write(i, Ct):
        # The last block is clamped to end at row n (it may overlap the one
        # before it, rewriting the same values).
        start = jnp.minimum(i * rows, n - rows)
        block = lax.dynamic_slice_in_dim(C, start, rows, 0)
        return lax.dynamic_update_slice_in_dim(Ct, block.T, start, 1)

    return lax.fori_loop(0, blocks, write, jnp.zeros((m, n), C.dtype))


def _rows_of(C):
    return C.C if isinstance(C, BothLayouts) else C


def shape(C) -> tuple[int, int]:
    return tuple(C.shape)


_barrier = lax.optimization_barrier


def _row_sum(e, fast):
    return e @ jnp.ones(e.shape[1], e.dtype) if fast else e.sum(1)


def _col_sum(e, fast, w=None):
    """``sum_i w_i e_ij`` (``w = 1`` by default)."""
    if fast:
        return (jnp.ones(e.shape[0], e.dtype) if w is None else w) @ e
    return e.sum(0) if w is None else jnp.sum(e * w[:, None], axis=0)


def _row_lse(z, fast):
    if not fast:
        return jax.nn.logsumexp(z, axis=1)
    z = _barrier(z)
    top = jnp.max(z, axis=1)
    top = lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0))
    e = _barrier(jnp.exp(z - top[:, None]))
    return jnp.log(_row_sum(e, True)) + top


def _map_rows(C, fn, rows, col_init=None, combine=None):
    """``fn(C_block, rows_block, fast) -> (row_out, col_part)`` over row blocks
    (``fast``: a block of a point cloud, see the module's docstring).

    ``rows``: a pytree of ``(n, ...)`` arrays, split into blocks alongside ``C``
    (padded with zeros: each ``fn`` masks rows by a support indicator among
    them, so that padding contributes nothing). Returns ``(row_out, col)``:
    ``row_out`` stacked back to ``(n, ...)``, ``col`` the ``col_part``s folded
    with ``combine`` from ``col_init``.
    """
    if not isinstance(C, PointCloud):
        return fn(_rows_of(C), rows, False)
    n = C.shape[0]
    size = min(C.block_size, n)
    blocks = -(-n // size)
    pad = blocks * size - n

    def split(r):
        r = jnp.pad(r, [(0, pad)] + [(0, 0)] * (r.ndim - 1))
        return r.reshape(blocks, size, *r.shape[1:])

    # Padding rows repeat the last point (not zeros): a user's cost may not be
    # finite at 0, and a NaN there would leak into derivatives even when masked.
    xs = jnp.pad(C.x, ((0, pad), (0, 0)), mode="edge").reshape(blocks, size, -1)

    @jax.checkpoint
    def body(acc, block):
        xb, rb = block
        row_out, part = fn(C.cost_block(xb), rb, True)
        return (None if combine is None else combine(acc, part)), row_out

    acc, row_out = lax.scan(body, col_init, (xs, jax.tree_util.tree_map(split, rows)))
    row_out = jax.tree_util.tree_map(
        lambda r: r.reshape(blocks * size, *r.shape[2:])[:n], row_out
    )
    return row_out, acc


def _exponent_parts(f, g, epsilon, ra, cb):
    """``(u, v, w)`` with ``log P_ij = u_i + v_j - C_ij w_j``: ``u = f / epsilon
    - 1`` and ``v = g / epsilon`` on the supports, ``-inf`` off them;
    ``w = 1 / epsilon`` as an ``(m,)`` vector.

    Why this form: XLA's CPU library fusions (``__ynn_fusion``, a reduction
    with its ``exp``, vectorised) take elementwise arithmetic with broadcast
    *vectors*, but not a per-entry select (``where``) nor a broadcast scalar
    constant (``1 / epsilon``, ``-1``); either made XLA write the whole ``n x m``
    block out before each reduction (a Sinkhorn step at ``n = m = 5000`` took
    217 ms; with this form, the transposed copy and the one-pass log-sum-exps
    of :func:`row_lse`, 85-110 ms, on one core). ``w`` is written
    ``1 / epsilon + 0 g`` to be a vector that depends on the loop state, so that
    XLA does not hoist ``C w`` out of a loop as another ``n x m`` array.
    ``f`` and ``g`` are masked before the division so that their derivatives
    are 0 off the support, never ``inf * 0``."""
    f = jnp.where(ra, f, 0)
    g = jnp.where(cb, g, 0)
    u = jnp.where(ra, f / epsilon - 1, -jnp.inf)
    v = jnp.where(cb, g / epsilon, -jnp.inf)
    return u, v, 1 / epsilon + 0 * g


def _log_plan(C, f, g, epsilon, ra, cb, vector_form=False):
    """``log P`` on a block, ``-inf`` off the support (potentials there are
    masked first, so that their derivatives are 0, never ``inf * 0``).
    ``vector_form`` (large matrices, :class:`BothLayouts`): written as in
    :func:`_exponent_parts`, for XLA's vectorised reductions; small matrices
    keep the plain form, which compiles faster (sinkhorn at 60 x 50: 1.36 s
    against 1.51 s)."""
    if vector_form:
        u, v, w = _exponent_parts(f, g, epsilon, ra, cb)
        return u[:, None] + v[None, :] - C * w[None, :]
    f = jnp.where(ra, f, 0)
    g = jnp.where(cb, g, 0)
    z = (f[:, None] + g[None, :] - C) / epsilon - 1
    return jnp.where(ra[:, None] & cb[None, :], z, -jnp.inf)


def row_lse(C, g, epsilon, b, guess=None, active=None) -> Array:
    """``LSE_j((g_j - C_ij) / epsilon - 1)`` over the support of ``b``: ``(n,)``.
    (``log (P 1)_i = f_i / epsilon + row_lse_i``; rows are not masked.)

    For :class:`BothLayouts` (large matrices) only, ``guess`` (``(n,)``,
    finite) may give a close guess of the result on the rows where ``active``
    (bool, ``(n,)``) is true, such as its value at the previous Sinkhorn step.
    The sum ``sum_j exp(z_ij - guess_i)`` then needs no max pass: one pass over
    ``C`` instead of two (85 against 157 ms a Sinkhorn step at 5000 x 5000). If on
    any active row the sum leaves ``[sqrt(tiny), 1 / sqrt(tiny)]`` (the guess was
    off by more than 354 in float64, 43 in float32, as at the first steps or
    after epsilon changes), the exact two-pass log-sum-exp is computed instead
    (a ``lax.cond``; under ``vmap`` both branches run, which is why small
    matrices, the minibatch case, ignore ``guess``). Inside that range the result
    equals the exact one up to rounding: an entry that underflows (below
    ``tiny``, denormals being flushed) is below ``sqrt(tiny)`` of the row's sum.
    Rows not ``active`` may come out non-finite."""
    n = shape(C)[0]
    cb = b > 0
    if not isinstance(C, BothLayouts):
        gs = jnp.where(cb, g, 0)

        def fn(Cb, _, fast):
            z = (gs[None, :] - Cb) / epsilon - 1
            return _row_lse(jnp.where(cb[None, :], z, -jnp.inf), fast), None

        return _map_rows(C, fn, jnp.zeros(n, g.dtype))[0]

    Cr = C.C
    _, v, w = _exponent_parts(jnp.zeros(n, g.dtype), g, epsilon, True, cb)
    v = v - 1

    def log_terms(Cb, v, w):
        return v[None, :] - Cb * w[None, :]

    def exact():
        # Two passes, each fused whole with its reduction. Each pass gets its
        # own copies of the operands (the barrier): with shared ones XLA
        # materialised the exponents, or the broadcast vectors, as n x m arrays.
        top = jnp.max(log_terms(Cr, v, w), axis=1)
        top = lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0))
        terms = jnp.exp(log_terms(*_barrier((Cr, v, w))) - top[:, None])
        return jnp.log(terms.sum(1)) + top

    if guess is None:
        return exact()
    sums = jnp.exp(log_terms(Cr, v, w) - guess[:, None]).sum(1)
    lo = float(jnp.finfo(sums.dtype).tiny) ** 0.5
    in_range = (sums >= lo) & (sums <= 1 / lo)
    good = jnp.all(in_range | ~active)
    return lax.cond(good, lambda: jnp.log(sums) + guess, exact)


def col_lse(C, f, epsilon, a, guess=None, active=None) -> Array:
    """``LSE_i((f_i - C_ij) / epsilon - 1)`` over the support of ``a``: ``(m,)``;
    for a point cloud or :class:`BothLayouts`, the row log-sum-exp of the
    transpose (``guess``, ``active``: see :func:`row_lse`)."""
    if isinstance(C, (PointCloud, BothLayouts)):
        return row_lse(C.T, f, epsilon, a, guess, active)
    z = (jnp.where(a > 0, f, 0)[:, None] - C) / epsilon - 1
    return jax.nn.logsumexp(jnp.where((a > 0)[:, None], z, -jnp.inf), axis=0)


def _row_sums(C, f, g, epsilon, a, b) -> Array:
    """``P 1`` of one layout of a :class:`BothLayouts` (one vectorised row
    pass)."""
    return jnp.exp(_log_plan(C, f, g, epsilon, a > 0, b > 0, True)).sum(1)


def plan_sums(C, f, g, epsilon, a, b) -> tuple[Array, Array]:
    """``(P 1, P^T 1)``: ``(n,)``, ``(m,)``."""
    if isinstance(C, BothLayouts):
        return _row_sums(C.C, f, g, epsilon, a, b), _row_sums(C.Ct, g, f, epsilon, b, a)
    cb = b > 0

    def fn(Cb, rows, fast):
        fb, ra = rows
        P = jnp.exp(_log_plan(Cb, fb, g, epsilon, ra, cb))
        P = _barrier(P) if fast else P
        return _row_sum(P, fast), _col_sum(P, fast)

    init = jnp.zeros(shape(C)[1], f.dtype)
    return _map_rows(C, fn, (f, a > 0), init, jnp.add)


def select(C, f, g, epsilon, a, b, k: int) -> tuple[Array, Array]:
    """The ``k`` largest entries of each row of ``P``: their column indices
    ``(n, k)`` int32 and their costs ``C_ij`` ``(n, k)`` (fixed while the
    potentials move, so the entries' values follow from :func:`pattern_log_plan`
    without another pass).

    The selection runs in float32: XLA's CPU top-k is ~10x faster there than in
    float64 (a measured 6 ms against 57 ms at n = 500, k = 32), and which of two
    nearly equal entries is kept does not matter to a sparsified Hessian."""
    vector_form = isinstance(C, BothLayouts)
    cb = b > 0

    def fn(Cb, rows, fast):
        fb, ra = rows
        z = _log_plan(Cb, fb, g, epsilon, ra, cb, vector_form)
        idx = lax.top_k(z.astype(jnp.float32), k)[1]
        return (idx, jnp.take_along_axis(Cb, idx, axis=1)), None

    return _map_rows(C, fn, (f, a > 0))[0]


def pattern_log_plan(f, g, epsilon, a, b, idx, cost) -> Array:
    """``log P`` at the entries ``idx`` ``(n, k)`` whose costs are ``cost``."""
    z = (f[:, None] + g[idx] - cost) / epsilon - 1
    return jnp.where((a > 0)[:, None] & (b > 0)[idx], z, -jnp.inf)


def phi_sum(C, f, g, epsilon, a, b, x, y) -> Array:
    """``sum_ij P_ij phi(t_ij)``, ``phi(t) = exp(t) - 1 - t >= 0``, for a step
    ``t_ij = x_i + y_j`` of the exponents: the line search's remainder term
    (:func:`~jaxsolve.solvers.ot._sns`), without cancellation or overflow.

    Each term is ``P_ij (expm1(t_ij) - t_ij)``: no per-entry branch, so that for
    a large matrix (:class:`BothLayouts`) the pass fuses whole into one of XLA's
    vectorised reductions (at ``n = m = 5000`` on one core: 80 ms a call, where
    a Taylor branch for small ``|t|`` made XLA write ``P`` and ``t`` out as
    ``n x m`` arrays, 85 ms once per line search plus 70 ms a call). Its
    relative rounding error is about ``2^-52 / |t|`` (measured against 40-digit
    arithmetic: ``3e-4`` at ``|t| = 1e-12``, ``3e-7`` at ``1e-9``, ``4e-13`` at
    ``1e-3``): ample for an Armijo test, whose margin is a fixed fraction of
    the remainder, and with no cancellation against the plan's mass (a
    difference of two dual values would lose every digit near the solution).

    ``t`` depends on ``x_i + y_j`` only, so ``y`` is first centred on the
    support (``x`` shifted the other way) and both are set to 0 off it: then
    ``|t_ij| <= 2 max_support |x_i + y_j|`` at every entry, so ``expm1(t)``
    cannot overflow where ``P = 0`` (``0 * inf`` would be NaN); the line search
    tries ``|t| <= 100`` on the support, where ``P`` underflows (to 0) only if
    ``P exp(t) < e^-600``.
    """
    vector_form = isinstance(C, BothLayouts)
    ra, cb = a > 0, b > 0
    y_hi, y_lo = support_max(jnp.stack([y, -y]), cb)  # one reduction
    centre = (y_hi + -y_lo) / 2
    x = jnp.where(ra, x + centre, 0)
    y = jnp.where(cb, y - centre, 0)
    if vector_form:
        u, v, w = _exponent_parts(f, g, epsilon, ra, cb)
        # + 0 x, + 0 y: inside the line search's loop f and g are constant, and
        # XLA would hoist P (or C w) out of it as an n x m array; x and y vary.
        u, w = u + 0 * x, w + 0 * y
        plan = jnp.exp(u[:, None] + v[None, :] - C.C * w[None, :])
        t = x[:, None] + y[None, :]
        return jnp.sum(plan * (jnp.expm1(t) - t))

    def fn(Cb, rows, fast):
        fb, rab, xb = rows
        plan = jnp.exp(_log_plan(Cb, fb, g, epsilon, rab, cb))
        t = xb[:, None] + y[None, :]
        terms = plan * (jnp.expm1(t) - t)
        if fast:
            return None, jnp.sum(_row_sum(_barrier(terms), True))
        return None, jnp.sum(terms)

    init = jnp.zeros((), f.dtype)
    return _map_rows(C, fn, (f, ra, x), init, jnp.add)[1]


def support_max(v, support) -> Array:
    """``max_j v_ij`` over ``j`` where ``support`` (broadcast against ``v``,
    ``(r, l)``), ``-inf`` where empty: ``(r,)``, by one reduction (several
    extremes at the compile cost of one; ``min v = -max(-v)`` exactly)."""
    return jnp.max(jnp.where(support, v, -jnp.inf), axis=-1)


def schur_col(C, f, g, epsilon, a, b, d1) -> Array:
    """``sum_i P_ij^2 / d1_i``: ``(m,)`` (the diagonal of ``P^T D1^{-1} P``)."""
    vector_form = isinstance(C, BothLayouts)
    cb = b > 0

    def fn(Cb, rows, fast):
        fb, ra, d1b = rows
        P = jnp.exp(_log_plan(Cb, fb, g, epsilon, ra, cb, vector_form))
        if fast:
            return None, _col_sum(_barrier(P * P), True, 1 / jnp.where(ra, d1b, 1))
        return None, jnp.sum(P * P / jnp.where(ra, d1b, 1)[:, None], axis=0)

    init = jnp.zeros(shape(C)[1], f.dtype)
    return _map_rows(C, fn, (f, a > 0, d1), init, jnp.add)[1]


def total_mass(C, f, g, epsilon, a, b) -> Array:
    """``sum_ij P_ij``."""
    vector_form = isinstance(C, BothLayouts)
    cb = b > 0

    def fn(Cb, rows, fast):
        fb, ra = rows
        P = jnp.exp(_log_plan(Cb, fb, g, epsilon, ra, cb, vector_form))
        return None, jnp.sum(_row_sum(_barrier(P), True)) if fast else jnp.sum(P)

    init = jnp.zeros((), f.dtype)
    return _map_rows(C, fn, (f, a > 0), init, jnp.add)[1]


def plan(C, f, g, epsilon, a, b):
    """The plan: the ``(n, m)`` array, or for a point cloud whose ``plan`` option
    asks for it, a :class:`SparsePlan` of its ``plan_k`` largest entries per row."""
    vector_form = isinstance(C, BothLayouts)
    if isinstance(C, PointCloud) and C.sparse_plan():
        k = min(C.plan_k, C.shape[1])
        idx, cost = select(C, f, g, epsilon, a, b, k)
        values = jnp.exp(pattern_log_plan(f, g, epsilon, a, b, idx, cost))
        return SparsePlan(idx, values, C.shape)
    cb = b > 0

    def fn(Cb, rows, fast):
        fb, ra = rows
        return jnp.exp(_log_plan(Cb, fb, g, epsilon, ra, cb, vector_form)), None

    return _map_rows(C, fn, (f, a > 0))[0]
