"""What the entropic OT solvers share: input checks, the log-domain dual, the
optimality condition that the implicit layer differentiates, and the result type.

Conventions (those of Tang et al., ICLR 2024, with ``epsilon = 1 / eta``):

    primal   min_{P 1 = a, P^T 1 = b}  <C, P> + epsilon sum_ij P_ij log P_ij
    dual     max_{f, g}  D(f, g) = <f, a> + <g, b> - epsilon sum_ij P_ij(f, g)
    plan     P_ij(f, g) = exp((f_i + g_j - C_ij) / epsilon - 1)
    gradient grad D = (a - P 1, b - P^T 1)         (the marginal residuals)
    Hessian  -hess D = (1/epsilon) [[diag(P 1), P], [P^T, diag(P^T 1)]]

``D`` is concave and invariant along ``u = (1, -1)`` (``f + s``, ``g - s`` give the
same plan), so the potentials are unique only up to that shift: every solver here
returns them in the gauge ``sum_i f_i = sum_j g_j`` (sums over the support).
Zero entries of ``a`` (or ``b``) are taken out of the support: their row (column) of
the plan is exactly zero and their potential is reported as 0.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from ..._checks import all_finite, as_float_array, check_nonnegative
from ..._solution import RESULTS, Solution, finalize, guard
from ...implicit import custom_root
from . import _kernel as kernel
from ._pointcloud import PointCloud, SparsePlan

__all__ = [
    "INVALID_OT_INPUT",
    "OTSolution",
    "Problem",
    "prepare",
    "solve_ot",
    "marginal_error",
]

INVALID_OT_INPUT = (
    "an input value is invalid: `epsilon` must be > 0, `tol` >= 0, and `a` and `b` "
    "non-negative with positive masses that agree within `tol` (or pass "
    "normalize=True)"
)


class OTSolution(Solution):
    """:class:`jaxsolve.Solution` of an entropic OT solve.

    Attributes (besides those of :class:`jaxsolve.Solution`):
        value: the dual potentials ``(f, g)``, shapes ``(n,)`` and ``(m,)``, in the
            gauge ``sum f = sum g``.
        plan: the transport plan ``P = exp((f_i + g_j - C_ij) / epsilon - 1)``,
            ``(n, m)``; for a :class:`PointCloud` with a sparse ``plan`` option
            (the default above ``2**22`` entries) a :class:`SparsePlan`, its
            ``plan_k`` largest entries per row.
        cost: the regularised OT cost ``<C, P> + epsilon sum P log P``, computed as
            the dual objective ``<f, a> + <g, b> - epsilon sum P`` (equal at the
            solution; the dual form has the envelope gradient
            ``d cost / d C = P``).
        residual: the marginal error ``||P 1 - a||_1 + ||P^T 1 - b||_1``.
        stats: ``sinkhorn_steps``, ``newton_steps`` (and for SNS ``cg_steps``,
            ``line_search_steps``), ``marginal_error``.

    ``plan`` and ``cost`` are differentiable (through the implicit layer) with
    respect to ``C`` (or a :class:`PointCloud`'s points), ``a``, ``b`` and
    ``epsilon``.
    """

    plan: Array | SparsePlan | None = None
    cost: Array | None = None


class Problem(NamedTuple):
    C: Array | PointCloud  # the cost, used only through _kernel
    a: Array
    b: Array
    epsilon: Array
    tol: Array
    result: RESULTS  # the input checks' verdict: successful or an input code


def _marginal(x, n, name, dtype):
    if x is None:
        return jnp.full((n,), 1.0 / n, dtype)
    x = as_float_array(x, name)
    if x.shape != (n,):
        raise ValueError(
            f"`{name}` must have shape ({n},) to match the cost matrix, got {x.shape}"
        )
    return x


def prepare(C, a, b, epsilon, tol, normalize: bool) -> Problem:
    """Check shapes (``ValueError`` at trace time) and values (a result code).

    ``C``: a cost matrix or a :class:`PointCloud`."""
    if isinstance(C, PointCloud):
        cdtype, cfinite = C.dtype, C.finite()
    else:
        C = as_float_array(C, "C")
        if C.ndim != 2 or 0 in C.shape:
            raise ValueError(
                f"`C` must be a non-empty (n, m) matrix or a PointCloud, got shape "
                f"{C.shape}"
            )
        cdtype, cfinite = C.dtype, all_finite(C)
    n, m = C.shape
    a = _marginal(a, n, "a", cdtype)
    b = _marginal(b, m, "b", cdtype)
    epsilon = as_float_array(epsilon, "epsilon")
    if epsilon.ndim != 0:
        raise ValueError(f"`epsilon` must be a scalar, got shape {epsilon.shape}")
    dtype = jnp.result_type(cdtype, a, b, epsilon)
    C = C.astype(dtype)
    a, b, epsilon = (x.astype(dtype) for x in (a, b, epsilon))
    tol_ok = True if tol is None else check_nonnegative(tol, "tol")
    # NaN points of a cloud are caught here, like NaN entries of C (a cost
    # function that is not finite at finite points shows as a non-finite value).
    finite = cfinite & all_finite(a, b, epsilon) & all_finite(0 if tol is None else tol)
    mass_a, mass_b = jnp.sum(a), jnp.sum(b)
    valid = (
        tol_ok
        & (epsilon > 0)
        & jnp.all(a >= 0)
        & jnp.all(b >= 0)
        & (mass_a > 0)
        & (mass_b > 0)
    )
    if normalize:
        a = a / jnp.where(mass_a > 0, mass_a, 1)
        b = b / jnp.where(mass_b > 0, mass_b, 1)
    if tol is None:
        tol = (1e-9 if dtype == jnp.float64 else 1e-5) * jnp.abs(jnp.sum(a))
    tol = jnp.asarray(tol, dtype)
    if not normalize:
        # Unequal masses admit no plan: the marginal error can never fall below
        # |sum a - sum b|, so a gap the tolerance cannot absorb is refused.
        valid = valid & (2 * jnp.abs(jnp.sum(a) - jnp.sum(b)) <= tol)
    result = RESULTS.where(
        finite,
        RESULTS.where(valid, RESULTS.successful, RESULTS.invalid_input),
        RESULTS.nonfinite_input,
    )
    return Problem(C, a, b, epsilon, tol, result)


def gauge(f, g, a, b):
    """Shift ``(f + s, g - s)`` so that ``sum f = sum g`` over the support (the
    plan is unchanged), and zero the potentials off the support."""
    ma, mb = a > 0, b > 0
    f = jnp.where(ma, f, 0)
    g = jnp.where(mb, g, 0)
    count = jnp.sum(ma) + jnp.sum(mb)
    s = (jnp.sum(g) - jnp.sum(f)) / jnp.maximum(count, 1)
    return jnp.where(ma, f + s, 0), jnp.where(mb, g - s, 0)


def row_potential(g, C, a, b, epsilon):
    """The ``f`` that makes the row marginals exact given ``g`` (a Sinkhorn
    half-step): ``f_i = epsilon (log a_i - LSE_j((g_j - C_ij) / epsilon - 1))``
    over the support of ``b``, on the support of ``a``; 0 off it."""
    # The exponent is formed from finite values and masked afterwards (not from
    # g_j = -inf), so that its derivatives are 0, not inf * 0 = NaN, off the
    # support.
    lse = kernel.row_lse(C, g, epsilon, b)
    ok = a > 0
    return jnp.where(ok, epsilon * (jnp.log(jnp.where(ok, a, 1)) - lse), 0)


@jax.custom_jvp
def _row_potential_tangent(g, C, a, b, epsilon):
    """Zero, with the derivatives of :func:`row_potential`: ``f_loop + this``
    has the loop's value and the derivatives of ``f(g)`` (of every order), as
    ``f_loop + (f(g) - stop_gradient(f(g)))`` has, but a solve that is not
    differentiated never forms ``f(g)`` (a log-sum-exp pass less to compile
    and run)."""
    return _zeros_batched_with((g, C, a, b, epsilon), a.shape, g.dtype)


def _zeros_batched_with(inputs, shape, dtype):
    """Zeros of ``shape``; under ``vmap`` batched whenever one of ``inputs`` is.

    A custom_jvp's primal output must be batched as its tangent is, or JAX's
    batching of the rule breaks inside a differentiated ``jit``
    (``jvp(vmap(jit(solve)))``: a shape error); the tangent of
    :func:`_row_potential_tangent` depends on every input. The dependency is a
    select on a constant ``False`` (exactly zero whatever the inputs hold, NaN
    and Inf included), which XLA folds away."""
    anchor = sum(
        jnp.ravel(x)[0].astype(dtype)
        for x in jax.tree_util.tree_leaves(inputs)
        if jnp.size(x) > 0
    )
    return jnp.where(False, anchor, jnp.zeros(shape, dtype))


@_row_potential_tangent.defjvp
def _row_potential_tangent_jvp(primals, tangents):
    # The primal output calls the function again, so that an outer
    # differentiation (second order) applies this rule once more.
    _, d_f = jax.jvp(row_potential, primals, tangents)
    return _row_potential_tangent(*primals), d_f


def _column_scale(b):
    """A typical column sum of the plan, ``sum(b) / m``: the scale of the
    identity off the support and of the rank-one gauge term."""
    return jnp.sum(b) / b.shape[0]


def _reduced_terms(g, C, a, b, epsilon):
    """The row potentials ``f(g)``, the support indicator ``v`` of ``b`` and the
    weight ``kappa`` of the rank-one gauge term, shared by :func:`_optimality`
    and :func:`_preconditioner`."""
    f = row_potential(g, C, a, b, epsilon)
    v = (b > 0).astype(g.dtype)
    kappa = _column_scale(b) / jnp.maximum(jnp.sum(v), 1)
    return f, v, kappa


def _optimality(g, C, a, b, epsilon):
    r"""``F(g) = 0`` at the optimum, in the column potentials alone.

    With ``f = f(g)`` the row update (:func:`row_potential`, rows exact),
    ``F(g) = P^T 1 - b + kappa v (v . g) / epsilon``, ``v`` the indicator of the
    support of ``b``, plus ``s g / epsilon`` off that support (frozen entries).
    Its Jacobian is ``epsilon^{-1}`` times the Schur complement of the dual's
    negative Hessian plus the rank-one term,

        dF/dg = (D2 - P^T D1^{-1} P + kappa v v^T) / epsilon,
        D1 = P 1 (= a),  D2 = P^T 1,

    symmetric and positive definite: the Schur complement of a PSD matrix is PSD,
    its null space is ``v`` alone (the plan has a connected support), and the
    rank-one term is positive along ``v``. Taking ``v . F = 0`` with ``sum P =
    sum a = sum b`` gives ``v . g = 0``: the root is the optimum in the gauge
    ``sum g = 0``. So CG solves the implicit systems, with no ridge to bias the
    derivatives, on ``m`` unknowns instead of ``n + m`` and with about half the
    steps (the Jacobi-scaled spectrum is ``1 - s_i^2`` instead of ``1 +- s_i``);
    :func:`_preconditioner` scales it by its diagonal.
    """
    f, v, kappa = _reduced_terms(g, C, a, b, epsilon)
    cols = kernel.plan_sums(C, f, g, epsilon, a, b)[1]
    residual = cols - b + kappa * v * jnp.vdot(v, g) / epsilon
    return residual + jnp.where(b > 0, 0, _column_scale(b) * g / epsilon)


def _preconditioner(g, C, a, b, epsilon):
    """Jacobi for :func:`_optimality`'s Jacobian at the solution:
    ``diag(D2 - P^T D1^{-1} P) + kappa v^2``, over ``epsilon``."""
    f, v, kappa = _reduced_terms(g, C, a, b, epsilon)
    d1, d2 = kernel.plan_sums(C, f, g, epsilon, a, b)
    d1 = jnp.where(d1 > 0, d1, 1)
    schur = d2 - kernel.schur_col(C, f, g, epsilon, a, b, d1)
    # Rounding can leave a tiny or negative diagonal where one entry carries a
    # whole column: floor it.
    schur = jnp.maximum(schur, jnp.finfo(g.dtype).eps * d2)
    diag = jnp.where(b > 0, schur + kappa * v, _column_scale(b)) / epsilon
    return lambda w: w / diag


def marginal_error(plan, a, b):
    """``||P 1 - a||_1 + ||P^T 1 - b||_1``."""
    return jnp.sum(jnp.abs(plan.sum(1) - a)) + jnp.sum(jnp.abs(plan.sum(0) - b))


def _dual_value(f, g, C, a, b, epsilon, mass=None):
    if mass is None:
        mass = kernel.total_mass(C, f, g, epsilon, a, b)
    return jnp.vdot(f, a) + jnp.vdot(g, b) - epsilon * mass


@jax.custom_jvp
def dual_cost(f, g, C, a, b, epsilon, mass=None):
    r"""The regularised OT cost at optimal potentials, as the dual objective
    ``D = <f, a> + <g, b> - epsilon sum_ij P_ij``, with its envelope derivative.

    At the optimum ``dD/d(f, g) = (a - P 1, b - P^T 1) = 0``, so (Danskin)
    ``d cost = <P, dC> + <f, da> + <g, db> + (sum_ij P_ij log P_ij) d epsilon``:
    the tangent ignores the potentials' own tangents, and a gradient of the cost
    needs no derivative solve. The formula is differentiable again (``P``, ``f``
    and ``g`` carry their implicit derivatives), so second derivatives are exact
    too. (Dropping ``dD/d(f, g)`` costs an error of the size of the solve's
    marginal residual.)

    That tangent is the derivative of ``D`` with the potentials held fixed
    (``d(-epsilon sum P)/dC = P``, ``d(-epsilon sum P)/d epsilon = sum P log P``),
    which is how it is computed: one ``jvp`` in ``(C, a, b, epsilon)``, so a
    :class:`PointCloud`'s points get ``<P, dC>`` through their blocks of ``C``.

    ``mass``: ``sum_ij P_ij`` when the caller has it (the sum of the plan it
    formed), so that an undifferentiated cost takes no pass of its own (one
    ``exp`` kernel less to compile); derivatives never use it.
    """
    return _dual_value(f, g, C, a, b, epsilon, mass)


@dual_cost.defjvp
def _dual_cost_jvp(primals, tangents):
    f, g, C, a, b, epsilon, _ = primals
    _, _, dC, da, db, deps, _ = tangents
    return jax.jvp(
        lambda C, a, b, epsilon: _dual_value(f, g, C, a, b, epsilon),
        (C, a, b, epsilon),
        (dC, da, db, deps),
    )


def _finish_code(result, err, tol, stalled):
    """The code at the end of a solve, from the input code, the loop's final
    marginal error and whether the iteration stopped making progress.

    The loop's own error decides (the reported residual, recomputed from the
    gauge-shifted potentials, can differ from it by rounding)."""
    unconverged = RESULTS.where(
        jnp.isfinite(err),
        RESULTS.where(stalled, RESULTS.stagnation, RESULTS.max_steps_reached),
        RESULTS.nonfinite_value,
    )
    return RESULTS.where(
        result == RESULTS.successful,
        RESULTS.where(err <= tol, RESULTS.successful, unconverged),
        result,
    )


def solve_ot(
    inner,
    name: str,
    C,
    a,
    b,
    epsilon,
    tol,
    init,
    normalize: bool,
    throw: bool,
    implicit_solve_options: dict | None,
    messages: dict[str, str],
    valid=True,
) -> OTSolution:
    """Run ``inner(problem, f0, g0) -> (f, g, err, stalled, stats)`` (the loops,
    never differentiated), fix the gauge, attach implicit derivatives through
    :func:`jaxsolve.custom_root` and build the :class:`OTSolution`.

    ``messages``: the solver's own messages for its result codes; ``valid``: the
    solver's own checks of its options (a traced boolean)."""
    problem = prepare(C, a, b, epsilon, tol, normalize)
    problem = problem._replace(
        result=RESULTS.where(
            (problem.result == RESULTS.successful) & ~jnp.asarray(valid),
            RESULTS.invalid_input,
            problem.result,
        )
    )
    n, m = problem.C.shape
    dtype = problem.a.dtype
    if init is None:
        f0, g0 = jnp.zeros(n, dtype), jnp.zeros(m, dtype)
    else:
        if not isinstance(init, (tuple, list)) or len(init) != 2:
            raise ValueError("`init` must be a pair of potentials (f0, g0)")
        f0, g0 = (as_float_array(x, "init").astype(dtype) for x in init)
        if f0.shape != (n,) or g0.shape != (m,):
            raise ValueError(
                f"`init` must be potentials of shapes ({n},), ({m},), got "
                f"{f0.shape}, {g0.shape}"
            )
    tol_arr, input_code = problem.tol, problem.result

    def solver(g0, C, a, b, epsilon):
        p = problem._replace(C=C, a=a, b=b, epsilon=epsilon)
        f, g, err, stalled, stats = inner(p, f0, g0)
        # The root of `_optimality`: gauge sum g = 0 (the plan is unchanged).
        support = b > 0
        shift = jnp.sum(jnp.where(support, g, 0)) / jnp.maximum(jnp.sum(support), 1)
        g = jnp.where(support, g - shift, 0)
        f = jnp.where(a > 0, f + shift, 0)
        return g, (f, err, stalled, stats)

    # CG's budget for the derivative systems: at a small epsilon with peaked
    # marginals the plan is nearly block diagonal and the Schur complement
    # nearly singular along the blocks' shifts (1-D points, 128 x 128, epsilon
    # 1.4e-3 of the median cost: 4,000 to 7,000 steps, where 20 m is 2,560).
    options = {"max_steps": max(20 * m, 10_000), **(implicit_solve_options or {})}
    root = custom_root(
        _optimality,
        has_aux=True,
        solve="cg",
        solve_options=options,
        preconditioner=_preconditioner,
        throw=throw,
    )
    # Invalid inputs raise (throw=True) before anything uses them, the derivative
    # solves included: an invalid epsilon is named as such, not as the failure of
    # the linear solve it would cause. With throw=False their derivatives are NaN.
    C, a, b, epsilon = guard(
        (problem.C, problem.a, problem.b, problem.epsilon),
        input_code,
        name,
        throw,
        messages,
    )
    g, (f_loop, loop_err, stalled, stats) = root(solver)(g0, C, a, b, epsilon)
    # f is the loop's (so the plan is the one whose marginal error the loop
    # measured), with the derivative of the row update f(g): at the solution the
    # two agree to the tolerance, and f(g) is what the optimality condition uses.
    f = f_loop + _row_potential_tangent(g, C, a, b, epsilon)
    f, g = gauge(f, g, a, b)
    plan = kernel.plan(C, f, g, epsilon, a, b)
    if isinstance(plan, SparsePlan):  # the sums need a pass over the cloud
        cost = dual_cost(f, g, C, a, b, epsilon)
        rows, cols = kernel.plan_sums(C, f, g, epsilon, a, b)
    else:  # sum the plan just formed rather than forming it again
        cost = dual_cost(f, g, C, a, b, epsilon, jnp.sum(plan))
        rows, cols = plan.sum(1), plan.sum(0)
    rows, cols = lax.stop_gradient((rows, cols))
    err = jnp.sum(jnp.abs(rows - a)) + jnp.sum(jnp.abs(cols - b))
    result = _finish_code(input_code, loop_err, tol_arr, stalled)
    stats = {**stats, "marginal_error": err}
    num_steps = sum(stats[k] for k in ("sinkhorn_steps", "newton_steps"))
    solution = OTSolution(
        value=(f, g),
        result=result,
        num_steps=num_steps,
        residual=err,
        stats=stats,
        plan=plan,
        cost=cost,
    )
    # Every output and every derivative is guarded: code that uses only the cost
    # (or only its envelope gradient, which needs no solve) still raises.
    return finalize(solution, throw, name, messages)
