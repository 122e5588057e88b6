r"""The pressure-Poisson operator of fluid simulation on a grid with solid obstacles.

A 2-D ``(N, N)`` or 3-D ``(N, N, N)`` grid of unit cells is split by a boolean mask
``solid`` into fluid and solid cells. With ``G`` the finite-difference gradient on
the *open* faces (fluid-fluid faces, plus the faces on the domain boundary when it is
a Dirichlet boundary) the operator on fluid cells is ``A = G^T G``:

.. math::

    (A p)_i = \sum_{j \sim i,\ j\ \mathrm{fluid}} k_{ij} (p_i - p_j)
              + \sum_{\text{Dirichlet faces of } i} k_i p_i ,

the integer 5-point (7-point in 3-D) stencil when the coefficient ``k`` is 1 (no
``1/h^2``: the scaling of fluid solvers). Faces between a fluid and a solid cell are
closed (Neumann, no flux through the solid). **Solid cells are decoupled as identity
rows**, ``(A p)_i = p_i``, so that vectors keep the grid's shape (what a
convolutional network needs) and ``A`` stays symmetric positive definite; a
right-hand side that is zero in the solid gives a solution that is zero there.

Boundary:

- ``"dirichlet"`` (default): ``p = 0`` just outside the domain (an open boundary).
  ``A`` is SPD provided every fluid region touches the domain boundary; the seeded
  layouts of :func:`obstacle_layout` guarantee it (enclosed fluid pockets are filled).
- ``"neumann"``: closed walls everywhere. ``A`` is then only positive
  *semi*-definite: the constant on each connected fluid region is in its null space
  (one region for the seeded layouts). It is kept singular, on purpose (this is the
  all-Neumann problem of fluid solvers): :func:`obstacle_rhs` returns a divergence
  ``b = G^T u``, which lies in the range of ``A = G^T G`` (it sums to zero over every
  fluid region), so ``A p = b`` is consistent and Krylov solvers started from zero
  converge to a solution; it is unique up to adding a constant on each region, and
  :meth:`PoissonObstacles.project` removes the fluid mean to pick one.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

__all__ = [
    "PoissonObstacles",
    "poisson_obstacles",
    "obstacle_rhs",
    "obstacle_layout",
    "fill_enclosed",
    "LAYOUTS",
]

LAYOUTS = ("none", "discs", "boxes", "blobs")


def _check_solid(solid) -> np.ndarray:
    solid = np.asarray(solid)
    if solid.dtype != np.bool_:
        raise ValueError(f"`solid` must be a boolean mask, got dtype {solid.dtype}")
    if solid.ndim not in (2, 3) or len(set(solid.shape)) != 1:
        raise ValueError(
            "`solid` must be a square (N, N) or cubic (N, N, N) boolean grid, got "
            f"shape {solid.shape}"
        )
    if solid.shape[0] < 2:
        raise ValueError(f"`solid` must have N >= 2 cells a side, got {solid.shape}")
    return solid


def _face(x, axis: int, side: int):
    """Cells on one side of every interior face along ``axis`` (side 0: the lower)."""
    n = x.shape[axis]
    index = [slice(None)] * x.ndim
    index[axis] = slice(0, n - 1) if side == 0 else slice(1, n)
    return x[tuple(index)]


def _pad(x, axis: int, before: int, after: int):
    widths = [(0, 0)] * x.ndim
    widths[axis] = (before, after)
    return jnp.pad(x, widths)


class PoissonObstacles(eqx.Module):
    r"""Matrix-free ``A = G^T G`` on fluid cells, identity on solid cells (see the
    module docstring). Call it on an array of the grid's shape: ``A(p)``.

    Attributes:
        fluid: ``1.0`` on fluid cells, ``0.0`` on solid cells (grid-shaped).
        face_weights: per axis, the conductance ``k_ij`` of every interior face
            (zero on closed faces), shape ``N-1`` along that axis.
        boundary_diagonal: the Dirichlet boundary faces' contribution to the
            diagonal (zero for ``"neumann"``).
        boundary: ``"dirichlet"`` or ``"neumann"``.
    """

    fluid: Array
    face_weights: tuple
    boundary_diagonal: Array
    boundary: str = eqx.field(static=True)

    @property
    def grid_shape(self) -> tuple:
        return self.fluid.shape

    @property
    def dtype(self):
        return self.fluid.dtype

    def __call__(self, p: Array) -> Array:
        if p.shape != self.fluid.shape:
            raise ValueError(
                f"the operator acts on arrays of shape {self.fluid.shape}, "
                f"got {p.shape}"
            )
        out = (self.boundary_diagonal + (1 - self.fluid)) * p
        for axis, w in enumerate(self.face_weights):
            flux = w * (_face(p, axis, 0) - _face(p, axis, 1))
            out = out + _pad(flux, axis, 0, 1) - _pad(flux, axis, 1, 0)
        return out

    def diagonal(self) -> Array:
        """The diagonal of ``A`` (grid-shaped), e.g. for a Jacobi preconditioner."""
        d = self.boundary_diagonal + (1 - self.fluid)
        for axis, w in enumerate(self.face_weights):
            d = d + _pad(w, axis, 0, 1) + _pad(w, axis, 1, 0)
        return d

    def project(self, p: Array) -> Array:
        """Remove the mean over the fluid cells (``"neumann"``: picks the solution
        of zero fluid mean; for ``"dirichlet"`` it returns ``p`` unchanged)."""
        if self.boundary == "dirichlet":
            return p
        mean = jnp.sum(p * self.fluid) / jnp.sum(self.fluid)
        return (p - mean) * self.fluid + p * (1 - self.fluid)

    def to_scipy(self):
        """``A`` as a ``scipy.sparse.csr_matrix`` on the grid flattened in C order."""
        import scipy.sparse as sp

        shape = self.fluid.shape
        n = int(np.prod(shape))
        idx = np.arange(n).reshape(shape)
        diag = np.asarray(self.diagonal(), dtype=np.float64).reshape(-1)
        rows, cols, vals = [np.arange(n)], [np.arange(n)], [diag]
        for axis, w in enumerate(self.face_weights):
            w = np.asarray(w, dtype=np.float64)
            lo = np.take(idx, np.arange(shape[axis] - 1), axis=axis).reshape(-1)
            hi = np.take(idx, np.arange(1, shape[axis]), axis=axis).reshape(-1)
            w = w.reshape(-1)
            keep = w != 0
            lo, hi, w = lo[keep], hi[keep], w[keep]
            rows += [lo, hi]
            cols += [hi, lo]
            vals += [-w, -w]
        return sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(n, n),
        )


def poisson_obstacles(
    solid, *, boundary: str = "dirichlet", coefficient=None, dtype=None
) -> PoissonObstacles:
    r"""The pressure-Poisson operator ``A = G^T G`` for the obstacle mask ``solid``.

    Args:
        solid: boolean ``(N, N)`` or ``(N, N, N)`` mask, ``True`` in solid cells.
        boundary: ``"dirichlet"`` (``p = 0`` outside the domain; SPD) or
            ``"neumann"`` (closed walls; positive semi-definite with the constant
            null space on each fluid region, see the module docstring).
        coefficient: optional positive conductance ``k`` per cell (scalar or
            grid-shaped, may be a traced array: gradients flow to it); a face
            between fluid cells ``i, j`` gets ``(k_i + k_j) / 2``, a Dirichlet
            boundary face ``k_i``. Default 1.
        dtype: floating dtype (default: JAX's default float).

    Returns:
        :class:`PoissonObstacles`, a callable ``p -> A p`` on grid-shaped arrays
        with ``.to_scipy()``, ``.diagonal()`` and ``.project()``.
    """
    solid = _check_solid(solid)
    if boundary not in ("dirichlet", "neumann"):
        raise ValueError(
            f"`boundary` must be 'dirichlet' or 'neumann', got {boundary!r}"
        )
    dtype = dtype or jnp.result_type(float)
    fluid = jnp.asarray(~solid, dtype)
    k = jnp.ones(solid.shape, dtype) if coefficient is None else coefficient
    k = jnp.broadcast_to(jnp.asarray(k, dtype), solid.shape)
    weights = []
    for axis in range(solid.ndim):
        open_ = _face(fluid, axis, 0) * _face(fluid, axis, 1)
        weights.append(open_ * (_face(k, axis, 0) + _face(k, axis, 1)) / 2)
    bdiag = jnp.zeros(solid.shape, dtype)
    if boundary == "dirichlet":
        for axis in range(solid.ndim):
            n = solid.shape[axis]
            edge = np.zeros(n)
            edge[0] += 1
            edge[-1] += 1
            shape = [1] * solid.ndim
            shape[axis] = n
            bdiag = bdiag + jnp.asarray(edge.reshape(shape), dtype) * fluid * k
    return PoissonObstacles(fluid, tuple(weights), bdiag, boundary)


def obstacle_rhs(
    solid, *, seed: int = 0, boundary: str = "dirichlet", smoothing: int = 4, dtype=None
) -> Array:
    r"""A right-hand side that looks like fluid simulation's: the divergence
    ``b = G^T u`` of a random smooth velocity field ``u`` on the open faces
    (zero flux through solids, and through the walls for ``"neumann"``), scaled to
    ``||b||_2 = 1``. It is zero in the solid cells and, being in the range of ``A``,
    consistent for the singular all-Neumann operator.

    Args:
        solid: the boolean obstacle mask (as for :func:`poisson_obstacles`).
        seed: the seed of the velocity field.
        boundary: which faces are open (as for :func:`poisson_obstacles`).
        smoothing: passes of a 3-point box filter on the white-noise velocity.
        dtype: floating dtype of the result.
    """
    solid = _check_solid(solid)
    rng = np.random.default_rng(seed)
    fluid = (~solid).astype(np.float64)
    b = np.zeros(solid.shape)
    for axis in range(solid.ndim):
        u = rng.normal(
            size=tuple(s + 1 if a == axis else s for a, s in enumerate(solid.shape))
        )
        for _ in range(smoothing):
            for ax in range(u.ndim):
                u = (np.roll(u, 1, ax) + u + np.roll(u, -1, ax)) / 3
        n = solid.shape[axis]
        lo = np.take(fluid, np.arange(n - 1), axis=axis)
        hi = np.take(fluid, np.arange(1, n), axis=axis)
        inner = np.take(u, np.arange(1, n), axis=axis) * lo * hi
        # divergence: flux f through the face between i and i+1 leaves i, enters i+1
        pad = [(0, 0)] * solid.ndim
        pad[axis] = (0, 1)
        b += np.pad(inner, pad)
        pad[axis] = (1, 0)
        b -= np.pad(inner, pad)
        if boundary == "dirichlet":
            first = np.take(u, [0], axis=axis) * np.take(fluid, [0], axis=axis)
            last = np.take(u, [n], axis=axis) * np.take(fluid, [n - 1], axis=axis)
            pad[axis] = (0, n - 1)
            b -= np.pad(first, pad)
            pad[axis] = (n - 1, 0)
            b += np.pad(last, pad)
    b = b * fluid
    b /= np.linalg.norm(b)
    return jnp.asarray(b, dtype or jnp.result_type(float))


def fill_enclosed(solid) -> np.ndarray:
    """Mark as solid the fluid cells that cannot reach the domain boundary through
    fluid (enclosed pockets would make the Dirichlet operator singular)."""
    solid = _check_solid(solid)
    fluid = ~solid
    edge = np.zeros_like(fluid)
    for axis in range(fluid.ndim):
        index = [slice(None)] * fluid.ndim
        for end in (0, -1):
            index[axis] = end
            edge[tuple(index)] = True
    reach = fluid & edge
    while True:
        grown = reach.copy()
        for axis in range(fluid.ndim):
            grown[tuple(_sl(axis, 1, None, fluid.ndim))] |= reach[
                tuple(_sl(axis, None, -1, fluid.ndim))
            ]
            grown[tuple(_sl(axis, None, -1, fluid.ndim))] |= reach[
                tuple(_sl(axis, 1, None, fluid.ndim))
            ]
        grown &= fluid
        if (grown == reach).all():
            return ~reach
        reach = grown


def _sl(axis, start, stop, ndim):
    index = [slice(None)] * ndim
    index[axis] = slice(start, stop)
    return index


def obstacle_layout(n: int, kind: str = "discs", *, dim: int = 2, seed: int = 0):
    """A seeded obstacle mask on an ``n``-cell-a-side grid (``dim`` 2 or 3).

    ``kind``: ``"none"`` (no obstacle), ``"discs"`` (discs/balls), ``"boxes"``
    (axis-aligned boxes) or ``"blobs"`` (thresholded smooth noise). Obstacles cover
    roughly 10-25% of the domain; fluid pockets enclosed by solids are filled
    (:func:`fill_enclosed`), so the Dirichlet operator is SPD. Returns a boolean
    numpy array of shape ``(n,) * dim``.
    """
    if kind not in LAYOUTS:
        raise ValueError(f"`kind` must be one of {LAYOUTS}, got {kind!r}")
    if dim not in (2, 3):
        raise ValueError(f"`dim` must be 2 or 3, got {dim}")
    if n < 4:
        raise ValueError(f"`n` must be >= 4, got {n}")
    rng = np.random.default_rng(seed)
    coords = np.stack(
        np.meshgrid(*[(np.arange(n) + 0.5) / n] * dim, indexing="ij"), axis=-1
    )
    solid = np.zeros((n,) * dim, bool)
    if kind == "discs":
        for _ in range(rng.integers(3, 7)):
            c = rng.uniform(0.15, 0.85, size=dim)
            r = rng.uniform(0.05, 0.14)
            solid |= np.sum((coords - c) ** 2, axis=-1) < r**2
    elif kind == "boxes":
        for _ in range(rng.integers(3, 7)):
            lo = rng.uniform(0.1, 0.75, size=dim)
            hi = lo + rng.uniform(0.04, 0.2, size=dim)
            solid |= np.all((coords >= lo) & (coords <= hi), axis=-1)
    elif kind == "blobs":
        noise = rng.normal(size=(n,) * dim)
        for _ in range(max(2, n // 8)):
            for ax in range(dim):
                noise = (np.roll(noise, 1, ax) + noise + np.roll(noise, -1, ax)) / 3
        solid = noise > np.quantile(noise, 0.82)
        # keep a fluid margin along the walls, as around the other layouts
        margin = max(1, n // 16)
        inner = np.zeros_like(solid)
        inner[(slice(margin, n - margin),) * dim] = True
        solid &= inner
    if kind == "none":
        return solid
    solid = fill_enclosed(solid)
    # make sure the mask is not almost all solid (never for these parameters)
    assert solid.mean() < 0.6
    return solid
