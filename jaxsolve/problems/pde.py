"""Matrix-free finite-difference operators on a 2-D grid (Dirichlet boundary)."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array


def _shifted(u: Array):
    """Neighbours of every cell, with zero (Dirichlet) values outside the grid."""
    p = jnp.pad(u, 1)
    return p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]


def poisson_2d(n: int, dtype=None) -> tuple:
    r"""The 5-point negative Laplacian on the unit square's ``n x n`` interior grid.

    ``(A u)_ij = (4 u_ij - u_{i-1,j} - u_{i+1,j} - u_{i,j-1} - u_{i,j+1}) / h^2``,
    ``h = 1 / (n + 1)``: symmetric positive definite, condition number ``~ n^2``.

    Returns ``(matvec, b)``: ``matvec`` maps ``(n, n)`` arrays to ``(n, n)`` arrays
    and ``b`` is the right-hand side of ``-Laplace u = f`` for a unit point source
    off the centre plus a constant load, ``f = 1 + delta_{(n // 3, n // 4)} / h^2``
    (it excites every eigenmode, so CG needs its full ``O(n)`` iterations).
    """
    dtype = dtype or jnp.result_type(float)
    h = 1.0 / (n + 1)
    b = jnp.ones((n, n), dtype).at[n // 3, n // 4].add(1 / h**2)

    def matvec(u):
        up, down, left, right = _shifted(u)
        return (4 * u - up - down - left - right) / h**2

    return matvec, b


def convection_diffusion_2d(n: int, velocity=(20.0, 10.0), dtype=None) -> tuple:
    r"""``-Laplace u + v . grad u = 1`` on the unit square, ``n x n`` interior grid:
    central differences for diffusion, first-order upwind for convection, so the
    operator is a non-symmetric M-matrix (GMRES/BiCGStab territory).

    ``velocity`` may be an array (its gradient flows through the solvers).
    Returns ``(matvec, b)`` on ``(n, n)`` arrays.
    """
    dtype = dtype or jnp.result_type(float)
    h = 1.0 / (n + 1)
    v = jnp.asarray(velocity, dtype)
    b = jnp.ones((n, n), dtype)

    def matvec(u):
        up, down, left, right = _shifted(u)
        diffusion = (4 * u - up - down - left - right) / h**2
        # Upwind: a positive velocity takes the difference with the upstream cell.
        vx, vy = v[0], v[1]
        dx = jnp.where(vx > 0, u - up, down - u) / h
        dy = jnp.where(vy > 0, u - left, right - u) / h
        return diffusion + vx * dx + vy * dy

    return matvec, b
