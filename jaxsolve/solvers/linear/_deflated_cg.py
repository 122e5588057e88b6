r"""Deflated (recycled) conjugate gradients for sequences of SPD systems.

Given a basis ``W`` (``(n, k)``) of a subspace worth deflating, typically
approximate eigenvectors of the smallest eigenvalues of earlier, similar operators,
deflated CG (Saad, Yeung, Erhel & Guyomarc'h, "A deflated version of the conjugate
gradient algorithm", SISC 2000) starts from the Galerkin correction

    x_0 <- x_0 + W (W^T A W)^+ W^T r_0         (so that W^T r_0 = 0)

and keeps every search direction A-orthogonal to ``W``:

    p_{j+1} = z_{j+1} + beta_j p_j - W (W^T A W)^+ (A W)^T z_{j+1}.

CG then runs on the operator restricted to the A-orthogonal complement of ``W``,
whose condition number no longer contains the deflated eigenvalues. The products
``A W`` cost ``k`` operator applications per solve (one batched call).

:func:`deflated_cg` is the differentiable solver (through
:func:`~jaxsolve.solvers.linear._krylov.krylov_solve`, like :func:`cg`).
:func:`recycled_cg` runs the same loop for a *sequence* of systems: it records the
first search directions and returns, by Rayleigh-Ritz on ``span{W, p_0, ...}``,
the ``k`` Ritz vectors of the smallest Ritz values of the current operator, to be
the next system's ``W`` (the recycling of the bilevel AID's backward solves).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from ..._checks import as_float_array, check_static_int
from ..._compiled import compiled_once
from ..._iterate import iterate
from ..._solution import RESULTS, Solution
from ._krylov import krylov_solve, start_result

__all__ = ["deflated_cg", "rayleigh_ritz", "recycled_cg", "ritz_basis"]


def _pinv_sym(e: Array) -> Array:
    """Pseudo-inverse of a symmetric positive semi-definite ``(k, k)`` matrix: the
    basis may hold zero or nearly dependent columns (a fresh, empty basis)."""
    s, u = jnp.linalg.eigh(0.5 * (e + e.T))
    cut = jnp.finfo(e.dtype).eps * e.shape[0] * jnp.maximum(jnp.max(s), 0.0)
    inv = jnp.where(s > cut, 1 / jnp.where(s > cut, s, 1), 0)
    return (u * inv) @ u.T


def _orthonormal_columns(w: Array) -> Array:
    """Orthonormal columns spanning ``span(w)`` (same shape; columns beyond its
    numerical rank, a relative cut of 1e-6 on singular values, are zero)."""
    s, u = jnp.linalg.eigh(w.T @ w)
    keep = s > 1e-12 * jnp.maximum(jnp.max(s), jnp.finfo(w.dtype).tiny)
    return w @ (u * jnp.where(keep, lax.rsqrt(jnp.where(keep, s, 1)), 0))


def _deflated_cg_loop(
    matvec, b, x0, r, precond, tol, max_steps, input_code, *, basis, record
):
    """Deflated PCG, a loop for :func:`krylov_solve`. Returns ``(x, result,
    num_steps, extras)``: ``extras["matvecs"]`` counts the products (``k`` for
    ``A W`` and one a step) and, with ``record > 0``, ``extras["recycle"] = (P,
    AP, AW, recorded)``: the first ``record`` search directions, A-normalised,
    their products, ``A W`` and how many were recorded."""
    apply_m = (lambda v: v) if precond is None else precond
    n, k = b.shape[0], basis.shape[1]
    w = basis.astype(b.dtype)
    if k:
        # An orthonormal basis of span(W) first (dependent or zero columns become
        # zero): nearly dependent columns, e.g. successive solutions, would make
        # W^T A W ill-conditioned and cost the directions their A-orthogonality.
        w = _orthonormal_columns(w)
        aw = jax.vmap(matvec, in_axes=1, out_axes=1)(w)  # k products, one call
        e_inv = _pinv_sym(w.T @ aw)
        mu = e_inv @ (w.T @ r)
        x0 = x0 + w @ mu
        r = r - aw @ mu

        def deflate(z):
            return z - w @ (e_inv @ (aw.T @ z))
    else:
        aw = jnp.zeros((n, 0), b.dtype)

        def deflate(z):
            return z

    z = apply_m(r)
    rr = jnp.vdot(r, r)
    rz = rr if precond is None else jnp.vdot(r, z)
    p_rec = jnp.zeros((n, record), b.dtype)
    ap_rec = jnp.zeros((n, record), b.dtype)
    init = (
        x0,
        r,
        deflate(z),
        rz,
        rr,
        start_result(input_code, r),
        jnp.asarray(0, jnp.int32),
        p_rec,
        ap_rec,
    )
    tol2 = tol**2

    def keep_going(state):
        result, rr = state[5], state[4]
        return (result == RESULTS.successful) & (rr > tol2)

    def step(state):
        x, r, p, rz, rr, result, j, p_rec, ap_rec = state
        ap = matvec(p)
        pap = jnp.vdot(p, ap)
        bad = ~(pap > 0)
        safe = jnp.where(bad, 1, pap)
        alpha = jnp.where(bad, 0, rz / safe)
        if record:
            # A-normalised, so that p^T A p = 1 in the Rayleigh-Ritz step.
            scale = jnp.where(bad, 0, lax.rsqrt(safe))
            slot = jnp.minimum(j, record - 1)
            keep = j < record
            p_rec = p_rec.at[:, slot].set(jnp.where(keep, p * scale, p_rec[:, slot]))
            ap_rec = ap_rec.at[:, slot].set(
                jnp.where(keep, ap * scale, ap_rec[:, slot])
            )
        x = x + alpha * p
        r = r - alpha * ap
        z = apply_m(r)
        rr = jnp.vdot(r, r)
        rz_new = rr if precond is None else jnp.vdot(r, z)
        p = deflate(z) + (rz_new / jnp.where(rz == 0, 1, rz)) * p
        code = RESULTS.where(
            jnp.isfinite(pap), RESULTS.not_positive_definite, RESULTS.nonfinite_value
        )
        return (
            x,
            r,
            p,
            rz_new,
            rr,
            RESULTS.where(bad, code, result),
            j + 1,
            p_rec,
            ap_rec,
        )

    state, num_steps = iterate(step, keep_going, init, max_steps)
    extras = {"matvecs": num_steps + k}
    if record:
        recorded = jnp.minimum(num_steps, record)
        extras["recycle"] = (state[7], state[8], aw, recorded)
    return state[0], state[5], num_steps, extras


def ritz_basis(
    basis,
    aw,
    p_rec,
    ap_rec,
    recorded,
    k: int,
    *,
    largest: bool = False,
    return_values: bool = False,
):
    r"""The ``k`` Ritz vectors of the smallest Ritz values of ``A`` on
    ``span{W, P}`` (Rayleigh-Ritz: ``Z^T A Z y = theta Z^T Z y``), orthonormal
    columns; columns beyond the subspace's dimension are zero.

    ``basis = W`` and ``p_rec = P`` (``(n, m)``, of which the first ``recorded``
    columns are used) with their products ``aw = A W``, ``ap_rec = A P``.
    """
    m = p_rec.shape[1]
    used = jnp.concatenate(
        [jnp.ones((basis.shape[1],), bool), jnp.arange(m) < recorded]
    ).astype(basis.dtype)
    z = jnp.concatenate([basis, p_rec], axis=1) * used
    az = jnp.concatenate([aw, ap_rec], axis=1) * used
    theta, y, kept = rayleigh_ritz(z, az, k, largest=largest)
    valid = jnp.arange(k) < kept
    vectors = (z @ y) * valid
    if return_values:
        return vectors, jnp.where(valid, theta, 0)
    return vectors


def rayleigh_ritz(z: Array, az: Array, count: int, *, largest: bool, cut=1e-10):
    r"""Rayleigh-Ritz for a symmetric ``A`` on ``span(z)`` from the products
    ``az = A z``: the ``count`` smallest (or ``largest``) Ritz values ``theta``
    of ``z^T A z y = theta z^T z y``, in that order, their coefficients ``y``
    (``(z.shape[1], count)``: the Ritz vectors are ``z y``, orthonormal, and their
    products ``az y``) and the span's numerical dimension. Directions that are
    (nearly) dependent, a ``z^T z`` eigenvalue below ``cut`` times the largest,
    get no weight and sort after every kept one; so do the zero columns padded
    in when ``count`` exceeds ``z``'s columns."""
    gram = z.T @ z
    s, u = jnp.linalg.eigh(0.5 * (gram + gram.T))
    keep = s > cut * jnp.maximum(jnp.max(s), jnp.finfo(s.dtype).tiny)
    t = u * jnp.where(keep, lax.rsqrt(jnp.where(keep, s, 1)), 0)
    g = t.T @ (z.T @ az) @ t
    g = 0.5 * (g + g.T)
    big = 1e3 * (1 + jnp.max(jnp.abs(g)))
    if largest:
        # dropped directions last in descending order
        theta, q = jnp.linalg.eigh(g - jnp.diag(jnp.where(keep, 0, big)))
        theta, q = theta[::-1], q[:, ::-1]
    else:
        theta, q = jnp.linalg.eigh(g + jnp.diag(jnp.where(keep, 0, big)))
    theta, y = theta[:count], t @ q[:, :count]
    pad = count - theta.shape[0]
    theta = jnp.pad(theta, (0, pad))
    y = jnp.pad(y, ((0, 0), (0, pad)))
    return theta, y, jnp.sum(keep)


def recycled_cg(
    matvec,
    b: Array,
    x0: Array,
    basis: Array,
    *,
    rtol,
    atol=0.0,
    max_steps: int,
    record: int,
    ritz: int | None = None,
    preconditioner=None,
):
    r"""One solve of a sequence of SPD systems ``A_t x = b_t`` (flat vectors), with
    deflation by ``basis`` and the recycle basis for the next system.

    :func:`deflated_cg` from ``x0`` (``throw=False``: the caller inspects the
    code), recording the first ``record`` search directions; returns the
    :class:`jaxsolve.Solution` and ``new_basis`` (``(n, ritz)``, default
    ``basis``'s shape ``(n, k)``): the ``ritz`` Ritz vectors of the smallest Ritz
    values of ``A_t`` on
    ``span{basis, p_0, ..., p_{record-1}}`` (:func:`ritz_basis`).
    ``solution.stats["matvecs"]`` counts every operator product of the solve.
    """
    k = basis.shape[1] if ritz is None else check_static_int(ritz, "ritz")
    record = check_static_int(record, "record")
    if k and record == 0:
        raise ValueError("`record` must be >= 1 to refresh a non-empty `basis`")
    sol = deflated_cg(
        matvec,
        b,
        basis=basis,
        record=record,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        x0=x0,
        preconditioner=preconditioner,
        throw=False,
    )
    if not k:
        return sol, basis[:, :0]
    p_rec, ap_rec, aw, recorded = sol.aux["recycle"]
    return sol, ritz_basis(basis, aw, p_rec, ap_rec, recorded, k)


@compiled_once
def deflated_cg(
    operator,
    b,
    *,
    basis=None,
    record: int = 0,
    rtol=1e-6,
    atol=0.0,
    max_steps: int | None = None,
    x0=None,
    preconditioner=None,
    throw: bool = True,
) -> Solution:
    r"""Solve ``A x = b`` (``A`` SPD) by deflated conjugate gradients.

    Same arguments and result as :func:`jaxsolve.cg`, plus ``basis``: an
    ``(n, k)`` array ``W`` (``n = b.size``) whose span is deflated: the start is
    corrected so that ``W^T r_0 = 0``, and the search directions are kept
    A-orthogonal to ``W`` (Saad et al., SISC 2000). When ``W`` spans eigenvectors
    of the smallest eigenvalues, CG converges as if they were not there. ``W``
    may have zero or dependent columns (they are ignored); ``basis=None`` is CG.
    Costs ``k`` extra operator products (``A W``) per solve (and per true-residual
    restart), counted in ``stats["matvecs"]``. With ``record > 0``, ``.aux["recycle"]``
    holds the first ``record`` (A-normalised) search directions, their products,
    ``A W`` and the count recorded, for :func:`ritz_basis`. Differentiable in
    ``b`` and the operator's arrays like :func:`cg` (``W`` only steers the
    iteration and receives no gradient).
    """
    if basis is None:
        basis = jnp.zeros((jnp.size(b), 0))
    basis = as_float_array(basis, "basis")
    if basis.ndim != 2 or basis.shape[0] != jnp.size(b):
        raise ValueError(
            f"`basis` must have shape (n, k) with n = b.size = {jnp.size(b)}, "
            f"got {basis.shape}"
        )
    record = check_static_int(record, "record")
    basis = lax.stop_gradient(basis)

    def loop(matvec, b_, x0_, r0, precond, tol, max_steps_, input_code):
        return _deflated_cg_loop(
            matvec,
            b_,
            x0_,
            r0,
            precond,
            tol,
            max_steps_,
            input_code,
            basis=basis.astype(b_.dtype),
            record=record,
        )

    return krylov_solve(
        loop,
        "deflated_cg",
        operator,
        b,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        x0=x0,
        preconditioner=preconditioner,
        throw=throw,
        symmetric=True,
    )
