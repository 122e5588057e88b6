"""GCRO-DR: GMRES with deflated restarting and Krylov subspace recycling.

M. Parks, E. de Sturler, G. Mackey, D. Johnson, S. Maiti, "Recycling Krylov
subspaces for sequences of linear systems", SIAM J. Sci. Comput. 28 (2006).

A recycle space is a pair ``U, C`` (``n x k``) with ``A U = C`` and ``C^T C = I``.
Given it, ``x`` is first improved over ``range(U)`` (``x += U C^T r``,
``r -= C C^T r``), and every cycle then minimises the residual over
``range(U) + K_{m-k}((I - C C^T) A, r)``: the Arnoldi kernel of :mod:`._arnoldi` runs
``m - k`` steps with ``C`` as the fixed first rows of its basis, giving
``A [U D, V] = [C, V+] G``, ``G = [[D, B], [0, H]]``. After each cycle the recycle
space is replaced by the ``k`` harmonic Ritz vectors of ``A`` with respect to
``range([U D, V])`` of smallest harmonic Ritz value ``|theta|``, which approximate
the eigenvectors of ``A`` nearest zero, the ones that slow a restarted Krylov
method down; ``U, C`` is what the next system of a sequence starts from.

Harmonic Ritz step, on device: the pairs solve ``G^T G z = theta G^T W^T V_hat z``,
i.e. ``K z = z / theta`` with ``K = G^+ (W^T V_hat)`` (``m x m``, from the
triangular factor the kernel already keeps). Only the *span* of the ``k`` wanted
vectors matters (``U`` is re-orthonormalised through ``C`` anyway): the dominant
invariant subspace of ``K``. On CPU it comes from ``jnp.linalg.eig`` (exact; a
complex pair contributes its real and imaginary parts). XLA has no non-symmetric
eigensolver on GPU/TPU, so there (``lax.platform_dependent``, no host callback)
the same span is approximated by orthogonal iteration started from the previous
recycle space: matrix products and thin QRs only. Any recycle space keeps the
solve correct; the exact one recycles better (measured: on a slowly varying
indefinite sequence exact selection needed 240, 186, 186, 186 products where
orthogonal iteration needed 281, 181, 197, 479). ``C`` and ``U`` are then formed
through the SVD of the triangular factor of ``G P`` (not the factor alone), so
that a degenerate direction (a cycle that converged in fewer than ``k`` steps,
say) is dropped as a zero column instead of dividing by a zero pivot.

With a right preconditioner ``M`` the recycle space stays in ``x``'s space:
``C = A U`` (not ``A M U``), ``x += U C^T r``, and the Arnoldi kernel keeps the
preconditioned vectors ``Z = M V`` it multiplies by ``A`` (the flexible form of
FGCRO-DR, Carvalho, Gratton, Lago & Vasseur 2011), so that
``A [U D, Z] = [C, V+] G`` and the correction and the new ``U`` are combinations
of ``[U D, Z]``. Nothing handed on then depends on this system's ``M``, which
matters in a sequence whose preconditioner changes with the system (Jacobi on a
Darcy family): a ``U`` kept in the preconditioned space (``C = A M U``, the
earlier form here) is mapped elsewhere by the next system's ``M``. Measured on
``benchmarks/krylov.py``'s 40 Darcy systems with Jacobi (sorted, 80x80): 12544
products in that form, 8450 in this one (scipy's ``gcrotmk``, which keeps its
vectors in ``x``'s space too, 8671). The harmonic Ritz step then works on
``V_hat = [U D, Z]``: the vectors of smallest ``|theta|`` with
``A u - theta u`` orthogonal to ``A range(V_hat)``, i.e. approximate
eigenvectors of ``A`` itself, for which ``W^T V_hat`` is formed in full (one
``(m + 1, n) x (n, m)`` product a refresh: ``W^T Z`` has no identity block).
Treating ``[U D, Z]`` as if it were ``[U D, V]`` (the identity block, no product)
recycled worse on that benchmark (11513 products); on a Helmholtz sequence with
Jacobi (6 systems, 60x60) the two forms needed 17744 and 17250 products, within
that indefinite problem's rounding, and the full product made the solve 20 %
slower there.

Mixed precision (``work_dtype=float32`` for a float64 system): on a CPU the
``n``-long rows are the cost, the Gram-Schmidt sweeps are bound by memory
traffic and the cycle-end products by arithmetic (measured at ``n = 6400``: one
sweep over 30 rows 43 us in float64, 19 us in float32; the refresh's products
about 0.45 ms, at the core's float64 peak). So the rows (``W``, ``U``, ``C``) are
held and multiplied in float32 while ``x``, the residual, the operator's products
and every small matrix stay float64. The float32 Arnoldi relation holds to about
``eps32 ||A v||`` a column, so the recurrence ``r - W G y`` drifts from
``b - A x`` by that much times the corrections; the true residual (one product)
therefore replaces it whenever the recurrence has fallen by ``1e-3``, stalls,
or claims convergence: iterative refinement whose inner solver is a run of
GCRO-DR cycles, the recycle space carried through (Carson & Higham, SIAM J. Sci.
Comput. 40, 2018, for GMRES-IR; Aliaga et al., Parallel Comput. 2022, for a
Krylov basis stored in lower precision). Each refinement gains about
``1 / (eps32 cond(A))``, so it needs ``cond(A)`` well below ``1.7e7``; a true
residual that does not fall ends the solve with ``stagnation`` and the last
verified iterate. Each refresh re-orthonormalises the new ``C`` (one Gram
pass, ``U`` transformed alike): in float32 it inherits the basis's loss of
orthogonality (about 1e-3 after a fast cycle), and sweeping later bases against
it compounded that until the basis collapsed (a heat system after four cycles,
and a Jacobi-preconditioned 80x80 Darcy system, where ``A M v`` falls largely
into ``range(C)`` and the sweep cancels most of it).

Cost at small ``n`` (the end of a cycle is dense work on ``(m + 1, n)`` and
``(k, n)`` blocks plus ``m x m`` LAPACK calls, next to only ``m - k`` Arnoldi
steps): each ``n``-long row is multiplied once per output, ``C U^T`` is carried
from small matrices, and a given recycle space is re-orthonormalised by Gram
passes rather than an ``(n, k)`` Householder QR; ``ritz_every`` spreads the
refresh over several cycles.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from ..._checks import all_finite, as_float_array, check_positive_int
from ..._compiled import compiled_once
from ..._iterate import iterate
from ..._solution import RESULTS, Solution
from ._arnoldi import ArnoldiCycle, arnoldi_cycle, least_squares_solution
from ._krylov import krylov_solve, norm, stall_result, start_result

__all__ = ["gcrodr", "RecycleSpace", "RecycleSolution"]

# Orthogonal-iteration steps for the harmonic Ritz subspace off CPU. It starts
# from the previous recycle space; exactness is not needed (any U gives a correct
# solve, a better one a faster one).
_RITZ_ITERATIONS = 16
# With ritz_every > 1, a cycle that left more than this fraction of its residual
# (a near stagnation) refreshes the recycle space anyway.
_SLOW_CYCLE = 0.9
# Mixed precision (work_dtype below b's): the residual is recomputed as b - A x
# once the recurrence has fallen by this factor since the last such residual.
_TRUE_RESIDUAL_EVERY = 1e-3


class RecycleSpace(eqx.Module):
    """A recycled Krylov subspace: ``U`` and ``C = A U`` (``(n, k)`` each, ``n``
    the size of ``b``), with orthonormal columns in ``C``. ``U`` lives in the
    solution's space, also with a preconditioner (``C`` involves no ``M``), so a
    space stays valid when the next system comes with another preconditioner.
    Columns may be zero (a dropped, degenerate direction). Pass it as
    ``gcrodr(..., recycle=space)`` for the next system; its ``C`` is recomputed
    from ``U`` there (``k`` products), since the operator may have changed."""

    U: Array
    C: Array

    @property
    def k(self) -> int:
        return self.U.shape[-1]


class RecycleSolution(Solution):
    """A :class:`jaxsolve.Solution` with the updated recycle space
    (:class:`RecycleSpace`) as ``.recycle``: pass it to the next solve."""

    recycle: RecycleSpace | None = None


def _gram_transform(rows: Array, tol) -> Array:
    """``T`` (``k x k``) with ``T rows`` orthonormal rows spanning the rows of
    ``rows`` whose Gram eigenvalue is above ``tol`` times the largest, from the
    eigendecomposition ``rows rows^T = V L V^T``: ``T = L^{-1/2} V^T``, with
    zero rows for the dropped directions."""
    lam, v = jnp.linalg.eigh(rows @ rows.T)
    keep = lam > tol * lam[-1]
    inv = jnp.where(keep, 1 / jnp.sqrt(jnp.where(keep, lam, 1)), 0)
    return inv[:, None] * v.T


def _orthonormal_pair(u_rows: Array, au_rows: Array) -> tuple[Array, Array]:
    """``(U', C')`` with ``C' = A U'``, ``C'`` orthonormal rows, from rows ``U``
    and ``A U``: ``U' = T U``, ``C' = T A U`` for a ``k x k`` transform ``T``
    from two Gram-matrix passes (CholeskyQR2 with an eigendecomposition in
    place of the Cholesky factor, so that a nearly dependent direction becomes a
    zero row instead of a breakdown). One pass leaves an orthogonality error of
    about ``eps cond(A U)^2``; directions with a Gram eigenvalue below
    ``100 eps`` of the largest (``cond > 0.1 / sqrt(eps)``) are dropped, so the
    error after the first pass is at most ``0.01`` and the second pass makes
    ``C'`` orthonormal to working precision. Why not a Householder QR: the
    ``(n, k)`` QR runs as unblocked LAPACK level-2 sweeps on CPU (measured
    0.8 ms at ``n = 4096``, ``k = 20``, a system's worth of GCRO-DR's start-up),
    where this is five ``k x k`` by ``k x n`` products. In a sorted sequence
    ``A U`` is nearly orthonormal already (``U`` came with ``C = A_prev U``)."""
    eps = jnp.finfo(au_rows.dtype).eps
    t1 = _gram_transform(au_rows, 100 * eps)
    c1 = t1 @ au_rows
    t2 = _gram_transform(c1, 1e-2)
    return (t2 @ t1) @ u_rows, t2 @ c1


def _ritz_subspace(
    cycle: ArnoldiCycle,
    start,
    ud_rows: Array,
    k: int,
    iterations: int,
    ritz: str = "auto",
    cu_d: Array | None = None,
) -> tuple[Array, Array]:
    """``P`` (``(m, k)``, orthonormal columns): a basis of the span of the ``k``
    harmonic Ritz coefficient vectors ``z`` of smallest ``|theta|`` in
    ``G^T G z = theta G^T W^T V_hat z``, the dominant invariant subspace of
    ``K = G^+ W^T V_hat``; unused columns (and zero pivots) get eigenvalue 0.
    Also returns ``W^T V_hat`` (``(m + 1, m)``). ``cu_d``, if given, is
    ``C^T U D`` (``(k, k)``: the recycled rows of ``W`` against ``U D``),
    carried from the cycle that formed ``U`` and ``C``, so that only
    ``V^T U D`` is computed from the ``n``-long rows."""
    basis = cycle.basis
    m = cycle.hess.shape[1]
    small = cycle.hess.dtype
    cols = jnp.arange(m)
    used = cols < start + cycle.steps
    tri = cycle.tri[:m]
    active = used & (jnp.diagonal(tri) != 0)
    both = active[:, None] & active[None, :]
    tri = jnp.where(both, tri, 0) + jnp.diag(jnp.where(active, 0, 1).astype(tri.dtype))
    # W^T V_hat: e_j in the Krylov columns (V_hat's column j is W's row j there),
    # W (U D)^T in the recycled ones.
    if cycle.precond_basis is not None:
        # Flexible form: V_hat = [U D, Z] in x's space, so W^T V_hat is formed
        # in full (its Krylov columns W^T M V are no unit vectors). Rows of Z
        # below `start` are zero, and so is U D when start = 0: their sum holds
        # V_hat's rows in both cases.
        v_hat = cycle.precond_basis.at[:k].add(ud_rows)
        w_v = (basis @ v_hat.T).astype(small)
    elif cu_d is None:
        wu_k = (basis @ ud_rows.T).astype(small)
    else:
        # The first k rows of W are C when start = k; when start = 0 these
        # columns are masked below (and U D is zero anyway).
        wu_k = jnp.concatenate([cu_d, (basis[k:] @ ud_rows.T).astype(small)])
    if cycle.precond_basis is None:
        wu = jnp.zeros((m + 1, m), small).at[:, :k].set(wu_k)
        eye = jnp.eye(m + 1, m, dtype=small)
        w_v = jnp.where(cols[None, :] < start, wu, eye)
    # K = G^+ W^T V_hat = R^{-1} (Q^T)[:m] W^T V_hat. LU rather than
    # solve_triangular: XLA:CPU's triangular solve with a matrix right-hand side
    # is a slow loop; LU of a triangular matrix pivots nothing (same solve).
    kmat = jnp.linalg.solve(tri, cycle.rot[:m] @ w_v)
    kmat = jnp.where(both, kmat, 0)
    return _dominant_subspace(kmat, k, iterations, ritz), w_v


def _subspace_by_eig(kmat: Array, k: int) -> Array:
    """The exact dominant ``k``-dimensional invariant subspace of ``K`` from its
    eigenvectors (``jnp.linalg.eig``: XLA implements it on CPU only). A complex
    pair ``z, conj(z)`` contributes ``Re z`` and ``Im conj(z)``, which span the
    pair's real invariant subspace; a pair cut at ``k`` contributes ``Re z``."""
    lam, z = jnp.linalg.eig(kmat)
    idx = jnp.argsort(-jnp.abs(lam))[:k]
    lam, z = lam[idx], z[:, idx]
    cols = jnp.where(lam.imag[None, :] >= 0, z.real, z.imag)
    return jnp.linalg.qr(cols.astype(kmat.dtype))[0]


def _subspace_by_iteration(kmat: Array, k: int, iterations: int) -> Array:
    """Orthogonal (subspace) iteration from the first ``k`` coordinates (the
    previous recycle space): matrix products and thin QRs, any backend.
    Unrolled: a nested loop here costs XLA:CPU more than the few QRs."""
    p = jnp.eye(kmat.shape[0], k, dtype=kmat.dtype)
    for _ in range(iterations):
        p = jnp.linalg.qr(kmat @ p)[0]
    return p


def _dominant_subspace(kmat: Array, k: int, iterations: int, ritz: str) -> Array:
    """``ritz="eig"``: exact eigenvectors (CPU only); ``"iterate"``: orthogonal
    iteration (any backend; an approximation of the same span: any recycle space
    keeps GCRO-DR correct, a better one makes it faster); ``"auto"``: exact on
    CPU, iteration on GPU/TPU, where XLA has no non-symmetric eigensolver."""
    if ritz == "eig":
        return _subspace_by_eig(kmat, k)
    if ritz == "iterate":
        return _subspace_by_iteration(kmat, k, iterations)
    return lax.platform_dependent(
        kmat,
        cpu=lambda a: _subspace_by_eig(a, k),
        default=lambda a: _subspace_by_iteration(a, k, iterations),
    )


def _combine(coef: Array, rows: Array) -> Array:
    """``coef^T rows``: combinations (``(c, r)`` of ``r`` coefficient rows) of
    ``n``-long rows. The small transpose is materialised first (the barrier
    stops XLA from folding it into the product's dimension numbers): XLA:CPU's
    product with a transposed left operand ran 1.3-1.4x slower at these shapes
    (``(42, 21) x (21, 6400)``: 377 against 279 us, one core)."""
    return lax.optimization_barrier(coef.T).astype(rows.dtype) @ rows


def _products(
    coef_v: Array, coef_w: Array, cycle: ArnoldiCycle, start, ud_rows: Array
) -> tuple[Array, Array]:
    """``coef_v^T V_hat`` and ``coef_w^T W`` (rows; ``coef_v`` ``(m, c)``,
    ``coef_w`` ``(m + 1, c)``) without forming ``V_hat``: its rows are ``U D``
    below ``start``, the Krylov rows ``W[j]`` up to the used columns, zero
    beyond. The first ``k`` rows of ``V_hat`` are either all ``U D``
    (``start = k``) or all Krylov rows (``start = 0``), and rows ``k .. m - 1``
    are ``W[k:m]`` in both cases, so each output touches each ``n``-long row it
    needs once (``m`` rows for ``V_hat``, not ``k + m + 1``), and the two
    products with ``W[k:]`` are one matrix product."""
    m = cycle.hess.shape[1]
    k = ud_rows.shape[0]
    c = coef_v.shape[1]
    used = jnp.arange(m)[:, None] < start + cycle.steps  # recycled + Krylov
    coef_v = jnp.where(used, coef_v, 0)
    head_w = cycle.basis[:k]
    z = cycle.precond_basis
    if z is not None:
        # Flexible form: V_hat's Krylov columns are the preconditioned Z rows.
        head_v = jnp.where(start > 0, ud_rows, z[:k])
        along_v = _combine(coef_v[:k], head_v) + _combine(coef_v[k:], z[k:])
        along_w = _combine(coef_w[:k], head_w) + _combine(coef_w[k:], cycle.basis[k:])
        return along_v, along_w
    head_v = jnp.where(start > 0, ud_rows, head_w)
    tail_v = jnp.concatenate([coef_v[k:], jnp.zeros((1, c), coef_v.dtype)])
    tail = _combine(jnp.concatenate([tail_v, coef_w[k:]], axis=1), cycle.basis[k:])
    along_v = _combine(coef_v[:k], head_v) + tail[:c]
    along_w = _combine(coef_w[:k], head_w) + tail[c:]
    return along_v, along_w


def _correction(cycle: ArnoldiCycle, start, ud_rows: Array) -> tuple[Array, Array]:
    """The cycle's least-squares correction alone: ``V_hat y`` (to ``x``) and
    ``W G y`` (off the residual), for a cycle that keeps its recycle space."""
    y = least_squares_solution(cycle, start)
    dx, dr = _products(y[:, None], (cycle.hess @ y)[:, None], cycle, start, ud_rows)
    return dx[0], dr[0]


def _update(
    cycle: ArnoldiCycle, start, ud_rows: Array, k: int, eps, ritz: str, cu_d=None
) -> tuple[Array, Array, Array, Array, Array]:
    """The end of a cycle: the correction ``V_hat y`` to ``x``, the change
    ``W G y`` of the residual, the new recycle space ``(U, C)`` (rows): the
    span of the ``k`` harmonic Ritz vectors of smallest ``|theta|`` over
    ``range(V_hat)``, and its ``C U^T`` (``(k, k)``, for the next refresh,
    see :func:`_ritz_subspace`). The products with the ``n``-long bases are
    batched (``y`` rides along with ``U``'s coefficients, ``G y`` with
    ``C``'s): see :func:`_products`."""
    y = least_squares_solution(cycle, start)
    p, w_v = _ritz_subspace(cycle, start, ud_rows, k, _RITZ_ITERATIONS, ritz, cu_d)
    # A V_hat P = W G P = W Q R = (W Q L) S Rt (thin QR of the small G P, then
    # the SVD of its k x k factor R), so U = V_hat P Rt^T S^-1 and C = W Q L
    # satisfy A U = C with orthonormal C; a direction with a relative singular
    # value below eps is dropped as a zero column. The small factors are folded
    # into the coefficients first: no product with an n-long intermediate.
    q, r = jnp.linalg.qr(cycle.hess @ p)
    lsv, s, rsv = jnp.linalg.svd(r)
    keep = s > eps * s[0]
    inv = jnp.where(keep, 1 / jnp.where(keep, s, 1), 0)
    u_coef = p @ (inv[:, None] * rsv).T
    c_coef = (q @ lsv) * keep[None, :]
    along_v, along_w = _products(
        jnp.concatenate([y[:, None], u_coef], 1),
        jnp.concatenate([cycle.hess @ y[:, None], c_coef], 1),
        cycle,
        start,
        ud_rows,
    )
    dx, u_rows = along_v[0], along_v[1:]  # V_hat y, U
    dr, c_rows = along_w[0], along_w[1:]  # W G y, C
    # C U^T = c_coef^T (W V_hat) u_coef, from small matrices (V_hat's unused
    # columns get no coefficient, as in _products).
    used = jnp.arange(u_coef.shape[0])[:, None] < start + cycle.steps
    cu = c_coef.T @ (w_v @ jnp.where(used, u_coef, 0))
    return dx, dr, u_rows, c_rows, cu


def _make_loop(
    m: int,
    k: int,
    recycle_rows,
    ritz: str = "auto",
    ritz_every: int = 1,
    work_dtype=None,
):
    """The GCRO-DR(m, k) loop for :func:`krylov_solve`; ``recycle_rows`` is
    ``None`` or ``U`` as rows ``(k, n)``; ``work_dtype`` the dtype of the
    ``n``-long Krylov rows (``None``: ``b``'s)."""

    def loop(matvec, b, x0, r, precond, tol, max_steps, input_code):
        # U lives in x's space and C = A U whether or not there is a
        # preconditioner M: the Arnoldi steps keep Z = M V (flexible form, see
        # the module docstring), so nothing recycled depends on this system's M.
        n = b.shape[0]
        dtype = b.dtype
        work = dtype if work_dtype is None else jnp.dtype(work_dtype)
        mixed = work != dtype
        eps = jnp.finfo(dtype).eps * 1e3
        result = start_result(input_code, r)
        x = x0
        # The Arnoldi steps, the recycle space and the cycle-end products run on
        # rows of the work dtype; x, the residual and the small matrices keep
        # b's (see `work_dtype` in gcrodr's docstring).
        if mixed:
            full_matvec = matvec
            matvec = lambda v: full_matvec(v.astype(dtype)).astype(work)  # noqa: E731
            if precond is not None:
                full_precond = precond
                precond = lambda v: full_precond(v.astype(dtype)).astype(work)  # noqa: E731
        if recycle_rows is None:
            u_rows = jnp.zeros((k, n), work)
            c_rows = jnp.zeros((k, n), work)
            have = jnp.asarray(False)
            matvecs = jnp.asarray(0, jnp.int32)
            cu = jnp.zeros((k, k), dtype)
        else:
            u_in = recycle_rows.astype(dtype)
            result = RESULTS.where(
                all_finite(u_in) | (result != RESULTS.successful),
                result,
                RESULTS.nonfinite_input,
            )
            u_in = jnp.where(jnp.isfinite(u_in), u_in, 0)
            # An all-zero space (what solve_family starts a chain with) means
            # "none": no products spent, the first cycle is a GMRES(m) cycle.
            have = jnp.any(u_in != 0)
            # In the given dtype: C = A U is recomputed for this operator.
            u_rows, c_rows = lax.cond(
                have,
                lambda u: _orthonormal_pair(
                    u, jax.vmap(full_matvec if mixed else matvec)(u)
                ),
                lambda u: (u, u),
                u_in,
            )
            cu = c_rows @ u_rows.T
            u_rows, c_rows = u_rows.astype(work), c_rows.astype(work)
            matvecs = jnp.where(have, k, 0).astype(jnp.int32)
        zero = jnp.asarray(0, jnp.int32)
        beta0 = norm(r)
        # cu = C U^T (k x k), kept up to date from small matrices: see _update.
        # Mixed precision also carries the last iterate whose residual was
        # computed as b - A x (x_ref) and that residual's norm (beta_true).
        init = (x, r, beta0, zero, matvecs, result, u_rows, c_rows, cu, have, zero)
        init = init + ((beta0, x) if mixed else ())

        def keep_going(state):
            _, _, beta, total, _, result, *_ = state
            return (result == RESULTS.successful) & (beta > tol) & (total < max_steps)

        def cycle(state):
            x, r, beta_old, total, matvecs, result, u_rows, c_rows, cu, have, cycles = (
                state[:11]
            )
            # Improve x over range(U): r -= C C^T r (exactly the GCRO-DR start; in
            # later cycles it only removes rounding, as r is already orthogonal).
            cr = c_rows @ r.astype(work)
            x = x + (cr @ u_rows).astype(dtype)
            r = r - (cr @ c_rows).astype(dtype)
            beta = norm(r)
            start = jnp.where(have, k, 0)
            u_norm = jnp.sqrt(jnp.sum(u_rows**2, axis=1))
            d = jnp.where(u_norm > 0, 1 / jnp.where(u_norm > 0, u_norm, 1), 1)
            ud_rows = u_rows * d[:, None]
            d = d.astype(dtype)
            basis = jnp.zeros((m + 1, n), work).at[:k].set(c_rows)
            basis = basis.at[start].set(
                (r / jnp.where(beta == 0, 1, beta)).astype(work)
            )
            hess = jnp.zeros((m + 1, m), dtype).at[:k, :k].set(jnp.diag(d))
            arnoldi = arnoldi_cycle(
                matvec,
                basis,
                hess,
                start,
                beta,
                tol,
                max_steps - total,
                precond,
            )

            # The harmonic Ritz step (the dense end-of-cycle work, which costs
            # about as much as the cycle's Arnoldi steps at m = 40, k = 20) runs
            # every `ritz_every` cycles and always on the last one, so that the
            # recycle space handed on is fresh; in between, U and C are kept
            # (A U = C still holds: the operator is the same).
            def refresh():
                out = _update(arnoldi, start, ud_rows, k, eps, ritz, cu * d[None, :])
                if not mixed:
                    return out
                # In float32 the new C inherits the basis's loss of orthogonality
                # (1e-3 after a fast-converging cycle), and the next sweeps against
                # it compound it until the basis collapses (a heat system: C^T C
                # off by 1 after four cycles, stagnation at 4e-7). One Gram pass
                # restores it to about eps32 (C is orthonormal to 1e-3 already),
                # with U transformed alike (A U = C kept) and C U^T from small
                # matrices.
                dx, dr, new_u, new_c, new_cu = out
                t = _gram_transform(new_c, 100 * jnp.finfo(work).eps)
                t_work = t.astype(work)
                t = t.astype(dtype)
                return dx, dr, t_work @ new_u, t_work @ new_c, t @ new_cu @ t.T

            if ritz_every == 1:
                dx, dr, new_u, new_c, new_cu = refresh()
            else:
                estimate = arnoldi.residual_estimate(start)
                last = (estimate <= tol) | (total + arnoldi.steps >= max_steps)
                # A cycle that removed less than a tenth of the residual refreshes
                # whatever the schedule: with a fixed even period, a stale U made
                # GCRO-DR stagnate on indefinite Helmholtz systems (see the
                # docstring), while a converging chain keeps its cheap cycles.
                slow = estimate > _SLOW_CYCLE * beta
                dx, dr, new_u, new_c, new_cu = lax.cond(
                    last | slow | (cycles % ritz_every == 0),
                    refresh,
                    lambda: (*_correction(arnoldi, start, ud_rows), u_rows, c_rows, cu),
                )
            x_new = x + dx.astype(dtype)
            # The residual by recurrence, r - W^T G y (as Parks et al.): no product
            # with A. krylov_solve checks the true residual at the end and
            # restarts from it if rounding made the two drift apart.
            r_new = r - dr.astype(dtype)
            beta_new = norm(r_new)
            took = arnoldi.steps > 0
            u_rows = jnp.where(took, new_u, u_rows)
            c_rows = jnp.where(took, new_c, c_rows)
            cu = jnp.where(took, new_cu, cu)
            stalled = ~(beta_new < beta_old)
            steps = arnoldi.steps
            matvecs = matvecs + steps
            extra = ()
            if not mixed:
                result = stall_result(result, stalled & (beta_new > tol), beta_new)
            else:
                # Mixed precision: the recurrence drifts from b - A x by about the
                # work precision times the corrections made since the last true
                # residual, so the true one (b's dtype, one product) replaces it
                # once the recurrence has fallen by _TRUE_RESIDUAL_EVERY, when it
                # stalls, and before convergence is declared: iterative refinement
                # with GCRO-DR cycles as the inner solver, the recycle space
                # carried across. A true residual no smaller than the last one
                # means the work precision cannot resolve this system: stagnation,
                # and the solve returns the last verified iterate x_ref.
                beta_true, x_ref = state[11], state[12]
                due = (beta_new <= tol) | (beta_new < _TRUE_RESIDUAL_EVERY * beta_true)
                due = (due | stalled) & (result == RESULTS.successful)

                def recompute(r_new):
                    r_true = b - full_matvec(x_new)
                    return r_true, norm(r_true)

                r_new, beta_new = lax.cond(
                    due, recompute, lambda r: (r, norm(r)), r_new
                )
                matvecs = matvecs + due.astype(jnp.int32)
                improved = due & (beta_new < beta_true)
                stuck = due & ~improved & (beta_new > tol)
                result = stall_result(result, stuck, beta_new)
                extra = (
                    jnp.where(improved, beta_new, beta_true),
                    jnp.where(improved, x_new, x_ref),
                )
            return (
                x_new,
                r_new,
                beta_new,
                total + steps,
                matvecs,
                result,
                u_rows,
                c_rows,
                cu,
                have | took,
                cycles + 1,
                *extra,
            )

        state, _ = iterate(cycle, keep_going, init, max_steps)
        x, _, _, total, matvecs, result, u_rows, c_rows, *_ = state
        if mixed:
            # After a stagnation the last iterate is unverified (it may have
            # drifted far): return the last one whose residual was computed.
            x = jnp.where(result == RESULTS.successful, x, state[12])
        extras = {
            "matvecs": matvecs,
            "U": u_rows.astype(dtype),
            "C": c_rows.astype(dtype),
        }
        return x, result, total, extras

    return loop


@compiled_once
def gcrodr(
    operator,
    b,
    *,
    m: int = 40,
    k: int = 20,
    recycle: RecycleSpace | None = None,
    rtol=1e-6,
    atol=0.0,
    max_steps: int | None = None,
    x0=None,
    preconditioner=None,
    throw: bool = True,
    ritz: str = "auto",
    ritz_every: int = 1,
    work_dtype=None,
) -> RecycleSolution:
    r"""Solve ``A x = b`` for a general square ``A`` by GCRO-DR(m, k) (Parks, de
    Sturler, Mackey, Johnson & Maiti, 2006), recycling a Krylov subspace from an
    earlier, related system, right-preconditioned (``A M y = b - A x0``,
    ``x = x0 + M y``).

    Each cycle minimises ``||b - A x||_2`` over ``range(U)`` plus ``M`` times
    ``m - k`` Krylov directions of ``A M`` orthogonal to ``C = A U``, and replaces
    ``U`` by the ``k`` harmonic Ritz vectors of smallest magnitude over that
    space (approximate eigenvectors of ``A`` nearest zero): deflating them
    lets GCRO-DR converge where GMRES(m) stagnates, and carried to the next system
    of a slowly varying sequence (``recycle=``) it saves most of that system's
    products, also when the preconditioner changes with the system (``U`` is kept
    in ``x``'s space, the flexible form). Without ``recycle`` the first cycle is
    one GMRES(m) cycle.

    Args:
        operator: ``A``, a square ``(n, n)`` array or a function ``x -> A x``.
        b: the right-hand side (``(n,)`` for a matrix operator).
        m: the subspace dimension per cycle (static; clipped to ``n``).
        k: the recycle dimension (static), ``1 <= k < m`` (clipped to ``m - 1``
            when ``m`` is clipped).
        recycle: a :class:`RecycleSpace` from an earlier solve (``U`` and ``C`` of
            shape ``(b.size, k)``), or ``None``. Its ``C`` is recomputed for this
            operator (``k`` products). It is not differentiated.
        rtol, atol: stop when ``||b - A x||_2 <= max(rtol ||b||_2, atol)``.
        max_steps: cap on the total number of Arnoldi steps; default ``10 n``.
        x0: initial guess (default zeros).
        preconditioner: ``M ~ A^{-1}`` (right preconditioner), matrix or function.
            GCRO-DR then keeps ``Z = M V`` as well (one more ``(m, n)`` buffer).
        throw: raise a runtime error if the solve fails (else inspect ``.result``).
        ritz: how the harmonic Ritz subspace is computed each cycle (static):
            ``"eig"`` exactly (``jnp.linalg.eig``, CPU only), ``"iterate"`` by
            orthogonal iteration (any backend, cheaper per cycle, an approximation
            that recycles less well on hard indefinite problems), ``"auto"``
            (default) exact on CPU and iteration on GPU/TPU.
        ritz_every: refresh the recycle space (the harmonic Ritz step and the new
            ``U, C``, dense work that costs about as much as the cycle's ``m - k``
            Arnoldi steps at the default sizes) every ``ritz_every`` cycles and on
            the last cycle (static). ``1`` is Parks et al.'s GCRO-DR; in between,
            a cycle minimises over the kept ``range(U)`` and its new Krylov
            directions, which is still exact GCRO, only with a staler ``U``.
            A cycle that removes less than a tenth of its residual (a near
            stagnation) refreshes anyway: without that rule, on indefinite
            Helmholtz systems (omega 20, 48x48 and 60x60) every even
            ``ritz_every`` (2, 4, 6) made GCRO-DR stagnate (a 60x60 system:
            36002 products without converging, against 2554 at ``1``; 8 sorted
            48x48 systems: 3 of 8 not converged, 140983 products against 18756).
            With it that 60x60 system needs 3158-3538 products at 2 to 6, the 8
            systems 29936 at 2 and 20016 at 3, all converged. On the SPD Darcy
            benchmark the rule never fires (the same products at 2 and 3). The
            rule is a guard, not a tuning: a stale ``U`` still costs products on
            indefinite problems, where ``1`` remains the safe choice.
        work_dtype: the dtype of the ``n``-long Krylov work (static): the
            Arnoldi basis, ``U`` and ``C`` (and ``Z``), the Gram-Schmidt sweeps
            and the cycle-end products. ``None`` (default): ``b``'s.
            ``jnp.float32`` with a float64 ``b`` is *mixed precision*: those rows,
            which are most of the memory traffic and the arithmetic, move and
            multiply at half the cost, while ``x``, the residual, the operator's
            products and the small projected matrices stay in float64, and the
            residual is recomputed as ``b - A x`` in float64 (one product)
            whenever the cycles' recurrence has fallen by ``1e-3`` since the
            last such residual and before convergence is declared: iterative
            refinement with GCRO-DR cycles as the inner solver (as in
            mixed-precision GMRES-IR, Carson & Higham 2018, and compressed-basis
            GMRES, Aliaga et al. 2022), so the answer meets ``rtol`` in float64.
            It needs ``cond(A)`` well below ``1 / eps(float32) ~ 1.7e7`` (each
            refinement gains about ``1 / (eps32 cond(A))``): a true residual that
            does not fall below the last one ends the solve with ``stagnation``
            and the last iterate whose residual was computed (then solve in
            float64). A ``preconditioner`` is applied in float64 to the float32
            rows. The recycle space handed on is float64 (its ``C`` is
            recomputed from ``U`` by the next solve).

    Returns:
        :class:`RecycleSolution`: ``.value = x``, ``.num_steps`` (Arnoldi steps),
        ``.residual = ||b - A x||_2``, ``.stats["matvecs"]`` (every product with
        ``A``: Arnoldi steps, ``k`` for a given recycle space, the first and the
        final true residual; within the solve the residual is updated by
        recurrence, as in Parks et al., and with a lower ``work_dtype`` also
        recomputed, one product each time) and ``.recycle``, the updated
        :class:`RecycleSpace` for the next system.

    Runs under ``jit`` and ``vmap`` (fixed-size buffers, ``lax.while_loop``), on
    any backend (no host eigensolver, see the module docstring). Differentiable
    with respect to ``b`` and the operator's closed-over arrays through
    ``jax.lax.custom_linear_solve``: the tangent systems reuse the recycle space,
    the transposed systems of reverse mode are solved by GCRO-DR without one.
    """
    if ritz not in ("auto", "eig", "iterate"):
        raise ValueError(f"`ritz` must be 'auto', 'eig' or 'iterate', got {ritz!r}")
    m = check_positive_int(m, "m")
    k = check_positive_int(k, "k")
    ritz_every = check_positive_int(ritz_every, "ritz_every")
    if work_dtype is not None:
        work_dtype = jnp.dtype(work_dtype)
        if work_dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
            raise ValueError(
                f"`work_dtype` must be None, float32 or float64, got {work_dtype}"
            )
    if k >= m:
        raise ValueError(
            f"`k` must be < `m` (the recycle space is part of each cycle), "
            f"got k={k}, m={m}"
        )
    b_arr = as_float_array(b, "b")
    if work_dtype is not None and work_dtype.itemsize > b_arr.dtype.itemsize:
        raise ValueError(
            f"`work_dtype` ({work_dtype}) must not be wider than `b`'s dtype "
            f"({b_arr.dtype}): it lowers the precision of the Krylov work"
        )
    n = b_arr.size
    if n < 2:
        raise ValueError(f"gcrodr needs a system of size >= 2, got `b` of size {n}")
    if m > n:
        m = n
        k = min(k, m - 1)
    recycle_rows = None
    if recycle is not None:
        if not isinstance(recycle, RecycleSpace):
            raise ValueError(
                f"`recycle` must be a RecycleSpace (from an earlier solve's "
                f"`.recycle`) or None, got {type(recycle).__name__}"
            )
        u = as_float_array(recycle.U, "recycle.U")
        c = as_float_array(recycle.C, "recycle.C")
        if u.shape != (n, k) or c.shape != (n, k):
            raise ValueError(
                f"`recycle` must hold U and C of shape ({n}, {k}) (b.size, k), got "
                f"U {u.shape} and C {c.shape}"
            )
        recycle_rows = lax.stop_gradient(u.T)

    sol = krylov_solve(
        _make_loop(m, k, recycle_rows, ritz, ritz_every, work_dtype),
        "gcrodr",
        operator,
        b,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        x0=x0,
        preconditioner=preconditioner,
        throw=throw,
        symmetric=False,
        # The recycle space belongs to A, not to A^T.
        transpose_loop=_make_loop(m, k, None, ritz, ritz_every, work_dtype),
    )
    aux = sol.aux
    recycle_out = RecycleSpace(
        U=lax.stop_gradient(aux["U"].T), C=lax.stop_gradient(aux["C"].T)
    )
    return RecycleSolution(
        value=sol.value,
        result=sol.result,
        num_steps=sol.num_steps,
        residual=sol.residual,
        stats=sol.stats,
        recycle=recycle_out,
    )
