"""Families of PDE linear systems for Krylov recycling (``jaxsolve.solve_family``).

Each generator draws ``num`` parameter fields from a seeded Gaussian random field
and returns a :class:`PDEFamily`: the fields (``params``, leading axis = system),
``make_operator(p)`` (a matrix-free 5-point stencil on the ``n x n`` interior grid
of the unit square, Dirichlet zero boundary, ``h = 1 / (n + 1)``), the right-hand
side, and ``to_scipy(p)``, the same operator assembled independently as a
``scipy.sparse`` matrix (acting on ``u.reshape(-1)``, row-major) for comparisons
with outside solvers. The families follow the datasets of Wang et al., "Accelerating
Data Generation for Neural Operators via Krylov Subspace Recycling" (ICLR 2024):

- :func:`darcy_family`: ``-div(a grad u) = 1``, ``a`` two-valued (12 / 3) from a
  thresholded random field, as in the FNO Darcy data (symmetric positive definite).
- :func:`helmholtz_family`: ``-Laplace u - kappa(x)^2 u = f`` with a variable
  wavenumber field: symmetric *indefinite* for ``omega`` above the first modes.
- :func:`heat_family`: one backward-Euler step of ``u_t = div(a grad u)``:
  ``(I / dt - div(a grad)) u = u_0 / dt`` with a log-normal conductivity.
- :func:`poisson_family`: ``-div(a grad u) = f`` with a smooth log-normal ``a``.

Divergence form uses face coefficients ``a_{i+1/2,j} = (a_ij + a_{i+1,j}) / 2``
(``a_ij`` on boundary faces), so the discrete operator is symmetric.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

__all__ = [
    "PDEFamily",
    "gaussian_random_field",
    "darcy_family",
    "helmholtz_family",
    "heat_family",
    "poisson_family",
]


@dataclasses.dataclass(frozen=True)
class PDEFamily:
    """A family of linear systems ``A(p_s) u_s = b``, ``s = 0 .. num - 1``.

    Attributes:
        name: the family's name.
        params: ``(num, n, n)`` coefficient fields, one per system.
        make_operator: ``p -> matvec`` with ``matvec: (n, n) -> (n, n)``.
        b: the right-hand side, ``(n, n)`` (shared by all systems).
        to_scipy: ``p -> scipy.sparse.csr_matrix`` of shape ``(n^2, n^2)``.
        jacobi: ``p -> (n, n)``, the operator's diagonal (for a Jacobi
            preconditioner ``r -> r / diag``).
    """

    name: str
    params: Array
    make_operator: Callable
    b: Array
    to_scipy: Callable
    jacobi: Callable

    @property
    def num(self) -> int:
        return self.params.shape[0]

    @property
    def n(self) -> int:
        return self.params.shape[-1]


def gaussian_random_field(
    num: int, n: int, *, alpha=2.0, tau=3.0, modes: int = 24, seed: int = 0
) -> np.ndarray:
    r"""``num`` samples on the ``n x n`` interior grid of a Gaussian random field
    with covariance ``(-Laplace + tau^2)^{-alpha}`` (Neumann cosine modes, the FNO
    data's field), truncated to ``modes x modes`` modes: ``sum_kl xi_kl
    (pi^2 (k^2 + l^2) + tau^2)^{-alpha/2} cos(pi k x) cos(pi l y)``, ``xi`` standard
    normal, normalised to unit standard deviation. NumPy, seeded."""
    rng = np.random.default_rng(seed)
    x = (np.arange(1, n + 1)) / (n + 1)
    k = np.arange(modes)
    phi = np.cos(np.pi * np.outer(x, k))  # (n, modes)
    kk, ll = np.meshgrid(k, k, indexing="ij")
    scale = (np.pi**2 * (kk**2 + ll**2) + tau**2) ** (-alpha / 2)
    scale[0, 0] = 0.0  # no constant mode: the threshold at 0 splits the domain
    xi = rng.standard_normal((num, modes, modes))
    fields = np.einsum("ik,skl,jl->sij", phi, xi * scale, phi)
    return fields / fields.std(axis=(1, 2), keepdims=True)


def _faces(a):
    """Face coefficients (arithmetic means; the cell's own value on the boundary)
    in the four directions: up (i-1), down (i+1), left (j-1), right (j+1)."""
    p = jnp.pad(a, 1, mode="edge")
    return (
        (a + p[:-2, 1:-1]) / 2,
        (a + p[2:, 1:-1]) / 2,
        (a + p[1:-1, :-2]) / 2,
        (a + p[1:-1, 2:]) / 2,
    )


def _divergence_operator(a, h, shift=0.0):
    """``u -> -div(a grad u) + shift u`` (5-point, Dirichlet zero)."""
    up, down, left, right = _faces(a)
    diag = (up + down + left + right) / h**2 + shift

    def matvec(u):
        p = jnp.pad(u, 1)
        nb = (
            up * p[:-2, 1:-1]
            + down * p[2:, 1:-1]
            + left * p[1:-1, :-2]
            + right * p[1:-1, 2:]
        )
        return diag * u - nb / h**2

    return matvec, diag


def _scipy_divergence(a, h, shift=0.0):
    """The matrix of :func:`_divergence_operator`, assembled in NumPy/SciPy."""
    import scipy.sparse as sparse

    a = np.asarray(a, np.float64)
    n = a.shape[0]
    pa = np.pad(a, 1, mode="edge")
    up = (a + pa[:-2, 1:-1]) / 2
    down = (a + pa[2:, 1:-1]) / 2
    left = (a + pa[1:-1, :-2]) / 2
    right = (a + pa[1:-1, 2:]) / 2
    idx = np.arange(n * n).reshape(n, n)
    rows, cols, vals = (
        [idx.ravel()],
        [idx.ravel()],
        [((up + down + left + right) / h**2 + shift).ravel()],
    )
    for coef, di, dj in ((up, -1, 0), (down, 1, 0), (left, 0, -1), (right, 0, 1)):
        i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        ok = (i + di >= 0) & (i + di < n) & (j + dj >= 0) & (j + dj < n)
        rows.append(idx[ok])
        cols.append(idx[(i + di)[ok], (j + dj)[ok]])
        vals.append(-coef[ok] / h**2)
    return sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n * n, n * n),
    )


def _dtype(dtype):
    return dtype or jnp.result_type(float)


def darcy_family(
    num: int, n: int = 80, *, high=12.0, low=3.0, seed: int = 0, dtype=None
) -> PDEFamily:
    r"""Darcy flow ``-div(a grad u) = 1`` (Dirichlet zero), ``a = high`` where a
    Gaussian random field is ``>= 0`` and ``low`` elsewhere (12 / 3, as in the FNO
    and SKR Darcy datasets). Symmetric positive definite; ``n^2`` unknowns."""
    dtype = _dtype(dtype)
    h = 1.0 / (n + 1)
    field = gaussian_random_field(num, n, seed=seed)
    params = jnp.asarray(np.where(field >= 0, high, low), dtype)
    return PDEFamily(
        name="darcy",
        params=params,
        make_operator=lambda a: _divergence_operator(a, h)[0],
        b=jnp.ones((n, n), dtype),
        to_scipy=lambda a: _scipy_divergence(a, h),
        jacobi=lambda a: _divergence_operator(a, h)[1],
    )


def poisson_family(
    num: int, n: int = 64, *, sigma=1.0, seed: int = 0, dtype=None
) -> PDEFamily:
    r"""Variable-coefficient Poisson ``-div(a grad u) = f``, ``a = exp(sigma g)``
    for a Gaussian random field ``g`` (log-normal, smooth), ``f`` a fixed smooth
    load ``sin(pi x) sin(2 pi y) + 1``. Symmetric positive definite."""
    dtype = _dtype(dtype)
    h = 1.0 / (n + 1)
    params = jnp.asarray(
        np.exp(sigma * gaussian_random_field(num, n, seed=seed)), dtype
    )
    x = jnp.arange(1, n + 1, dtype=dtype) * h
    f = jnp.sin(jnp.pi * x)[:, None] * jnp.sin(2 * jnp.pi * x)[None, :] + 1
    return PDEFamily(
        name="poisson",
        params=params,
        make_operator=lambda a: _divergence_operator(a, h)[0],
        b=f.astype(dtype),
        to_scipy=lambda a: _scipy_divergence(a, h),
        jacobi=lambda a: _divergence_operator(a, h)[1],
    )


def heat_family(
    num: int, n: int = 64, *, dt=1e-3, sigma=1.0, seed: int = 0, dtype=None
) -> PDEFamily:
    r"""One backward-Euler step of the heat equation ``u_t = div(a grad u)``:
    ``(I / dt - div(a grad)) u = u_0 / dt``, log-normal conductivity
    ``a = exp(sigma g)``, ``u_0`` a Gaussian bump. Symmetric positive definite,
    better conditioned than Poisson (the ``1 / dt`` shift)."""
    dtype = _dtype(dtype)
    h = 1.0 / (n + 1)
    params = jnp.asarray(
        np.exp(sigma * gaussian_random_field(num, n, seed=seed)), dtype
    )
    x = jnp.arange(1, n + 1, dtype=dtype) * h
    bump = jnp.exp(-((x[:, None] - 0.4) ** 2 + (x[None, :] - 0.6) ** 2) / 0.02)
    return PDEFamily(
        name="heat",
        params=params,
        make_operator=lambda a: _divergence_operator(a, h, 1 / dt)[0],
        b=(bump / dt).astype(dtype),
        to_scipy=lambda a: _scipy_divergence(a, h, 1 / dt),
        jacobi=lambda a: _divergence_operator(a, h, 1 / dt)[1],
    )


def helmholtz_family(
    num: int, n: int = 100, *, omega=20.0, contrast=0.3, seed: int = 0, dtype=None
) -> PDEFamily:
    r"""Helmholtz ``-Laplace u - kappa^2 u = f`` (Dirichlet zero) with a variable
    wavenumber ``kappa = omega (1 + contrast tanh(g))`` for a Gaussian random field
    ``g``; ``params`` holds ``kappa``. ``f`` is a smooth bump near ``(0.3, 0.3)``.
    Symmetric and indefinite once ``kappa^2`` exceeds the smallest Laplacian
    eigenvalue ``2 pi^2`` (``omega = 20``: a few dozen negative eigenvalues): the
    hard case for restarted GMRES, where recycling pays most."""
    dtype = _dtype(dtype)
    h = 1.0 / (n + 1)
    g = gaussian_random_field(num, n, seed=seed)
    params = jnp.asarray(omega * (1 + contrast * np.tanh(g)), dtype)
    x = jnp.arange(1, n + 1, dtype=dtype) * h
    f = jnp.exp(-((x[:, None] - 0.3) ** 2 + (x[None, :] - 0.3) ** 2) / 0.005)
    ones = jnp.ones((n, n), dtype)

    def make_operator(kappa):
        lap, _ = _divergence_operator(ones, h)
        return lambda u: lap(u) - kappa**2 * u

    def to_scipy(kappa):
        import scipy.sparse as sparse

        kappa = np.asarray(kappa, np.float64).ravel()
        return (_scipy_divergence(np.ones((n, n)), h) - sparse.diags(kappa**2)).tocsr()

    return PDEFamily(
        name="helmholtz",
        params=params,
        make_operator=make_operator,
        b=(f / jnp.max(f)).astype(dtype),
        to_scipy=to_scipy,
        jacobi=lambda kappa: 4 / h**2 - kappa**2,
    )
