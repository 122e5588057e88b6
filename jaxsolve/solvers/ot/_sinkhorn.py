"""Log-domain Sinkhorn: exact alternating maximisation of the entropic OT dual."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from ..._checks import check_static_int
from ..._compiled import compiled_once
from ..._iterate import iterate
from ..._solution import RESULTS
from . import _kernel as kernel
from ._dual import INVALID_OT_INPUT, OTSolution, Problem, solve_ot

__all__ = ["sinkhorn"]


def _log(x):
    return jnp.log(jnp.where(x > 0, x, 1))


def _row_lse(g, p: Problem, f=None):
    """``LSE_j((g_j - C_ij) / epsilon - 1)`` over the support of ``b``, so that
    ``log (P 1)_i = f_i / epsilon + _row_lse(g)_i``. With ``f``, the value that
    would make ``P 1 = a``, ``log a - f / epsilon``, is the kernel's guess (one
    pass over ``C`` instead of two while the rows are close to their marginal)."""
    if f is None:
        return kernel.row_lse(p.C, g, p.epsilon, p.b)
    guess = jnp.where(p.a > 0, _log(p.a) - f / p.epsilon, 0)
    return kernel.row_lse(p.C, g, p.epsilon, p.b, guess, p.a > 0)


def _col_lse(f, p: Problem, g=None):
    """The column counterpart of :func:`_row_lse`, ``g`` giving the guess."""
    if g is None:
        return kernel.col_lse(p.C, f, p.epsilon, p.a)
    guess = jnp.where(p.b > 0, _log(p.b) - g / p.epsilon, 0)
    return kernel.col_lse(p.C, f, p.epsilon, p.a, guess, p.b > 0)


def _row_error(f, lse, p: Problem):
    """``||P 1 - a||_1`` (after a ``g``-update the columns are exact)."""
    rows = jnp.exp(f / p.epsilon + lse)
    return jnp.sum(jnp.where(p.a > 0, jnp.abs(rows - p.a), 0))


def sinkhorn_stage(p: Problem, f, g, max_steps, halvings: int = 0, per_level=1):
    """Sinkhorn steps from ``(f, g)`` until the marginal error is below ``p.tol``
    or ``max_steps``. Returns ``(f, g, error, num_steps)``.

    Each step sets ``f`` so that ``P 1 = a`` exactly, then ``g`` so that
    ``P^T 1 = b`` (both through a logsumexp: no overflow at any epsilon). The
    state carries the row logsumexp of the current ``g``, so that the stopping
    test needs no extra pass over ``C``: two passes per step.

    Epsilon scaling (``halvings > 0``, static): step ``t`` uses ``epsilon 2^j``
    with ``j = max(0, halvings - t // per_level)``, so the first ``halvings
    per_level`` steps follow a schedule that halves a larger epsilon down to
    the problem's (each level's dual is a good start for the next: a smoother
    problem converges in fewer steps, and the potentials move by whole cost
    scales at once). The error tested against ``p.tol`` is measured at the
    epsilon of the next step, so the stage cannot stop before the schedule has
    reached the problem's own epsilon.
    """
    t0 = jnp.asarray(0, jnp.int32)
    q = _at(p, t0, halvings, per_level)
    lse = _row_lse(g, q, f)
    err = _row_error(f, lse, q) + _col_error(f, g, q)
    f, g, _, err, num_steps = _steps(p, f, g, lse, err, max_steps, halvings, per_level)
    return f, g, err, num_steps


def _at(p: Problem, t, halvings, per_level):
    """``p`` at the epsilon of step ``t`` of the schedule (see
    :func:`sinkhorn_stage`; ``halvings`` a static int or a traced one, whose 0
    gives ``epsilon`` times exactly 1)."""
    if isinstance(halvings, int) and halvings == 0:
        return p
    level = jnp.clip(halvings - t // per_level, 0, halvings)
    return p._replace(epsilon=p.epsilon * jnp.exp2(level.astype(p.epsilon.dtype)))


def _steps(
    p: Problem,
    f,
    g,
    lse,
    err,
    max_steps,
    halvings=0,
    per_level=1,
    until=None,
    until_off=False,
):
    """The loop of :func:`sinkhorn_stage`, from ``lse``, the row log-sum-exp
    of ``g`` at the first step's epsilon, and the marginal error ``err``; with
    ``until``, it also stops after any step that leaves ``err <= until``
    (unless ``until_off``, a traced bool). ``halvings``: static or traced.
    Returns ``(f, g, lse, err, num_steps)``."""
    ok = p.result == RESULTS.successful
    static_zero = isinstance(halvings, int) and halvings == 0

    def keep_going(state):
        _, _, _, err, t = state
        scaled = False if static_zero else (t < halvings * per_level)
        going = ok & ((err > p.tol) | scaled)
        if until is not None:
            going = going & ((t == 0) | (err > until) | until_off)
        return going

    def step(state):
        _, g, lse, _, t = state
        q = _at(p, t, halvings, per_level)
        f = jnp.where(p.a > 0, q.epsilon * (_log(p.a) - lse), 0)
        # The potential being replaced guesses each log-sum-exp (see _row_lse).
        g = jnp.where(p.b > 0, q.epsilon * (_log(p.b) - _col_lse(f, q, g)), 0)
        q = _at(p, t + 1, halvings, per_level)
        lse = _row_lse(g, q, f)
        return f, g, lse, _row_error(f, lse, q), t + 1

    init = (f, g, lse, err, jnp.asarray(0, jnp.int32))
    (f, g, lse, err, _), num_steps = iterate(step, keep_going, init, max_steps)
    return f, g, lse, err, num_steps


def sinkhorn_block(
    p: Problem,
    f,
    g,
    rows,
    err,
    max_steps,
    until,
    warm_up=None,
    halvings: int = 0,
    per_level: int = 1,
):
    """Sinkhorn steps at ``p.epsilon`` from a point whose plan's row sums
    ``rows = P 1`` and marginal error ``err`` are known (a Newton step's): at
    least one (if ``max_steps >= 1``), then on while the error is above
    ``until`` and ``p.tol``, at most ``max_steps``. Returns ``(f, g,
    num_steps)``.

    Two passes over ``C`` a step and none besides: the first row log-sum-exp
    is ``log (P 1)_i - f_i / epsilon`` (the exact two-pass one if a row sum on
    the support is not a normal positive number).

    ``warm_up`` (a traced bool, SNS's first iteration): where true, the steps of
    :func:`sinkhorn_stage` instead (``rows`` and ``until`` unused; the epsilon
    schedule of ``halvings``, static or traced, and the static ``per_level``),
    so that one traced Sinkhorn loop serves the warm-up and the blocks (half the
    code to compile). Under a schedule ``err`` is the first step's test (a
    static one runs its first level whatever the error; SNS passes ``inf`` with
    its traced one); without one the warm-up tests its own error first.
    """
    tiny = float(jnp.finfo(rows.dtype).tiny)
    active = p.a > 0
    fine = jnp.all((rows >= tiny) & (rows < jnp.inf) | ~active)
    warm_up = jnp.asarray(False) if warm_up is None else warm_up
    static_zero = isinstance(halvings, int) and halvings == 0
    h = 0 if static_zero else jnp.where(warm_up, halvings, 0)
    ok = p.result == RESULTS.successful
    err = jnp.asarray(err, rows.dtype)

    # The loop is rotated against _steps': an iteration first forms the row
    # log-sum-exp of the current g (at t = 0 from ``rows`` when it can) and
    # the error, decides, and only then updates f and g. So the row
    # log-sum-exp is traced once, not once before the loop and once in it;
    # the passes are the same.
    def row_lse(t, f, g):
        q = _at(p, t, h, per_level)

        def exact():
            # A step's log-sum-exp takes f's guess (see _row_lse); a block's
            # first, when a row sum is not normal, is the exact one, which a
            # NaN guess forces.
            if not isinstance(p.C, kernel.BothLayouts):
                return _row_lse(g, q)
            guess = jnp.where(active, _log(p.a) - f / q.epsilon, 0)
            guess = jnp.where(warm_up | (t > 0), guess, jnp.nan)
            return kernel.row_lse(q.C, g, q.epsilon, q.b, guess, active)

        from_rows = (t == 0) & fine & ~warm_up
        return lax.cond(
            from_rows, lambda: jnp.where(active, _log(rows) - f / p.epsilon, 0), exact
        ), q

    def first_error(f, g, lse, q):
        if not static_zero:
            # With a schedule the first level runs whatever the error (a
            # traced schedule of 0 halvings tests ``err``: SNS passes inf).
            return err
        # Without one the warm-up's first test uses its own error.
        return lax.cond(
            warm_up, lambda: _row_error(f, lse, q) + _col_error(f, g, q), lambda: err
        )

    def body(state):
        f, g, t, _ = state
        lse, q = row_lse(t, f, g)
        e = lax.cond(
            t == 0,
            lambda: first_error(f, g, lse, q),
            lambda: _row_error(f, lse, q),
        )
        scaled = False if static_zero else (t < h * per_level)
        go = ok & ((e > p.tol) | scaled) & (t < max_steps)
        go = go & ((t == 0) | (e > until) | warm_up)

        def update():
            f_ = jnp.where(p.a > 0, q.epsilon * (_log(p.a) - lse), 0)
            # The potential being replaced guesses each log-sum-exp.
            g_ = jnp.where(p.b > 0, q.epsilon * (_log(p.b) - _col_lse(f_, q, g)), 0)
            return f_, g_

        f, g = lax.cond(go, update, lambda: (f, g))
        return f, g, t + go.astype(jnp.int32), go

    # No pass at all for a budget of 0 (SNS's warm-up iteration after a
    # low-precision warm-up: 1.2 s of log-sum-exp at n = m = 20,000 points).
    init = (f, g, jnp.asarray(0, jnp.int32), jnp.asarray(max_steps) > 0)
    f, g, num_steps, _ = lax.while_loop(lambda s: s[3], body, init)
    return f, g, num_steps


def _col_error(f, g, p: Problem):
    cols = jnp.exp(g / p.epsilon + _col_lse(f, p, g))
    return jnp.sum(jnp.where(p.b > 0, jnp.abs(cols - p.b), 0))


def _sinkhorn_inner(max_steps):
    def inner(p: Problem, f, g):
        # Column passes as row passes of a transposed copy (kernel.BothLayouts).
        p = p._replace(C=kernel.both_layouts(p.C))
        f, g, err, num_steps = sinkhorn_stage(p, f, g, max_steps)
        stats = {
            "sinkhorn_steps": num_steps,
            "newton_steps": jnp.asarray(0, jnp.int32),
        }
        return f, g, err, jnp.asarray(False), stats

    return inner


SINKHORN_MESSAGES = {
    "invalid_input": INVALID_OT_INPUT,
    "max_steps_reached": (
        "the marginal error is above `tol` after `max_steps` Sinkhorn steps; "
        "increase `max_steps`, loosen `tol`, or use sinkhorn_newton_sparse "
        "(Newton steps: far fewer at small epsilon)"
    ),
}


@compiled_once
def sinkhorn(
    C,
    a=None,
    b=None,
    *,
    epsilon,
    tol=None,
    max_steps: int = 10_000,
    init=None,
    normalize: bool = False,
    throw: bool = True,
    implicit_solve_options: dict | None = None,
) -> OTSolution:
    r"""Entropic optimal transport by log-domain Sinkhorn iterations.

    Solves ``min_{P 1 = a, P^T 1 = b} <C, P> + epsilon sum_ij P_ij log P_ij``
    through its dual (``epsilon = 1 / eta`` in the notation of Tang et al. 2024;
    POT and regot call it ``reg``), alternating exact maximisations over the
    potentials ``f`` and ``g`` (Cuturi, "Sinkhorn Distances", NeurIPS 2013), in the
    log domain so that small ``epsilon`` neither overflows nor underflows.

    Args:
        C: the cost matrix, ``(n, m)``, or a :class:`PointCloud` (points and a
            cost function: ``C`` is never formed, each step runs over blocks of
            rows, memory ``O(n + m)`` beyond a block).
        a, b: the marginals, ``(n,)`` and ``(m,)``, non-negative with positive and
            equal sums (default: uniform, of mass 1). Zero entries are allowed
            (their row or column of the plan is zero).
        epsilon: the entropic regularisation, ``> 0`` (a scalar, differentiable).
        tol: stop when ``||P 1 - a||_1 + ||P^T 1 - b||_1 <= tol``; default
            ``1e-9 sum(a)`` in float64, ``1e-5 sum(a)`` in float32.
        max_steps: cap on the Sinkhorn steps (static).
        init: optional starting potentials ``(f0, g0)`` (warm start).
        normalize: divide ``a`` and ``b`` by their sums first. Otherwise masses
            that differ by more than ``tol / 2`` are refused
            (``RESULTS.invalid_input``): no plan has both marginals.
        throw: raise a runtime error when the solve fails; with ``False``
            inspect ``.result`` instead (e.g. under ``vmap``).
        implicit_solve_options: options of the CG solves of the derivatives
            (``rtol``, ``max_steps``).

    Returns:
        :class:`OTSolution` with ``.value = (f, g)`` (gauge ``sum f = sum g``),
        ``.plan``, ``.cost``, ``.residual`` (the marginal error) and
        ``.stats["sinkhorn_steps"]``.

    Precision: every exponent ``(f_i + g_j - C_ij) / epsilon`` is formed in the
    input dtype, so its rounding error is about ``max|C| / epsilon`` units in the
    last place. In float64 that is harmless at ``eta = 1200`` and far beyond. In
    float32 (``2^-24 ~ 6e-8``) the default tolerance ``1e-5`` is reachable while
    ``max|C| / epsilon <~ 1e4`` (measured on ``C ~ U[0, 1]``, ``n = 200``:
    ``eta = 1200`` and ``1e4`` converge; Sinkhorn still reaches ``1e-4`` at
    ``3e4``, SNS does not); beyond that, use float64.

    Memory: a cost matrix of ``2^16`` entries or more is copied once, transposed,
    for the solve (here and in :func:`sinkhorn_newton_sparse`), so that every pass
    reads along rows (about 2x faster per step on a CPU); a point cloud
    (:class:`~jaxsolve.solvers.ot.PointCloud`) never forms a matrix at all.

    Derivatives (``jvp``, ``vjp``, ``grad``, under ``jit`` and ``vmap``) with
    respect to ``C`` (a :class:`PointCloud`'s points), ``a``, ``b`` and
    ``epsilon`` come from the optimality condition through
    :func:`jaxsolve.custom_root`, not from the iterations.
    Invalid values give ``RESULTS.invalid_input`` (``epsilon <= 0``, negative
    entries, zero mass, unequal masses) or ``RESULTS.nonfinite_input``.
    """
    max_steps = check_static_int(max_steps, "max_steps")
    return solve_ot(
        _sinkhorn_inner(max_steps),
        "sinkhorn",
        C,
        a,
        b,
        epsilon,
        tol,
        init,
        normalize,
        throw,
        implicit_solve_options,
        SINKHORN_MESSAGES,
    )
