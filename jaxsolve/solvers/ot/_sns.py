"""Sinkhorn-Newton-Sparse (Tang et al., ICLR 2024): a Sinkhorn warm-up, then
Newton steps on the concave dual with a sparsified Hessian solved by CG."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from ..._checks import check_nonnegative, check_static_int
from ..._compiled import compiled_once
from ..._iterate import iterate
from ..._solution import RESULTS
from ..linear._cg import cg_steps
from . import _kernel as kernel
from ._dual import (
    INVALID_OT_INPUT,
    OTSolution,
    Problem,
    solve_ot,
)
from ._pointcloud import PointCloud
from ._sinkhorn import sinkhorn_block, sinkhorn_stage

__all__ = ["sinkhorn_newton_sparse"]

# Backtracking line search: halve the step until Armijo's condition holds.
_ARMIJO = 1e-4
_MAX_HALVINGS = 30
# The largest change of any log-plan entry that a first trial step may make.
_MAX_EXPONENT_STEP = 100.0
# Sinkhorn steps run after a Newton step that cut the marginal error by less than
# _SLOW_NEWTON (or whose line search failed), before Newton goes on: at most
# _SINKHORN_BLOCK; after a step of alpha >= _FULL_STEP, they stop once the error
# is below _SLOW_PAIR times the error before that Newton step (see step()).
_SINKHORN_BLOCK = 10
_SLOW_NEWTON = 0.5
# The top-k pattern is reselected unless the last step cut the error by at
# least 1 / _RESELECT (see step()).
_RESELECT = 0.3
# ... and unless the kept pattern still holds the plan's mass: it misses at most
# _STALE times what it missed when it was selected (plus _STALE_FLOOR).
_STALE = 2.0
_STALE_FLOOR = 1e-6
# A full Newton step that leaves at most _QUICK_ACCEPT of the marginal error is
# taken without the line search (see step()).
_QUICK_ACCEPT = 0.5
_SLOW_PAIR = 0.75
_FULL_STEP = 0.5
# Anderson acceleration: directions combined (see accelerate()).
_ANDERSON = 3
# ... where the pattern misses more than _ANDERSON_DROPPED of the plan's mass
# and the last step cut the error by less than 1 / _ANDERSON_RATE.
_ANDERSON_DROPPED = 1e-3
_ANDERSON_RATE = 0.1
# warmup_dtype=None: the warm-up of a float64 point cloud with at least this many
# entries (2048 x 2048) runs in float32. Below it the warm-up takes milliseconds
# and a second traced Sinkhorn loop would only add compile time (a 300 x 280
# cloud: 4.9-5.2 s against 3.6-3.9 s).
_LOW_WARMUP_MIN = 2**22
# Newton epsilon scaling (see _sns_inner): the direct solve at epsilon gives up
# after _CAPPED_STEPS Newton steps whose trust region (_MAX_EXPONENT_STEP) cut
# the first trial step below _CAPPED_ALPHA; Newton then solves at epsilon
# 2^_LEVELS, ..., 2 to a marginal error of _LEVEL_TOL times the mass, each from
# the last after _LEVEL_WARMUP Sinkhorn steps, and at epsilon to tol. Measured
# on 128 x 128 points on a line, peaked marginals, epsilon 1.4e-3 of the median
# cost (the differential check's seed 109): 0 / 5 / 10 / 20 warm-up steps a
# level took 32 / 23 / 21 / 18 Newton and 114 / 100 / 136 / 184 Sinkhorn
# steps; levels solved to 1e-3 rather than 1e-6 took 14 Newton steps against
# 21 (measured by chained warm starts, 20 Sinkhorn steps a level).
_CAPPED_ALPHA = 1e-2
_CAPPED_STEPS = 2
_LEVELS = 5
_LEVEL_TOL = 1e-3
_LEVEL_WARMUP = 5
# newton_solver="auto": the dense exact direction for a cost matrix with
# max(n, m) min(n, m)^2 <= _DENSE_MAX^3, at a step whose top-k pattern misses
# more than _DENSE_DROPPED of the plan's mass.
_DENSE_MAX = 1024
_DENSE_DROPPED = 1e-3
# ... and every step dense up to max(n, m) min(n, m)^2 <= _DENSE_ALWAYS^3.
_DENSE_ALWAYS = 256


class _NewtonState(NamedTuple):
    # Nothing of size n x m: the plan is only ever reduced (see _kernel), so a
    # point cloud's solve keeps O((n + m) k) memory.
    f: Array
    g: Array
    rows: Array  # (n,), P 1 at (f, g)
    cols: Array  # (m,), P^T 1
    grad: Array  # (n + m,), the marginal residuals (a - P 1, b - P^T 1)
    err: Array  # their L1 norm
    stalled: Array  # the last line search failed
    cg_steps: Array
    dense_steps: Array  # Newton steps whose direction came from dense_direction
    dropped_mass: Array  # the fraction of P's mass the last pattern missed
    selected_dropped: Array  # ... when the pattern was selected
    selections: Array  # top-k selections of the pattern
    line_search_steps: Array
    pattern: Array  # (n, k), the column indices of the sparsified Hessian
    pattern_cost: Array  # (n, k), C at those entries
    previous_err: Array  # err before the last step
    sinkhorn_steps: Array  # Sinkhorn steps, the warm-up's and after slow Newton steps
    # Anderson acceleration of the Newton steps (see accelerate()): the scaled
    # potentials (f, g) / epsilon where the last _ANDERSON directions were
    # found (latest first), those (unaccelerated) directions, how many of
    # them belong to the current pattern, and whether the next direction may
    # be accelerated.
    history_u: Array  # (_ANDERSON, n + m)
    history_z: Array  # (_ANDERSON, n + m)
    history_size: Array
    accelerable: Array
    started: Array  # False until the warm-up, the loop's first iteration, has run
    capped: Array  # Newton steps whose first trial step was below _CAPPED_ALPHA


def _once(pred, fn, operand, default):
    """``fn(operand)`` if ``pred`` else ``default``, by a loop of 0 or 1 trips:
    under ``vmap`` a ``lax.cond`` runs both branches for every element, a loop
    only if some element needs it."""

    def body(c):
        return jnp.asarray(False), fn(operand)

    return lax.while_loop(lambda c: c[0], body, (pred, default))[1]


def _resolve_solver(solver: str, dtype, n: int, m: int) -> str:
    """``newton_solver="auto"`` made concrete where the problem decides it:
    ``"cg"`` in float32, ``"dense"`` for small problems; ``"auto"`` (a
    per-step choice) otherwise."""
    if solver == "auto" and dtype != jnp.float64:
        # In float32 the dense Schur complement loses its small eigenvalues to
        # cancellation (d2_j - sum_i P_ij^2 / d1_i of a near-permutation plan):
        # measured on C ~ U[0, 1], n = 200, eta = 1e4, the dense steps stalled
        # at 1e-3 where CG converges in 20 Newton steps.
        solver = "cg"
    if solver == "auto" and n * m * m <= _DENSE_ALWAYS**3:
        # Small problems: every step dense. No top-k selection and no CG loop
        # to compile (a forward SNS at 60 x 50 compiles in 2.0 s against 2.8 s
        # for "auto"), and no slower: measured on one core, 200 x 200 random
        # costs at eta = 1200 10.7 ms against 21.9 ms, 50 x 50 2.2 ms against
        # 30 ms (k = 32 of 50 entries left Newton at a linear rate).
        solver = "dense"
    return solver


def _initial_state(f, g, width: int) -> _NewtonState:
    """A Newton stage's state before its warm-up, at ``(f, g)``; ``width``
    is the pattern's (``k``, or 0 for dense steps)."""
    n, m = f.shape[0], g.shape[0]
    dtype = f.dtype
    zero = jnp.asarray(0, jnp.int32)
    return _NewtonState(
        f,
        g,
        jnp.zeros(n, dtype),
        jnp.zeros(m, dtype),
        jnp.zeros(n + m, dtype),
        # inf: a warm-up with a traced schedule of 0 halvings runs its first
        # step whatever the error (see sinkhorn_block).
        jnp.full((), jnp.inf, dtype),
        stalled=jnp.asarray(False),
        cg_steps=zero,
        dense_steps=zero,
        dropped_mass=jnp.zeros((), dtype),
        selected_dropped=jnp.zeros((), dtype),
        selections=zero,
        line_search_steps=zero,
        pattern=jnp.zeros((n, width), jnp.int32),
        pattern_cost=jnp.zeros((n, width), dtype),
        previous_err=jnp.asarray(0, dtype),  # 0: the first step selects
        history_u=jnp.zeros((_ANDERSON, n + m), dtype),
        history_z=jnp.zeros((_ANDERSON, n + m), dtype),
        history_size=zero,
        accelerable=jnp.asarray(False),
        sinkhorn_steps=zero,
        started=jnp.asarray(False),
        capped=zero,
    )


def _newton_stage(
    p: Problem,
    start: _NewtonState,
    k,
    max_steps,
    cg_rtol,
    cg_max_steps,
    solver,
    warmup_steps=0,
    halvings=0,
    per_level=1,
    may_give_up=False,
):
    """The Newton stage at ``p.epsilon`` from ``start``'s potentials (its
    counters go on; ``solver`` as :func:`_resolve_solver` leaves it): a
    warm-up of ``warmup_steps`` Sinkhorn steps (traced; ``halvings`` of
    epsilon, static or traced), then at most ``max_steps`` Newton steps
    (traced). With ``may_give_up`` (traced) it stops after ``_CAPPED_STEPS``
    steps whose trust region cut the first trial below ``_CAPPED_ALPHA`` (see
    :func:`_sns_inner`). Returns the final state and the number of Newton
    steps."""
    n, m = p.C.shape
    dtype = p.a.dtype
    mass = jnp.sum(p.a)
    vb = (p.b > 0).astype(dtype)  # the columns' support
    # The supports of x and y in z = (x, y).
    on_x = jnp.concatenate([p.a > 0, jnp.zeros(m, bool)])
    on_y = jnp.concatenate([jnp.zeros(n, bool), p.b > 0])
    unit = mass / max(n, m)  # the size of a typical row or column sum of P
    eps_dtype = float(jnp.finfo(dtype).eps)
    tiny = float(jnp.finfo(dtype).tiny)

    def state_from(rows, cols):
        grad = jnp.concatenate([p.a - rows, p.b - cols])
        return rows, cols, grad, jnp.sum(jnp.abs(grad))

    def state_at(f, g):
        return state_from(*kernel.plan_sums(p.C, f, g, p.epsilon, p.a, p.b))

    def select(fg):
        # The k largest entries of each row, and their costs.
        return kernel.select(p.C, *fg, p.epsilon, p.a, p.b, k)

    def diagonals(s_: _NewtonState):
        """``(D1, D2)``, the plan's row and column sums. Rows (columns) off the
        support have no plan mass; a positive diagonal there keeps the systems
        definite (their gradient entries are 0)."""
        return jnp.where(p.a > 0, s_.rows, unit), jnp.where(p.b > 0, s_.cols, unit)

    def null_weight(t_diag):
        """``kappa`` of the ``kappa v v^T`` term (``v = vb``), scaled like the
        Schur complement's diagonal ``t_diag`` (see :func:`newton_direction`)."""
        return jnp.vdot(vb, t_diag) / jnp.maximum(jnp.vdot(vb, vb), 1) ** 2

    def off_null(h):
        """``h`` projected onto the complement of ``v = vb``."""
        return h - vb * jnp.vdot(vb, h) / jnp.maximum(jnp.vdot(vb, vb), 1)

    def guarded(z, grad, d1, d2):
        """``z``, unless it is non-finite or not an ascent direction (a CG
        breakdown, a failed factorisation): then the Jacobi-scaled gradient.
        (A CG iterate stopped early is still an ascent direction in practice.)"""
        fallback = grad / jnp.concatenate([d1, d2])
        good = jnp.all(jnp.isfinite(z)) & (jnp.vdot(grad, z) > 0)
        return jnp.where(good, z, fallback)

    def newton_direction(s_: _NewtonState, idx, s):
        r"""An inexact solution of the Newton system ``M z = grad``, ``z = (x, y)``.

        ``M = [[D1, S], [S^T, D2]]`` is ``epsilon`` times the negative Hessian with
        ``P`` sparsified to ``S`` (the ``k`` largest entries of each row) but the
        *exact* row and column sums ``D1 = P 1``, ``D2 = P^T 1`` on the diagonal,
        so that ``z^T M z = sum_S S_ij (x_i + y_j)^2 + sum_dropped P_ij (x_i^2 +
        y_j^2) >= 0``: positive semi-definite, as CG needs.

        CG runs on the Schur complement of the larger block (``n >= m``, as
        :func:`_sns_inner` orients the problem): ``T y = grad_y - S^T D1^{-1}
        grad_x`` with ``T = D2 - S^T D1^{-1} S``, then ``x = D1^{-1} (grad_x - S
        y)``. One product with ``T`` costs one product with ``S`` and one with
        ``S^T``, as a product with ``M`` does, but the Jacobi-scaled ``T`` has the
        eigenvalues ``1 - s_i^2`` where the scaled ``M`` has ``1 +- s_i`` (``s_i``
        the singular values of ``D1^{-1/2} S D2^{-1/2}``): CG needs about half the
        steps, on a system of ``min(n, m)`` unknowns.

        The null direction: ``D`` is flat along ``(1, -1)``, which ``T`` sees as
        ``v = 1`` (on the support): ``T v = 0`` when nothing is dropped. The
        right-hand side is projected onto the complement of ``v`` and ``kappa v
        v^T`` is added to ``T`` (``kappa`` scaled like ``T``'s diagonal), which
        makes it definite along ``v`` without changing the step's effect on the
        plan (a shift along ``(1, -1)``).

        ``idx`` and ``s`` are the pattern's column indices and values, ``(n,
        k)`` (ELL).
        """
        grad, err = s_.grad, s_.err
        d1, d2 = diagonals(s_)
        gx, gy = grad[:n], grad[n:]

        def s_mul(y):  # S y, a gather: (m,) -> (n,)
            return jnp.sum(s * y[idx], axis=1)

        def st_mul(x):  # S^T x, a scatter-add by column: (n,) -> (m,)
            return jax.ops.segment_sum(
                (s * x[:, None]).reshape(-1), idx.reshape(-1), num_segments=m
            )

        # Eliminate x, solve for y (n >= m: _sns_inner orients the problem).
        dp, dq, gp, gq, a_mul, at_mul, vq = d1, d2, gx, gy, s_mul, st_mul, vb
        t_diag = d2 - jax.ops.segment_sum(
            (s * s / d1[:, None]).reshape(-1), idx.reshape(-1), num_segments=m
        )
        # Rounding can leave a tiny or negative diagonal where one entry carries
        # a whole row; the Jacobi scaling uses a floor there.
        t_diag = jnp.maximum(t_diag, eps_dtype * dq)
        kappa = null_weight(t_diag)

        def schur(q):
            return dq * q - at_mul(a_mul(q) / dp) + kappa * vq * jnp.vdot(vq, q)

        h = off_null(gq - at_mul(gp / dp))
        if cg_rtol is None:
            # Inexact Newton with the forcing term sqrt(relative marginal error):
            # superlinear convergence, without oversolving the early steps.
            rtol = jnp.clip(jnp.sqrt(err / mass), 100 * eps_dtype, 0.1)
        else:
            rtol = cg_rtol
        precond = t_diag + kappa * vq * vq
        # The lean CG of the Krylov core: this solve is never differentiated
        # (the implicit layer differentiates the optimality conditions) and
        # guarded() checks its result, so cg()'s input checks, symmetry probe,
        # restarts and custom_linear_solve would only add kernels to compile.
        q, cg_k, _ = cg_steps(
            schur,
            h,
            rtol=rtol,
            max_steps=cg_max_steps,
            preconditioner=lambda v: v / precond,
        )
        z = jnp.concatenate([(gp - a_mul(q)) / dp, q])
        return guarded(z, grad, d1, d2), cg_k

    def dense_direction(s_: _NewtonState):
        r"""The exact Newton direction, by a dense Cholesky factorisation.

        The same Schur complement as :func:`newton_direction`, with the whole
        plan in place of its ``k`` largest entries per row: ``T = D2 - P^T
        D1^{-1} P + kappa v v^T`` (``m x m``, formed by one ``n x m x m``
        product), symmetrically Jacobi-scaled and factorised. Its cost, ``O(n
        m^2)`` a step, does not depend on how the plan is spread nor on how
        ill-conditioned ``T`` is, where CG's does on both: on the L1 grid cost
        of ``digits-l1`` a row of the plan spreads over ~200 of 784 entries and
        ``T``'s condition number makes CG take ~650 steps per Newton step.
        """
        grad = s_.grad
        P = kernel.plan(p.C, s_.f, s_.g, p.epsilon, p.a, p.b)
        dp, dq = diagonals(s_)
        gp, gq = grad[:n], grad[n:]
        T = jnp.diag(dq) - P.T @ (P / dp[:, None])
        diag = jnp.maximum(jnp.diagonal(T), eps_dtype * dq)
        kappa = null_weight(diag)
        T = T + kappa * jnp.outer(vb, vb)
        h = off_null(gq - (gp / dp) @ P)
        scale = lax.rsqrt(diag + kappa * vb * vb)
        # A ridge of a few ulps on the Jacobi-scaled matrix: rounding in the
        # subtraction can leave a nearly disconnected plan's second null
        # direction slightly negative, which would fail the factorisation.
        scaled = scale[:, None] * T * scale[None, :]
        L = jnp.linalg.cholesky(scaled + 10 * eps_dtype * jnp.eye(m, dtype=dtype))
        q = scale * jax.scipy.linalg.cho_solve((L, True), scale * h)
        z = jnp.concatenate([(gp - P @ q) / dp, q])
        return guarded(z, grad, dp, dq), jnp.asarray(0, jnp.int32)

    def first_step(z):
        """The line search's first trial step: 1, or less if that would change
        an exponent of the plan by more than _MAX_EXPONENT_STEP (a trust region
        in the exponent scale): with a peaked marginal the direction can be
        ~1e10 in a row of mass ~1e-16, and halving from alpha = 1 would run
        out of halvings long before the step became sensible (issue 12's
        `stagnation` family)."""
        # max |x_i + y_j| over the support, from the extremes of x and y
        # (rounding is monotone, so this equals the entrywise maximum), by
        # one reduction: min(x) = -max(-x), exactly.
        hi_x, hi_y, lo_x, lo_y = kernel.support_max(
            jnp.stack([z, z, -z, -z]), jnp.stack([on_x, on_y, on_x, on_y])
        )
        hi, lo = hi_x + hi_y, -lo_x + -lo_y
        t_max = jnp.maximum(jnp.abs(hi), jnp.abs(lo))
        t_max = jnp.where(jnp.isfinite(t_max), t_max, 0)
        alpha0 = jnp.minimum(1, _MAX_EXPONENT_STEP / jnp.maximum(t_max, tiny))
        return alpha0.astype(dtype)

    def line_search(s_: _NewtonState, z, alpha0, needed):
        """Backtracking on the dual from ``alpha0``: accept ``alpha`` when
        ``D(z + alpha epsilon dz) - D(z) >= c alpha epsilon grad . dz``.

        The increase is evaluated as ``epsilon (alpha grad . dz - sum P phi(t))``
        with ``phi(t) = exp(t) - 1 - t >= 0``: the first-order term is exact and
        the remainder is a sum of non-negative terms, so the test is reliable
        down to marginal errors near machine precision (a plain difference of
        two dual values would be lost in rounding long before).
        """
        slope = jnp.vdot(s_.grad, z)
        x, y = z[:n], z[n:]

        def trial(state):
            alpha, _ = state
            remainder = kernel.phi_sum(
                p.C, s_.f, s_.g, p.epsilon, p.a, p.b, alpha * x, alpha * y
            )
            gain = alpha * slope - remainder
            ok = gain >= _ARMIJO * alpha * slope
            return jnp.where(ok, alpha, alpha / 2), ok

        init = (alpha0, ~needed)  # no trial where not needed
        (alpha, ok), trials = iterate(trial, lambda s: ~s[1], init, _MAX_HALVINGS)
        return alpha, ok, trials

    ok_input = p.result == RESULTS.successful

    def keep_going(s: _NewtonState):
        # The first iteration is the warm-up (see step()).
        going = ok_input & (s.err > p.tol) & ~s.stalled & jnp.isfinite(s.err)
        going = going & ~(may_give_up & (s.capped >= _CAPPED_STEPS))
        return ~s.started | going

    def direction(s: _NewtonState):
        """The Newton direction ``z``, its first trial step, and the counters
        and pattern that go with it."""
        # Reselect the sparsity pattern unless the last step cut the error by
        # a factor 1 / _RESELECT or more: near the solution the pattern no
        # longer moves much, and the selection is the costliest part of a
        # step (XLA's CPU top-k: 336 ms at n = m = 5000, k = 250, one core,
        # against ~80 ms for a pass over the plan). Measured on points-5000:
        # _RESELECT = 0.1 selected at 4 of 6 Newton steps (the kept pattern
        # missed 1.5e-4 of the mass), 6.06 s; 0.3 at 2 of 7 (4.4e-4), 5.67 s.
        if solver == "dense":
            pattern, pattern_cost = s.pattern, s.pattern_cost
            z, cg_k = dense_direction(s)
            dense_k = jnp.asarray(1, jnp.int32)
            dropped = jnp.zeros((), dtype)
            selected_dropped = s.selected_dropped
            selected = jnp.asarray(0, jnp.int32)
        else:
            rows_mass = jnp.sum(jnp.where(p.a > 0, s.rows, 0))

            def values(pattern, pattern_cost):
                """The pattern's values, in the working precision (the costs
                are fixed, so they follow from the potentials without a pass
                over C), and the fraction of the plan's mass it misses."""
                kept = jnp.exp(
                    kernel.pattern_log_plan(
                        s.f, s.g, p.epsilon, p.a, p.b, pattern, pattern_cost
                    )
                )
                missed = 1 - jnp.sum(kept) / jnp.maximum(rows_mass, tiny)
                return kept, jnp.clip(missed, 0, 1)

            # A kept pattern that still holds the plan's mass (it misses at
            # most _STALE times what it missed when selected) is as good a
            # sparsification as a new one: the potentials moved, the plan's
            # support did not. Measured on benchmarks/ot.py's points-N-online
            # (default k, one core): n = 10000 35.9 s to 28.3 s (13 to 14
            # Newton steps), n = 20000 157 s to 115 s; the matrix cases of
            # benchmarks/ot.py take the same steps as before.
            kept_old, dropped_old = values(s.pattern, s.pattern_cost)
            stale = dropped_old > _STALE * s.selected_dropped + _STALE_FLOOR
            reselect = (s.previous_err == 0) | (
                (s.err > _RESELECT * s.previous_err) & stale
            )

            def reselected(fg):
                pattern, pattern_cost = select(fg)
                return pattern, pattern_cost, *values(pattern, pattern_cost)

            pattern, pattern_cost, kept, dropped = lax.cond(
                reselect,
                reselected,
                lambda _: (s.pattern, s.pattern_cost, kept_old, dropped_old),
                (s.f, s.g),
            )
            selected_dropped = jnp.where(reselect, dropped, s.selected_dropped)
            selected = reselect.astype(jnp.int32)
            if solver == "cg":
                z, cg_k = newton_direction(s, pattern, kept)
                dense_k = jnp.asarray(0, jnp.int32)
            else:
                # "auto": the exact direction when the pattern misses more than
                # _DENSE_DROPPED of the plan's mass (a diffuse plan, long rows
                # of near ties); CG on the sparsified Hessian otherwise.
                use_dense = dropped > _DENSE_DROPPED
                z, cg_k = lax.cond(
                    use_dense,
                    lambda s, *_: dense_direction(s),
                    newton_direction,
                    s,
                    pattern,
                    kept,
                )
                dense_k = use_dense.astype(jnp.int32)
        raw = z
        if solver != "dense":
            # Only where Newton is linear: the pattern drops mass and the
            # last step cut the error by less than 1 / _ANDERSON_RATE (exact
            # Newton steps, quadratic near the solution, are left alone).
            linear = (dropped > _ANDERSON_DROPPED) & (
                s.err > _ANDERSON_RATE * s.previous_err
            )
            z = accelerate(s, z, (selected > 0) | (dense_k > 0) | ~linear)
        return (
            z,
            raw,
            first_step(z),
            cg_k,
            dense_k,
            dropped.astype(dtype),
            selected_dropped.astype(dtype),
            selected,
            pattern,
            pattern_cost,
        )

    def accelerate(s: _NewtonState, z, off):
        r"""Anderson acceleration of the sparsified Newton steps.

        With a pattern that misses a fraction of the plan's mass, Newton is a
        linear iteration near the solution, ``u+ = u + z(u)`` on the scaled
        potentials ``u = (f, g) / epsilon``: on ``benchmarks/ot.py``'s
        ``points-20000-online`` the error fell by 0.31 a step (14 steps).
        Anderson mixing (type II) treats ``z(u)`` as the residual of that
        fixed-point map and combines it with the pairs ``(u_i, z_i)`` of the
        last ``_ANDERSON`` directions of the same pattern: ``gamma``
        minimises ``|z - sum_i gamma_i (z - z_i)|``, and the direction is
        ``z - sum_i gamma_i ((u - u_i) + (z - z_i))``. Used only after a full
        Newton step (``alpha = 1``; a Sinkhorn block after it does not matter:
        the pairs are points of the same map), not after a reselection or a
        dense step, nor where Newton is not linear (``off``), and only if it is
        a finite ascent direction; the line search then guards it as any other
        direction. Measured (2-D clouds at eta = 1200 as matrices, CG
        directions, Newton steps without / with): ``n = 300, k = 8`` 68 / 29,
        ``k = 12`` 31 / 15; ``n = 600, k = 16`` 56 / 21, ``k = 24`` 16 / 11;
        ``points-20000-online`` 14 / 8.

        D. G. Anderson, "Iterative procedures for nonlinear integral
        equations", J. ACM 12 (1965); H. F. Walker, P. Ni, "Anderson
        acceleration for fixed-point iterations", SIAM J. Numer. Anal. 49 (2011).
        """
        u = jnp.concatenate([s.f, s.g]) / p.epsilon
        valid = jnp.arange(_ANDERSON) < s.history_size
        dz = jnp.where(valid[:, None], z[None, :] - s.history_z, 0)
        du = jnp.where(valid[:, None], u[None, :] - s.history_u, 0)
        gram = dz @ dz.T
        # A Tikhonov floor on the (possibly near-singular) Gram matrix; unused
        # columns get a unit diagonal and a zero right-hand side.
        floor = 1e-10 * jnp.max(jnp.diagonal(gram)) + tiny
        gram = gram + jnp.diag(jnp.where(valid, floor, 1.0))
        gamma = jnp.linalg.solve(gram, jnp.where(valid, dz @ z, 0))
        z_acc = z - gamma @ (du + dz)
        use = (
            s.accelerable
            & ~off
            & jnp.any(valid)
            & jnp.all(jnp.isfinite(z_acc))
            & (jnp.vdot(s.grad, z_acc) > 0)
        )
        return jnp.where(use, z_acc, z)

    def remember(s: _NewtonState, z, off):
        """The Anderson history after a direction ``z`` found at ``s``: pushed
        in front, or alone after a reselection or a dense step (``off``); kept
        as it was at the warm-up."""
        u = jnp.concatenate([s.f, s.g]) / p.epsilon
        size = jnp.where(off, 1, jnp.minimum(s.history_size + 1, _ANDERSON))
        pushed_u = jnp.concatenate([u[None], s.history_u[:-1]])
        pushed_z = jnp.concatenate([z[None], s.history_z[:-1]])
        started = s.started
        return dict(
            history_u=jnp.where(started, pushed_u, s.history_u),
            history_z=jnp.where(started, pushed_z, s.history_z),
            history_size=jnp.where(started, size, s.history_size).astype(jnp.int32),
        )

    # Phases of a step's evaluation loop (see step()).
    trial_point, searched_point, sinkhorn_point, done = 0, 1, 2, 3

    def step(s: _NewtonState) -> _NewtonState:
        """One Newton step, or at the first iteration the Sinkhorn warm-up.

        Compile time: each pass below is traced once. The direction runs in a
        loop of 0 or 1 trips (skipped at the warm-up; under ``vmap`` a
        ``cond`` would run it there too), and the points a step visits (the
        full step, the line search's step, the Sinkhorn block after a slow
        step, or the warm-up) are evaluated by one loop whose body forms the
        next point and its row and column sums: one traced evaluation of the
        plan and one Sinkhorn loop where there were four and two (the
        forward's XLA compilation at 60 x 50, one core: 264 to 193 kernels,
        3.7 to 3.05 s)."""
        started = s.started
        default = (
            jnp.zeros(n + m, dtype),
            jnp.zeros(n + m, dtype),
            jnp.zeros((), dtype),
            jnp.asarray(0, jnp.int32),
            jnp.asarray(0, jnp.int32),
            s.dropped_mass,
            s.selected_dropped,
            jnp.asarray(0, jnp.int32),
            s.pattern,
            s.pattern_cost,
        )
        (
            z,
            raw_z,
            alpha0,
            cg_k,
            dense_k,
            dropped,
            selected_dropped,
            selected,
            pattern,
            pattern_cost,
        ) = _once(started, direction, s, default)
        old = (s.f, s.g, s.rows, s.cols, s.grad, s.err)
        # The full Newton step is tried first, with the passes that the next
        # state needs anyway: if it halves the marginal error it is taken
        # without the line search's pass (Newton near the solution, where the
        # full step always passes Armijo's test; 80 ms saved a step at
        # n = m = 5000). Otherwise the line search decides, and the trial
        # state is reused if it accepts the full step.
        #
        # A Newton step that failed or made little progress (far from the
        # solution, or a Hessian that is badly scaled in a few rows, as with
        # peaked marginals) is followed by a block of Sinkhorn steps. Each of
        # those is an exact ascent step on the dual, row by row, so the solve
        # goes on wherever Sinkhorn would; Newton then resumes from a point
        # where its model is better. The block's length is a traced budget,
        # 0 when Newton did well: under vmap the loop then only runs the
        # elements that need it.
        # A slow step whose line search took (nearly) the full step is
        # Newton working far from the solution, where the L1 error can rise
        # while the dual does: one Sinkhorn step then mostly undoes the rise,
        # and the block ends as soon as the pair has cut the error by a
        # quarter (on points-5000 the first Newton steps go 0.20 -> 0.61, then
        # 0.11 after one Sinkhorn step and 0.108 after two, while Newton next
        # reaches 0.025: blocks of 10 cost 40 Sinkhorn steps in all, these 23).
        # A truncated or failed step (alpha < _FULL_STEP: the peaked and
        # degenerate cases of the tests, where Newton moves nothing for many
        # steps) gets the whole block.

        def after_newton(new, alpha, ok):
            """The phase after the Newton step's point ``new``: a Sinkhorn
            block if the step was slow, with its budget and ``until``."""
            slow = ~ok | (new[-1] > _SLOW_NEWTON * s.err)
            budget = jnp.where(slow, _SINKHORN_BLOCK, 0)
            until = jnp.where(ok & (alpha >= _FULL_STEP), _SLOW_PAIR * s.err, 0)
            phase = jnp.where(slow & (new[-1] > p.tol), sinkhorn_point, done)
            return phase, budget.astype(jnp.int32), until.astype(dtype)

        def visit(c):
            phase, alpha, ok, trials, sinkhorn_steps, budget, until, cur = c

            def sinkhorn(cur):
                # The exact row and column sums follow, as after a Newton
                # step: the Hessian's diagonal must be those of the plan it is
                # formed from (taking P^T 1 = b after the block's last column
                # update instead, true to rounding, changed the degenerate L1
                # test's path from 11 to 25+ Newton steps).
                f, g, rows, _, _, err = cur
                return sinkhorn_block(
                    p,
                    f,
                    g,
                    rows,
                    err,
                    jnp.where(phase == sinkhorn_point, budget, 0),
                    until,
                    ~started,
                    halvings,
                    per_level,
                )

            def newton(_):
                step_ = alpha * p.epsilon * z
                return s.f + step_[:n], s.g + step_[n:], jnp.asarray(0, jnp.int32)

            f, g, steps = lax.cond(phase == sinkhorn_point, sinkhorn, newton, cur)
            new = (f, g, *state_at(f, g))
            sinkhorn_steps = sinkhorn_steps + steps
            # After the full step: taken as it is if it halves the error;
            # otherwise the line search (no trials where not needed).
            at_trial = phase == trial_point
            quick = (alpha0 == 1) & (new[-1] <= _QUICK_ACCEPT * s.err)
            search = at_trial & ~quick
            found, found_ok, found_trials = line_search(s, z, alpha0, search)
            alpha = jnp.where(search, found, alpha)
            ok = jnp.where(search, found_ok, ok)
            trials = jnp.where(search, found_trials, trials)
            # A failed line search leaves the state as it was.
            kept = jax.tree_util.tree_map(
                lambda u, v: jnp.where(~search | ok, u, v), new, old
            )
            revisit = search & ok & (alpha < alpha0)
            phase_b, budget_b, until_b = after_newton(kept, alpha, ok)
            phase = jnp.where(
                revisit,
                searched_point,
                jnp.where(phase == sinkhorn_point, done, phase_b),
            )
            newton_done = ~revisit & (c[0] != sinkhorn_point)
            budget = jnp.where(newton_done, budget_b, budget)
            until = jnp.where(newton_done, until_b, until)
            return (
                phase.astype(jnp.int32),
                alpha,
                ok,
                trials,
                sinkhorn_steps,
                budget,
                until,
                kept,
            )

        init = (
            jnp.where(started, trial_point, sinkhorn_point).astype(jnp.int32),
            alpha0,
            jnp.asarray(True),
            jnp.asarray(0, jnp.int32),
            jnp.asarray(0, jnp.int32),
            jnp.where(started, 0, warmup_steps).astype(jnp.int32),
            jnp.zeros((), dtype),
            old,
        )
        _, alpha, ok, trials, sinkhorn_steps, _, _, new = lax.while_loop(
            lambda c: c[0] != done, visit, init
        )
        return _NewtonState(
            *new,
            # Stalled: neither Newton nor Sinkhorn lowered the error.
            stalled=~ok & ~(new[-1] < s.err),
            cg_steps=s.cg_steps + cg_k,
            dense_steps=s.dense_steps + dense_k,
            dropped_mass=dropped,
            selected_dropped=selected_dropped,
            selections=s.selections + selected,
            line_search_steps=s.line_search_steps + trials,
            pattern=pattern,
            pattern_cost=pattern_cost,
            previous_err=jnp.where(started, s.err, s.previous_err),
            **remember(s, raw_z, (selected > 0) | (dense_k > 0)),
            accelerable=started & ok & (alpha == 1) & (dense_k == 0),
            sinkhorn_steps=s.sinkhorn_steps + sinkhorn_steps,
            started=jnp.asarray(True),
            capped=s.capped + (started & (alpha0 < _CAPPED_ALPHA)).astype(jnp.int32),
        )

    # The counters go on from ``start``'s (a previous stage's, see _sns_inner).
    counters = (
        "cg_steps",
        "dense_steps",
        "selections",
        "line_search_steps",
        "sinkhorn_steps",
    )
    init = _initial_state(start.f, start.g, start.pattern.shape[1])._replace(
        **{name: getattr(start, name) for name in counters}
    )
    # (final state, steps): the first iteration is the warm-up.
    s, steps = iterate(step, keep_going, init, max_steps + 1)
    return s, steps - 1


def _low_dtype(warmup_dtype, p: Problem):
    """The warm-up's dtype if lower than the problem's, else ``None``
    (``warmup_dtype=None``: float32 for a float64 point cloud of at least
    ``_LOW_WARMUP_MIN`` entries)."""
    dtype = p.a.dtype
    if warmup_dtype is None:
        n, m = p.C.shape
        large = isinstance(p.C, PointCloud) and n * m >= _LOW_WARMUP_MIN
        return jnp.dtype(jnp.float32) if large and dtype == jnp.float64 else None
    warmup_dtype = jnp.dtype(warmup_dtype)
    if warmup_dtype == dtype:
        return None
    if jnp.finfo(warmup_dtype).bits > jnp.finfo(dtype).bits:
        raise ValueError(
            f"`warmup_dtype` must not be more precise than the problem ({dtype}), "
            f"got {warmup_dtype}"
        )
    return warmup_dtype


def _low_precision_warmup(p: Problem, f, g, steps, halvings, per_level, dtype):
    """The Sinkhorn warm-up in the lower precision ``dtype`` (static): returns
    ``(f, g, warmup_steps, num_steps)``, the potentials in ``p``'s dtype and
    the warm-up steps that the Newton stage still has to run (traced): ``0``,
    or all of them if the low-precision potentials came out non-finite (costs
    or marginals beyond ``dtype``'s range), from the given ``(f, g)``.

    The warm-up only has to bring Newton near the solution, where its first
    steps correct any rounding; the Newton stage's passes stay in ``p``'s
    dtype. Marginals are kept on their support (floored at ``dtype``'s
    smallest normal number), so that no row or column leaves it."""
    tiny = float(jnp.finfo(dtype).tiny)

    def marginal(x):
        return jnp.where(x > 0, jnp.maximum(x, tiny), 0).astype(dtype)

    low = Problem(
        kernel.both_layouts(p.C.astype(dtype)),
        marginal(p.a),
        marginal(p.b),
        p.epsilon.astype(dtype),
        p.tol.astype(dtype),
        p.result,
    )
    f_low, g_low, _, num_steps = sinkhorn_stage(
        low, f.astype(dtype), g.astype(dtype), steps, halvings, per_level
    )
    f_low, g_low = f_low.astype(p.a.dtype), g_low.astype(p.a.dtype)
    good = jnp.all(jnp.isfinite(f_low)) & jnp.all(jnp.isfinite(g_low))
    return (
        jnp.where(good, f_low, f),
        jnp.where(good, g_low, g),
        jnp.where(good, 0, steps),
        jnp.where(good, num_steps, 0),
    )


def _sns_inner(
    warmup_steps,
    epsilon_scaling,
    max_newton_steps,
    k,
    cg_rtol,
    cg_max_steps,
    solver,
    warmup_dtype,
):
    def inner(p: Problem, f, g):
        # Orientation: the Newton stage keeps the k largest entries of each
        # *row*, so rows must be the short side (n >= m). With n < m a row of
        # m entries spreads its mass over more than k of them, the sparsified
        # Hessian drops most of it and Newton slows to a linear rate (issue 12:
        # 5 x 300 points on a line stopped at 4e-2 after 100 steps; transposed it
        # converges in 12). The dual is symmetric in (f, a) and (g, b), so the
        # transposed problem is solved and its potentials swapped back.
        transpose = p.C.shape[0] < p.C.shape[1]
        if transpose:
            p = p._replace(C=p.C.T, a=p.b, b=p.a)  # a PointCloud swaps x, y
            f, g = g, f
        # Epsilon scaling: the warm-up's steps split evenly over epsilon
        # 2^J, ..., 2, 1 (the last share at the problem's own epsilon).
        halvings = epsilon_scaling if warmup_steps > 0 else 0
        per_level = max(1, -(-warmup_steps // (halvings + 1)))
        newton_warmup, low_steps = warmup_steps, 0
        low = _low_dtype(warmup_dtype, p)
        if warmup_steps > 0 and low is not None:
            f, g, newton_warmup, low_steps = _low_precision_warmup(
                p, f, g, warmup_steps, halvings, per_level, low
            )
        # Column passes as row passes of a transposed copy (kernel.BothLayouts).
        p = p._replace(C=kernel.both_layouts(p.C))
        dtype = p.a.dtype
        n, m = p.C.shape
        resolved = _resolve_solver(solver, dtype, n, m)
        level_tol = jnp.maximum(p.tol, _LEVEL_TOL * jnp.sum(p.a))

        def attempt(c):
            """One Newton stage: the direct solve at epsilon (``level = 0``,
            not yet ``scaled``), or a level of Newton epsilon scaling at
            ``epsilon 2^level``, from the last stage's potentials."""
            level, scaled = c["level"], c["scaled"]
            direct = ~scaled
            q = p._replace(
                epsilon=p.epsilon * jnp.exp2(level.astype(dtype)),
                tol=jnp.where(level > 0, level_tol, p.tol),
            )
            s, n_newton = _newton_stage(
                q,
                c["state"],
                k,
                # Nothing at all for a finished element of a vmapped batch.
                jnp.where(level < 0, -1, max_newton_steps - c["newton_steps"]),
                cg_rtol,
                cg_max_steps,
                resolved,
                jnp.where(direct, newton_warmup, _LEVEL_WARMUP),
                jnp.where(direct, halvings, 0) if halvings else 0,
                per_level,
                may_give_up=direct,
            )
            gave_up = direct & (s.capped >= _CAPPED_STEPS) & (s.err > q.tol)
            return dict(
                level=jnp.where(gave_up, _LEVELS, level - 1).astype(jnp.int32),
                scaled=scaled | gave_up,
                newton_steps=c["newton_steps"] + n_newton,
                state=s,
            )

        zero = jnp.asarray(0, jnp.int32)
        width = 0 if resolved == "dense" else k
        init = dict(
            level=zero,
            scaled=jnp.asarray(False),
            newton_steps=zero,
            state=_initial_state(f, g, width),
        )
        # Done at level -1: after the direct solve, or after level 0 of the
        # scaling (which runs every level, so it solved _LEVELS of them).
        c = lax.while_loop(lambda c: c["level"] >= 0, attempt, init)
        s = c["state"]
        f, g = (s.g, s.f) if transpose else (s.f, s.g)
        stats = {
            # The warm-up's and those run after slow Newton steps.
            "sinkhorn_steps": s.sinkhorn_steps + low_steps,
            "newton_steps": c["newton_steps"],
            "cg_steps": s.cg_steps,
            "dense_steps": s.dense_steps,
            # Of the last Newton step's top-k pattern (0 for a dense step): a
            # large value with max_steps_reached says k is too small.
            "dropped_mass": s.dropped_mass,
            # Top-k selections of the sparsity pattern (the costliest pass of a
            # step; a kept pattern is reused while it holds the plan's mass).
            "pattern_selections": s.selections,
            "line_search_steps": s.line_search_steps,
            # Levels of Newton epsilon scaling solved before epsilon itself (0:
            # the direct solve went through).
            "epsilon_levels": jnp.where(c["scaled"], _LEVELS, 0).astype(jnp.int32),
        }
        return f, g, s.err, s.stalled, stats

    return inner


SNS_MESSAGES = {
    "invalid_input": INVALID_OT_INPUT + ", and `cg_rtol` >= 0",
    "max_steps_reached": (
        "the marginal error is above `tol` after `max_newton_steps` Newton steps; "
        "increase `max_newton_steps` or `k` (entries kept per row of the "
        "sparsified Hessian: long rows and diffuse plans need more), or loosen `tol`"
    ),
    "stagnation": (
        "the line search found no ascent along the Newton direction, so the "
        "marginal error stopped decreasing above `tol`; `tol` may be below what "
        "the dtype allows (loosen it), or the sparsified Hessian is too coarse "
        "(increase `k` or `warmup_steps`)"
    ),
}


@compiled_once
def sinkhorn_newton_sparse(
    C,
    a=None,
    b=None,
    *,
    epsilon,
    tol=None,
    warmup_steps: int = 20,
    epsilon_scaling: int = 4,
    warmup_dtype=None,
    max_newton_steps: int = 100,
    k: int | None = None,
    newton_solver: str = "auto",
    cg_rtol=None,
    cg_max_steps: int | None = None,
    init=None,
    normalize: bool = False,
    throw: bool = True,
    implicit_solve_options: dict | None = None,
) -> OTSolution:
    r"""Entropic optimal transport by Sinkhorn-Newton-Sparse (SNS).

    Solves ``min_{P 1 = a, P^T 1 = b} <C, P> + epsilon sum_ij P_ij log P_ij``
    (``epsilon = 1 / eta`` of the paper; POT and regot call it ``reg``) through its
    concave dual ``D(f, g) = <f, a> + <g, b> - epsilon sum_ij P_ij``,
    ``P_ij = exp((f_i + g_j - C_ij) / epsilon - 1)``:

    1. ``warmup_steps`` log-domain Sinkhorn steps (fewer if already converged),
       with epsilon scaling: they start at ``epsilon 2^epsilon_scaling`` and
       halve it down to ``epsilon``;
    2. Newton steps: keep the ``k`` largest entries of each row of ``P`` (the
       sparsified Hessian, in an ``(n, k)`` ELL layout: ``P x`` by a gather,
       ``P^T y`` by a segment sum), with the exact row and column sums on the
       diagonal so that it stays positive semi-definite; solve the Newton system
       matrix-free by conjugate gradients (the CG of :func:`jaxsolve.cg`,
       without its checks: the solve is never differentiated) on its Schur
       complement (the smaller of the two potentials; Jacobi-preconditioned,
       inexact); take a
       backtracking (Armijo) line search on ``D``, whose first trial step moves
       no entry of ``log P`` by more than 100 (a trust region in the exponent
       scale), unless the full step halves the marginal error (then it is
       taken as it is); stop when ``||P 1 - a||_1 + ||P^T 1 - b||_1 <= tol``;
       With ``newton_solver="auto"`` (the default), small float64 problems
       (``max(n, m) min(n, m)^2 <= 256^3``) take exact Newton steps throughout,
       and up to ``1024^3`` a step whose ``k`` kept entries per row miss more
       than 1e-3 of the plan's mass takes the exact Newton direction instead:
       the dense Schur complement ``D2 - P^T D1^{-1} P`` factorised by
       Cholesky (``O(n m^2)`` a step). That is the case of diffuse plans and
       degenerate costs, where the sparsified Hessian slows Newton to a linear
       rate and its ill-conditioning costs CG hundreds of steps (the L1 grid
       cost of ``digits-l1``: 200 Newton steps stopped at 1e-7 with CG, 18
       converge to 1e-9 with the dense direction);
    3. after a Newton step that failed or cut the error by less than half (far
       from the solution, or peaked marginals that scale a few rows of the
       Hessian badly), up to 10 Sinkhorn steps before the next Newton step:
       each is an exact ascent step, so SNS goes on wherever Sinkhorn
       converges. After a step whose line search took at least half the
       Newton step, the block stops at the first Sinkhorn step that leaves the
       error below 3/4 of its value before the Newton step (often the first:
       far from the solution a Newton step can raise the marginal error while
       it raises the dual, and one Sinkhorn step takes most of that back);
    4. Newton epsilon scaling, where the direct solve meets nearly block diagonal
       plans (small ``epsilon`` with peaked marginals, degenerate costs): there the
       Hessian is nearly singular along the blocks' shifts, the Newton direction
       shifts whole blocks together and would change exponents of the plan by
       ``1e4`` to ``1e15`` (its linear model of ``exp``), and the trust region cuts
       every step to next to nothing. After two Newton steps whose first trial was
       cut below ``1e-2``, the solve starts over from its potentials as a sequence
       of Newton stages at ``epsilon 2^5, 2^4, ..., 2`` (each to a marginal error of
       ``1e-3`` of the mass, after 5 Sinkhorn steps) and then at ``epsilon``: at
       ``2^5 epsilon`` the blocks are coupled, and each level starts near its
       solution. ``max_newton_steps`` caps all stages together;
       ``stats["epsilon_levels"]`` counts the levels solved. On 128 x 128 points on
       a line with peaked marginals at ``epsilon`` 1.4e-3 of the median cost, 19 to
       26 Newton steps in all where the direct solve stopped at 1e-3 to 0.2 after
       100 on 3 seeds of 12 (and needed up to 86 on the others); ``digits-l1`` with
       the default 20 warm-up steps 28 Newton steps, where the direct solve took 72
       (15 after the paper's 700 warm-up steps).

    For ``n < m`` the transposed problem is solved (rows are the short side, so
    the ``k`` kept entries cover a row; the potentials are swapped back).

    Each Newton step costs ``O(n m)`` like a Sinkhorn step (forming ``P``, the
    top-k selection, the line search) plus ``O(n k)`` per CG step. The top-k
    pattern is kept from the previous step while Newton cuts the marginal error
    by 3x or more per step (the pattern has settled), or while the kept pattern
    still holds the plan's mass (it misses at most twice what it missed when
    selected), and reselected otherwise. Where the pattern misses more than
    1e-3 of the mass, Newton is a linear iteration near the solution; there the
    direction is combined with the last three of the same pattern by Anderson
    mixing (after full steps that cut the error less than 10x), which cuts the
    Newton steps of such cases by a third to a half (see ``accelerate`` in the
    source).

    X. Tang, M. Shavlovsky, H. Rahmanian, E. Tardini, K. K. Thekumparampil,
    T. Xiao, L. Ying, "Accelerating Sinkhorn Algorithm with Sparse Newton
    Iterations", ICLR 2024 (arXiv 2401.12253). The paper sparsifies by a
    threshold; a fixed number ``k`` of entries per row keeps the shapes static.

    Args:
        C: the cost matrix, ``(n, m)``.
        a, b: the marginals (default uniform, mass 1); see :func:`sinkhorn`.
        epsilon: the entropic regularisation, ``> 0``.
        tol: marginal L1 error to reach; default ``1e-9 sum(a)`` (float64),
            ``1e-5 sum(a)`` (float32).
        warmup_steps: Sinkhorn steps before Newton (static; the paper's 20).
        epsilon_scaling: halvings of epsilon during the warm-up (static,
            ``>= 0``; default 4): the warm-up's steps are split evenly over
            ``epsilon 2^J, 2^(J-1), ..., 1`` (``J = epsilon_scaling``), so
            Newton starts from a dual that has moved by whole cost scales.
            Measured at ``eta = 1200`` (``benchmarks/ot.py``'s cases, one core):
            ``points-2000`` 2.3 s to 1.4 s (10 to 8 Newton steps, 70 to 40
            Sinkhorn steps), ``digits-l1`` 2.9 s to 2.3 s, the random
            assignment 6 to 5 Newton steps, from ``0`` to ``3``; from ``3`` to
            ``4`` (20 warm-up steps, 4 a level), ``points-5000`` 5.3 s to 4.4 s
            (7 to 6 Newton steps), ``points-2000`` 0.77 s to 0.63 s,
            ``digits-l1`` (700 warm-up steps) 2.4 s to 2.0 s (20 to 15 Newton
            steps), ``random`` and ``digits-l2`` unchanged. Keep
            ``warmup_steps`` a multiple of ``J + 1``: otherwise the last level
            (``epsilon`` itself) gets fewer steps than the others (at ``J = 5``,
            20 steps, none, and ``points-5000`` took 6.4 s). ``0``: a plain
            warm-up at ``epsilon``, which is also what a warm start (``init``)
            gets.
        warmup_dtype: the dtype of the warm-up's Sinkhorn steps (static):
            ``None`` (default) float32 for a float64
            :class:`~jaxsolve.solvers.ot.PointCloud` of at least ``2^22``
            entries (2048 x 2048; smaller ones would pay compile time, about
            1 s, for milliseconds), the problem's dtype otherwise; or
            ``jnp.float32`` / ``jnp.float64`` (not above the problem's). The
            warm-up only brings Newton near the solution, and Newton's passes
            (in the problem's dtype) correct its rounding; a point cloud
            recomputes ``C`` at every pass, which float32 does about 3x faster
            on CPU (a log-sum-exp at ``20,000^2`` points in
            2-D, one core: 0.33 s against 0.97 s). Measured on
            ``benchmarks/ot.py``'s ``points-20000-online`` (one core): the
            20 warm-up steps 12 s against 44 s (float64; measured with the
            other core busy), the same 14 Newton steps to 5e-9 (115 s to 78 s
            in all, before Anderson mixing cut the Newton steps to 8). If the
            float32 potentials come out non-finite (costs or marginals beyond
            float32's range), the warm-up is run again in the problem's dtype.
        max_newton_steps: cap on Newton steps (static).
        k: entries kept per row of the Hessian's ``P`` block (static; clamped to
            ``min(n, m)``; ``k = min(n, m)`` is the exact Newton method). Rows
            are the short side: for ``n < m`` the transposed problem is solved
            (the potentials are swapped back), so ``k`` counts entries among
            ``min(n, m)``. A CG step costs
            ``O(n k)``, small next to the ``O(n m)`` of forming ``P``; too small
            a ``k`` for a diffuse plan (large ``epsilon`` against the spacing of
            the costs) drops mass from the Hessian and slows Newton down to a
            linear rate. At ``eta = 1200``: ``k = 10`` suffices for the random
            assignment (near-permutation plan), 2-D point clouds want ``k >= 20``.
            Default ``None``: ``max(32, ceil(min(n, m) / 20))`` (32 up to 640
            points, 100 at 2,000, 250 at 5,000): the number of points a row of a
            point-cloud plan spreads over grows with the number of points, and
            a fixed 32 stalled at 5,000 (200 Newton steps, error 1e-4). Measured
            on ``benchmarks/ot.py``'s ``points-5000`` (one core): ``k = 200``
            (``n / 25``) misses 7e-4 of the plan's mass, 9 Newton steps, 6.6 s;
            ``250`` misses 1.5e-4, 6 steps, 6.1 s; ``320``, 6 steps, 6.3 s.
        newton_solver: how a Newton direction is found (static):
            ``"cg"``: CG on the sparsified Hessian (the paper's method);
            ``"dense"``: the exact Hessian, formed and factorised by Cholesky at
            every step (a cost matrix only; ``O(n m^2)`` time and ``O(m^2)``
            memory a step, whatever the plan's spread or conditioning; in
            float64: see below);
            ``"auto"``: for a float64 cost matrix with ``max(n, m) min(n,
            m)^2 <= 256^3``, ``"dense"`` (cheap there, and it compiles no CG
            loop and no top-k selection); up to ``1024^3``, ``"cg"`` except at
            a step whose top-``k`` pattern misses more than 1e-3 of the plan's
            mass, which takes the dense direction; beyond that, for point clouds
            and in float32, ``"cg"`` (in float32 the dense Schur complement
            loses its small eigenvalues to cancellation).
            ``stats["dense_steps"]`` counts the dense steps.
        cg_rtol: relative tolerance of each CG solve; default adaptive,
            ``min(0.1, sqrt(error / mass))`` (inexact Newton with a forcing term
            that gives superlinear convergence).
        cg_max_steps: cap on CG steps per Newton step (static; default
            ``n + m``; a capped solve still gives an ascent direction).
        init, normalize, throw, implicit_solve_options: as in :func:`sinkhorn`.

    Returns:
        :class:`OTSolution`: ``.value = (f, g)``, ``.plan``, ``.cost``,
        ``.residual`` (marginal error), ``.num_steps`` (Sinkhorn + Newton steps),
        ``.stats`` with ``sinkhorn_steps`` (warm-up and fallback), ``newton_steps``,
        ``cg_steps``, ``dense_steps`` (Newton steps with the dense exact
        direction), ``dropped_mass`` (the fraction of the plan's mass that the
        last Newton step's ``k`` entries per row missed; ``0`` after a dense
        step: a value well above ``1e-3`` with ``max_steps_reached`` says ``k``
        is too small), ``pattern_selections`` (top-k selections of the
        pattern), ``line_search_steps``, ``epsilon_levels`` (levels of Newton
        epsilon scaling, step 4; 0 when the direct solve went through),
        ``marginal_error``. A Newton step
        whose line search failed and whose Sinkhorn block did not lower the error
        either ends the solve with ``RESULTS.stagnation`` (the tolerance is below
        what the dtype allows).

    Precision: as for :func:`sinkhorn`, float32 is safe while ``max|C| /
    epsilon <~ 1e4`` (measured on ``C ~ U[0, 1]``, ``n = 200``: ``eta = 1200``
    reaches the float32 default tolerance ``1e-5`` in 9 Newton steps, ``eta =
    1e4`` in 56; at ``3e4`` the Newton steps stall near ``1e-2``, as the
    exponents' rounding swamps the Hessian; these are CG's steps: float32
    never takes dense steps by default, and ``newton_solver="dense"`` in
    float32 stalled at ``eta = 1e4`` on that case). float64 is safe at ``eta =
    1200`` and beyond (the paper's cases).

    Differentiable like :func:`sinkhorn` (implicit function theorem on the
    optimality condition; the iterations are not differentiated).
    """
    warmup_steps = check_static_int(warmup_steps, "warmup_steps")
    epsilon_scaling = check_static_int(epsilon_scaling, "epsilon_scaling")
    if init is not None:
        # A warm start is presumably close already: scaling would first move it
        # towards the solution at 16 epsilon (and would not stop early on a
        # converged start).
        epsilon_scaling = 0
    max_newton_steps = check_static_int(max_newton_steps, "max_newton_steps")
    if warmup_dtype is not None:
        try:
            given = jnp.dtype(warmup_dtype)
        except TypeError:
            given = None
        # (``given is None`` first: NumPy compares a dtype equal to None.)
        if given is None or given not in (jnp.float32, jnp.float64):
            raise ValueError(
                "`warmup_dtype` must be None, jnp.float32 or jnp.float64, got "
                f"{warmup_dtype!r}"
            )
        warmup_dtype = given
    if isinstance(C, PointCloud):
        n, m = C.shape
    else:
        m = jnp.shape(C)[1] if jnp.ndim(C) == 2 else 1
        n = jnp.shape(C)[0] if jnp.ndim(C) == 2 else 1
    if k is None:
        k = max(32, -(-min(n, m) // 20))
    k = check_static_int(k, "k", minimum=1)
    k = min(k, m, n)  # rows are the short side (see _sns_inner)
    if cg_max_steps is None:
        cg_max_steps = n + m
    cg_max_steps = check_static_int(cg_max_steps, "cg_max_steps", minimum=1)
    if newton_solver not in ("auto", "cg", "dense"):
        raise ValueError(
            f'`newton_solver` must be "auto", "cg" or "dense", got {newton_solver!r}'
        )
    if newton_solver == "dense" and isinstance(C, PointCloud):
        raise ValueError(
            '`newton_solver="dense"` needs the cost matrix; a PointCloud is '
            'solved with "cg" (or "auto")'
        )
    solver = newton_solver
    # The dense step's product costs n m^2 (m the short side): allowed up to
    # _DENSE_MAX^3, about 2 GFLOP a step.
    if solver == "auto" and (
        isinstance(C, PointCloud) or max(n, m) * min(n, m) ** 2 > _DENSE_MAX**3
    ):
        solver = "cg"
    cg_rtol_ok = True if cg_rtol is None else check_nonnegative(cg_rtol, "cg_rtol")
    return solve_ot(
        _sns_inner(
            warmup_steps,
            epsilon_scaling,
            max_newton_steps,
            k,
            cg_rtol,
            cg_max_steps,
            solver,
            warmup_dtype,
        ),
        "sinkhorn_newton_sparse",
        C,
        a,
        b,
        epsilon,
        tol,
        init,
        normalize,
        throw,
        implicit_solve_options,
        SNS_MESSAGES,
        valid=cg_rtol_ok,
    )
