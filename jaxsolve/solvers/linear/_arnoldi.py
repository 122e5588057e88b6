"""The Arnoldi / least-squares kernel shared by GMRES and GCRO-DR.

One cycle extends an orthonormal basis ``W`` (rows, ``(m + 1, n)``) by Arnoldi steps
on an operator ``A`` (already composed with a right preconditioner). Rows
``0 .. p-1`` of ``W`` may hold a fixed orthonormal block ``C`` (GCRO-DR's recycled
``C = A U``; ``p = 0`` for GMRES) and row ``p`` the normalised residual. Step ``j``
(``p <= j < m``) orthogonalises ``w = A W[j]`` against rows ``0 .. j``, so that,
with ``V_hat`` the columns ``[U D, W[p:m]]``,

    A V_hat = W^T G,        G = [[D, B], [0, H]]  ((m + 1, m), upper Hessenberg)

where ``B = C^T A V`` (zero for GMRES) and ``H`` is Arnoldi's Hessenberg matrix.
The least-squares problem ``min_y || beta e_p - G y ||`` is kept solved as the
columns arrive: the Givens rotations that make ``G`` triangular are accumulated
in one dense ``(m + 1, m + 1)`` matrix ``Q^T``, so a new column is rotated by one
small matrix-vector product instead of a sequential loop over the previous
rotations, and ``|g[j + 1]|`` (``g = Q^T beta e_p``) is the residual norm after
step ``j``, which stops the cycle as soon as it meets the tolerance.

Orthogonalisation is classical Gram-Schmidt, one sweep over the filled part of
the basis (one product ``W w`` and one ``h W``), repeated only when the sweep
cancelled ``w`` almost entirely:
``||w_new|| < ||w|| / 10``, with ``||w||^2 = ||h||^2 + ||w_new||^2`` so that the
test costs no extra pass (the selective reorthogonalisation of Daniel, Gragg,
Kaufman and Stewart, 1976, with a looser threshold than their ``1 / sqrt 2``).
Why 1/10: at ``1 / sqrt 2`` the second sweep ran at nearly every step of GMRES and
GCRO-DR on the benchmark's PDE systems (the new Krylov direction is mostly in the
space already) and cost 40 % of the time without changing a single product count
(``benchmarks/krylov.py``); PETSc's GMRES, the SKR paper's reference, never
reorthogonalises by default. A lost digit still triggers the second sweep, and
the solvers check the true residual ``b - A x`` before they report success, so a loss of
orthogonality can only cost steps, never a wrong answer.

The sweep skips the rows not yet filled. The basis is carried through the cycle
as static blocks of at most ``_BLOCK_ROWS = 16`` rows (two for GMRES(30), three
for ``m = 40``), and step ``j`` sweeps only the blocks that hold rows ``0 .. j``:
one ``lax.switch`` whose branch ``i`` sweeps blocks ``0 .. i`` (the rows of the
last one beyond ``j`` are zero, so they still need no mask). Sweeping all
``m + 1`` rows every step, as before, did about twice the work needed on
average. A new row is written by one ``lax.cond`` a block, in place (only the
block that holds it is touched), and the carry holds the newest vector itself,
the next product's input, instead of reading it back. Under ``vmap`` a switch on
a batched index would run every branch; a ``custom_vmap`` rule switches once on
the largest ``j`` of the batch instead (exact, since each element's rows beyond
its own ``j`` are zero). Measured on one pinned core, on
``benchmarks/krylov.py``'s 64x64 convection-diffusion system (GMRES(30), 329
products either way): 42.3 to 34.2 us per product (BiCGStab 19.0 and 19.6: the
ratio 2.22x to 1.75x); GMRES(40) on the 40 Darcy systems (80x80, 61430 products)
5.00 and 5.86 s to 3.87 and 3.79 s in two runs each, 81-95 to 62-63 us per
product. What did not pay: sweeping a static slice ``W[:r]`` of the one array
(XLA on CPU copies the slice before the product: a 16-row prefix of the 31-row
basis cost 27 us a sweep against 28.5 for all 31 rows, a 24-row one 40); a
``lax.cond`` around each block's sweep (a taken one cost about 5 us a step more
than the same products unconditionally, where the switch costs nothing
measurable); blocks of 8 rows (four small products a pass: 42 us per product,
no better than one block); writing rows through the switch (XLA copies the
blocks a branch passes through: 24 us a step). GCRO-DR(40, 20) gains nothing
measurable (the Darcy benchmark's sorted chain, 2.2-2.5 s before and after): its
first ``k`` rows are always swept, and most of its time per product goes to the
dense work at the end of each cycle, not to these steps. The branches cost some
compilation (``benchmarks/datagen.py`` at 64x64, single runs: GMRES 2.5 to 3.2 s,
GCRO-DR 4.4 to 5.4 s).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import solve_triangular
from jaxtyping import Array

from ..._iterate import iterate

__all__ = ["ArnoldiCycle", "arnoldi_cycle", "least_squares_solution"]

_REORTHOGONALISE = 0.1
# Rows per block of the basis (see the module docstring): the sweep at step j
# covers the blocks that hold rows 0 .. j.
_BLOCK_ROWS = 16


def _row_blocks(rows: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Offsets and sizes of ``ceil(rows / _BLOCK_ROWS)`` near-equal row blocks."""
    num = max(1, -(-rows // _BLOCK_ROWS))
    sizes = tuple(rows // num + (i < rows % num) for i in range(num))
    offsets = tuple(sum(sizes[:i]) for i in range(num))
    return offsets, sizes


def _filled_blocks(offsets, j):
    """The index of the last block that holds a row ``<= j`` (0-based)."""
    return sum((j >= o).astype(jnp.int32) for o in offsets[1:])


def _sweep_prefix(count, blocks, w):
    """One Gram-Schmidt sweep over the first ``count`` blocks: ``h = W w`` and
    ``w - h W`` (the other blocks' rows are zero: their ``h`` is 0). The
    subtraction happens here, inside the switch, so that ``w`` reaches it as a
    materialised operand: outside, XLA fused a stencil operator's product into
    both the sweep and the subtraction and applied it twice a step."""
    hs = [blk @ w for blk in blocks[:count]]
    d = hs[0] @ blocks[0]
    for h_i, blk in zip(hs[1:], blocks[1:count], strict=True):
        d = d + h_i @ blk
    rest = sum(blk.shape[0] for blk in blocks[count:])
    if rest:
        hs.append(jnp.zeros((rest,), w.dtype))
    return jnp.concatenate(hs) if len(hs) > 1 else hs[0], w - d


def _sweep_switch(blocks, w, j):
    sizes = [blk.shape[0] for blk in blocks]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    branches = [partial(_sweep_prefix, i + 1) for i in range(len(blocks))]
    return lax.switch(_filled_blocks(offsets, j), branches, blocks, w)


@jax.custom_batching.custom_vmap
def _sweep(blocks, w, j):
    """``(h, w - h W)`` with ``h = W w``, sweeping only the blocks that hold rows
    ``0 .. j`` (one ``lax.switch``)."""
    return _sweep_switch(blocks, w, j)


@_sweep.def_vmap
def _sweep_vmap(axis_size, in_batched, blocks, w, j):
    # Under vmap a switch on a batched index would run every branch (each a
    # prefix of the blocks: up to (number of blocks + 1) / 2 full sweeps). The
    # rows beyond each element's own j are zero, so one switch on the largest j
    # of the batch is exact and never sweeps more than one full basis.
    blocks_b, w_b, j_b = in_batched
    blocks = tuple(
        x if xb else jnp.broadcast_to(x, (axis_size, *x.shape))
        for x, xb in zip(blocks, blocks_b, strict=True)
    )
    w = w if w_b else jnp.broadcast_to(w, (axis_size, *w.shape))
    j_max = jnp.max(j) if j_b else j
    out = jax.vmap(lambda blocks, w: _sweep_switch(blocks, w, j_max))(blocks, w)
    return out, (True, True)


def _write(blocks, offsets, row, t):
    """Set row ``t`` of the blocked basis to ``row``: a ``lax.cond`` a block, so
    only the block that holds it is touched (in place)."""
    out = []
    for blk, o in zip(blocks, offsets, strict=True):
        s = blk.shape[0]
        if len(blocks) == 1:
            out.append(blk.at[t].set(row))
            continue
        out.append(
            lax.cond(
                (o <= t) & (t < o + s),
                lambda blk, row, o=o: blk.at[t - o].set(row),
                lambda blk, row: blk,
                blk,
                row,
            )
        )
    return tuple(out)


class ArnoldiCycle(NamedTuple):
    """The state of one cycle (see the module docstring).

    Attributes:
        basis: ``W``, ``(m + 1, n)``; rows ``0 .. p + steps`` are orthonormal.
        hess: ``G``, ``(m + 1, m)``, the unrotated projected operator.
        rot: ``Q^T``, ``(m + 1, m + 1)``, the accumulated rotations.
        tri: ``Q^T G``, upper triangular in its used columns.
        g: ``Q^T beta e_p``, ``(m + 1,)``.
        steps: Arnoldi steps taken in this cycle (int32).
        precond_basis: ``Z`` (``(m, n)``), row ``j`` the preconditioned vector
            ``M W[j]`` whose product with ``A`` step ``j`` took (rows below
            ``p`` and beyond the steps taken are zero), when the cycle was run
            with a separate ``precond`` (flexible form); else ``None``.
    """

    basis: Array
    hess: Array
    rot: Array
    tri: Array
    g: Array
    steps: Array
    precond_basis: Array | None = None

    def residual_estimate(self, start: int) -> Array:
        """``|g[p + steps]|``: the least-squares residual after the cycle."""
        return jnp.abs(self.g[start + self.steps])


def _givens(a, b):
    """Rotation ``(c, s)`` with ``[c s; -s c] [a; b] = [r; 0]``, ``r >= 0``."""
    r = jnp.hypot(a, b)
    safe = jnp.where(r == 0, 1, r)
    return jnp.where(r == 0, 1, a / safe), jnp.where(r == 0, 0, b / safe), r


def arnoldi_cycle(
    matvec: Callable[[Array], Array],
    basis: Array,
    hess: Array,
    start: int,
    beta: Array,
    tol: Array,
    budget: Array,
    precond: Callable[[Array], Array] | None = None,
) -> ArnoldiCycle:
    """Run Arnoldi steps ``j = start, ..., m - 1`` (at most ``budget`` of them),
    stopping early once the least-squares residual is ``<= tol``.

    Args:
        matvec: ``v -> A M v`` on flat vectors, or ``v -> A v`` when ``precond``
            is given.
        basis: ``(m + 1, n)``; rows ``< start`` hold ``C`` (orthonormal), row
            ``start`` the unit residual ``r / beta``; the other rows must be
            zero (they are filled step by step).
        hess: ``(m + 1, m)``; its columns ``< start`` hold ``D`` on the diagonal
            (``A U D = C D``), the others are ignored. Its dtype is that of the
            small matrices (``G``, the rotations, ``g``); the basis may be held
            in a lower precision (``matvec`` then maps the basis's dtype to
            itself).
        start: ``p`` (static): 0 for GMRES, ``k`` for GCRO-DR.
        beta: ``||r||``.
        tol: the residual norm at which to stop.
        budget: the largest number of steps allowed (an int array).
        precond: ``v -> M v``, or ``None``. When given, step ``j`` multiplies
            ``z_j = M W[j]`` by ``A`` and keeps ``z_j`` as row ``j`` of
            ``precond_basis`` (one more ``(m, n)`` buffer and one row write a
            step, no extra products), so that ``A [.., Z] = W^T G`` holds even
            when the caller's ``U`` lives in ``x``'s space (GCRO-DR's flexible
            form).
    """
    m = hess.shape[1]
    # The n-long rows are held in the basis's dtype, the small projected
    # matrices in the Hessenberg matrix's (higher, in GCRO-DR's mixed precision).
    work = basis.dtype
    dtype = hess.dtype
    hess = hess * (jnp.arange(m) < start).astype(dtype)
    rot = jnp.eye(m + 1, dtype=dtype)
    g = jnp.zeros((m + 1,), dtype).at[start].set(beta)
    offsets, sizes = _row_blocks(m + 1)
    blocks = tuple(basis[o : o + s] for o, s in zip(offsets, sizes, strict=True))

    def keep_going(state):
        *_, g, j, _ = state
        return (j < m) & (j - start < budget) & (jnp.abs(g[j]) > tol)

    def orthogonalise(blocks, w, j):
        h, w = _sweep(blocks, w, j)
        return w, h.astype(dtype), jnp.sqrt(jnp.vdot(w, w)).astype(dtype)

    def step(state):
        blocks, v, hess, rot, tri, g, j, zs = state
        if precond is None:
            product = matvec(v)
        else:
            z = precond(v)
            product = matvec(z)
            zs = zs.at[j].set(z)
        w, h, h_next = orthogonalise(blocks, product, j)
        # ||w||^2 = ||h||^2 + ||w_new||^2 (Pythagoras): no extra pass over w.
        cancelled = h_next < _REORTHOGONALISE * jnp.sqrt(jnp.vdot(h, h) + h_next**2)

        def again(args):
            w, h, _ = args
            w, h2, h_next = orthogonalise(blocks, w, j)
            return w, h + h2, h_next

        w, h, h_next = lax.cond(cancelled, again, lambda a: a, (w, h, h_next))
        # h_next = 0 is a "happy breakdown": the solution lies in the space.
        v = w / jnp.where(h_next == 0, 1, h_next).astype(work)
        blocks = _write(blocks, offsets, v, j + 1)
        col = h.at[j + 1].set(h_next)
        hess = hess.at[:, j].set(col)
        rotated = rot @ col
        c, s, r = _givens(rotated[j], rotated[j + 1])
        rot_j, rot_j1 = rot[j], rot[j + 1]
        rot = (
            rot.at[j].set(c * rot_j + s * rot_j1).at[j + 1].set(c * rot_j1 - s * rot_j)
        )
        tri = tri.at[:, j].set(rotated.at[j].set(r).at[j + 1].set(0))
        g = g.at[j + 1].set(-s * g[j]).at[j].set(c * g[j])
        return blocks, v, hess, rot, tri, g, j + 1, zs

    # The carry holds the newest basis vector itself (the next product's input)
    # rather than reading it back from the blocks.
    zs = None if precond is None else jnp.zeros((m, basis.shape[1]), work)
    init = (
        blocks,
        basis[start],
        hess,
        rot,
        hess,
        g,
        jnp.asarray(start, jnp.int32),
        zs,
    )
    (blocks, _, hess, rot, tri, g, _, zs), steps = iterate(
        step, keep_going, init, m - start
    )
    basis = jnp.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    return ArnoldiCycle(basis, hess, rot, tri, g, steps, zs)


def least_squares_solution(cycle: ArnoldiCycle, start: int) -> Array:
    """``y = argmin || beta e_p - G y ||`` over the columns used so far: the
    triangular solve ``R y = g``. Unused columns (and columns with a zero pivot,
    e.g. a degenerate recycled direction) get ``y = 0``."""
    m = cycle.hess.shape[1]
    used = jnp.arange(m) < start + cycle.steps
    r_mat = cycle.tri[:m]
    diag = jnp.diagonal(r_mat)
    active = used & (diag != 0)
    r_mat = jnp.where(active[None, :] & active[:, None], r_mat, 0)
    r_mat = r_mat + jnp.diag(jnp.where(active, 0, 1).astype(r_mat.dtype))
    return solve_triangular(r_mat, jnp.where(active, cycle.g[:m], 0))
