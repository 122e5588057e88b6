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

Orthogonalisation is classical Gram-Schmidt, one sweep over the basis (one
product ``W w`` and one ``h W``; the rows not yet filled are zero, so they need no
mask), repeated only when the sweep cancelled ``w`` almost entirely:
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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import solve_triangular
from jaxtyping import Array

from ..._iterate import iterate

__all__ = ["ArnoldiCycle", "arnoldi_cycle", "least_squares_solution"]

_REORTHOGONALISE = 0.1


class ArnoldiCycle(NamedTuple):
    """The state of one cycle (see the module docstring).

    Attributes:
        basis: ``W``, ``(m + 1, n)``; rows ``0 .. p + steps`` are orthonormal.
        hess: ``G``, ``(m + 1, m)``, the unrotated projected operator.
        rot: ``Q^T``, ``(m + 1, m + 1)``, the accumulated rotations.
        tri: ``Q^T G``, upper triangular in its used columns.
        g: ``Q^T beta e_p``, ``(m + 1,)``.
        steps: Arnoldi steps taken in this cycle (int32).
    """

    basis: Array
    hess: Array
    rot: Array
    tri: Array
    g: Array
    steps: Array

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
) -> ArnoldiCycle:
    """Run Arnoldi steps ``j = start, ..., m - 1`` (at most ``budget`` of them),
    stopping early once the least-squares residual is ``<= tol``.

    Args:
        matvec: ``v -> A M v`` on flat vectors.
        basis: ``(m + 1, n)``; rows ``< start`` hold ``C`` (orthonormal), row
            ``start`` the unit residual ``r / beta``; the other rows must be
            zero (they are filled step by step).
        hess: ``(m + 1, m)``; its columns ``< start`` hold ``D`` on the diagonal
            (``A U D = C D``), the others are ignored.
        start: ``p`` (static): 0 for GMRES, ``k`` for GCRO-DR.
        beta: ``||r||``.
        tol: the residual norm at which to stop.
        budget: the largest number of steps allowed (an int array).
    """
    m = hess.shape[1]
    dtype = basis.dtype
    hess = hess * (jnp.arange(m) < start).astype(dtype)
    rot = jnp.eye(m + 1, dtype=dtype)
    g = jnp.zeros((m + 1,), dtype).at[start].set(beta)

    def keep_going(state):
        *_, g, j = state
        return (j < m) & (j - start < budget) & (jnp.abs(g[j]) > tol)

    def orthogonalise(basis, w):
        # Rows beyond j of the basis are zero (a cycle starts from zeros), so
        # the sweep needs no mask: their coefficients come out as exact zeros.
        h = basis @ w
        # h @ W, not W.T @ h: XLA would transpose the whole basis every step.
        w = w - h @ basis
        return w, h, jnp.sqrt(jnp.vdot(w, w))

    def step(state):
        basis, hess, rot, tri, g, j = state
        w, h, h_next = orthogonalise(basis, matvec(basis[j]))
        # ||w||^2 = ||h||^2 + ||w_new||^2 (Pythagoras): no extra pass over w.
        cancelled = h_next < _REORTHOGONALISE * jnp.sqrt(jnp.vdot(h, h) + h_next**2)

        def again(args):
            w, h, _ = args
            w, h2, h_next = orthogonalise(basis, w)
            return w, h + h2, h_next

        w, h, h_next = lax.cond(cancelled, again, lambda a: a, (w, h, h_next))
        # h_next = 0 is a "happy breakdown": the solution lies in the space.
        basis = basis.at[j + 1].set(w / jnp.where(h_next == 0, 1, h_next))
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
        return basis, hess, rot, tri, g, j + 1

    init = (basis, hess, rot, hess, g, jnp.asarray(start, jnp.int32))
    (basis, hess, rot, tri, g, _), steps = iterate(step, keep_going, init, m - start)
    return ArnoldiCycle(basis, hess, rot, tri, g, steps)


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
