"""Promises that hold under ``jit``, in derivatives and on bad input (issue 7).

Each test is one of the failures a hostile-but-realistic user found: a check that
rode on one output only, a finite wrong derivative, a derivative that could not be
taken of a jitted function, a wrong answer reported as success, an unclear message.
"""

from __future__ import annotations

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsolve
from jaxsolve import RESULTS, custom_fixed_point, custom_root
from jaxsolve.solvers.ot import grid_cost

ERRORS = (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError, ValueError)


def _raises(fn, *args, match):
    with pytest.raises(ERRORS, match=match):
        jax.block_until_ready(fn(*args))


def _cost_matrix(n=6, m=7, seed=0):
    return jnp.asarray(np.random.default_rng(seed).random((n, m)))


# --- 1. throw=True raises under jit whatever output is used -------------------


def test_throw_rides_on_every_output_of_a_linear_solve():
    A = 2.0 * jnp.eye(4)
    b = jnp.ones(4)
    bad = A.at[0, 1].set(jnp.nan)
    for output in ("residual", "num_steps", "result", "stats"):
        fn = jax.jit(lambda A, b, o=output: getattr(jaxsolve.cg(A, b), o))
        _raises(fn, bad, b, match="cg: an input contains NaN")
    # and the good input still runs
    assert float(jax.jit(lambda A, b: jaxsolve.cg(A, b).residual)(A, b)) < 1e-12


def test_throw_rides_on_every_output_of_ot():
    fn = jax.jit(lambda C: jaxsolve.sinkhorn(C, epsilon=-1.0).residual)
    _raises(
        fn, jnp.ones((3, 3)), match="sinkhorn: an input value is invalid: `epsilon`"
    )
    fn = jax.jit(lambda C: jaxsolve.sinkhorn_newton_sparse(C, epsilon=-1.0).num_steps)
    _raises(fn, jnp.ones((3, 3)), match="sinkhorn_newton_sparse: an input value")


def test_guard_keeps_every_leaf_bit_for_bit_and_ties_the_check_to_each():
    """``guard`` ties one scalar check to each leaf (by subtracting a zero that
    comes out of the check): the leaves must come back unchanged to the bit
    (``-0``, ``inf``, NaN, integers, booleans, complex) and each leaf alone,
    under ``jit``, must keep the check alive."""
    from jaxsolve._solution import guard

    tree = {
        "float": jnp.array([-0.0, 0.0, jnp.inf, -jnp.inf, jnp.nan, -1.5e-300]),
        "int": jnp.array([3, -7, 2**31 - 1], jnp.int32),
        "bool": jnp.array([True, False]),
        "complex": jnp.array([-0.0 + 1j, jnp.nan - 0.0j]),
        "float32": jnp.array([-0.0, 1e-45], jnp.float32),
    }

    def solve(t, bad):
        result = RESULTS.where(bad, RESULTS.stagnation, RESULTS.successful)
        return guard(t, result, "mysolver", throw=True)

    out = jax.jit(solve)(tree, False)
    for key, leaf in tree.items():
        assert out[key].dtype == leaf.dtype, key
        got, want = np.asarray(out[key]), np.asarray(leaf)
        assert got.tobytes() == want.tobytes(), key
    for key in tree:
        fn = jax.jit(lambda t, bad, k=key: solve(t, bad)[k])
        _raises(fn, tree, True, match="mysolver: the residual stopped")


def test_throw_rides_on_the_envelope_gradient():
    C = _cost_matrix().at[0, 0].set(jnp.nan)
    grad = jax.jit(jax.grad(lambda C: jaxsolve.sinkhorn(C, epsilon=0.1).cost))
    _raises(grad, C, match="sinkhorn: an input contains NaN")
    grad = jax.grad(jax.jit(lambda C: jaxsolve.sinkhorn(C, epsilon=0.1).cost))
    _raises(grad, C, match="sinkhorn: an input contains NaN")


# --- 2. a derivative is never a finite wrong number ---------------------------


def test_failed_derivative_solve_gives_nan_with_throw_false():
    A = jnp.diag(jnp.arange(1.0, 9.0))
    e1 = jnp.zeros(8).at[0].set(1.0)

    def total(b):
        return jnp.sum(jaxsolve.cg(A, b, max_steps=2, throw=False).value)

    # The primal solve (an eigenvector) converges in one step; the transposed
    # solve of the gradient (right-hand side ones) cannot in two.
    assert bool(jaxsolve.cg(A, e1, max_steps=2, throw=False).succeeded)
    assert bool(jnp.all(jnp.isnan(jax.grad(total)(e1))))
    assert bool(jnp.all(jnp.isnan(jax.jit(jax.grad(total))(e1))))
    # with enough steps the same gradient is the truth, 1 / diag
    good = jax.grad(lambda b: jnp.sum(jaxsolve.cg(A, b, throw=False).value))(e1)
    np.testing.assert_allclose(good, 1 / jnp.arange(1.0, 9.0), rtol=1e-10)
    # and with throw=True the failed derivative solve raises
    # (raised when the gradient is computed: blocked on, as dispatch is async)
    with pytest.raises(ERRORS, match="cg: the maximum number of steps"):
        jax.block_until_ready(
            jax.grad(lambda b: jnp.sum(jaxsolve.cg(A, b, max_steps=2).value))(e1)
        )


def test_failed_primal_solve_gives_nan_derivative_and_its_last_iterate():
    A = jnp.diag(jnp.arange(1.0, 9.0))
    b = jnp.ones(8)
    sol = jaxsolve.gmres(A, b, max_steps=2, restart=2, throw=False)
    assert bool(sol.result == RESULTS.max_steps_reached)
    assert bool(jnp.all(jnp.isfinite(sol.value)))  # the last iterate, not NaN
    grad = jax.grad(
        lambda A: jnp.sum(
            jaxsolve.gmres(A, b, max_steps=2, restart=2, throw=False).value
        )
    )(A)
    assert bool(jnp.all(jnp.isnan(grad)))


@pytest.mark.parametrize(
    "solver",
    # SNS's batch of codes also runs in the test matrix's vmap checks; its copy
    # here (14 s of compilation) runs with the slow tests.
    ["sinkhorn", pytest.param("sinkhorn_newton_sparse", marks=pytest.mark.slow)],
)
def test_one_bad_element_of_a_batch_does_not_abort_the_others(solver):
    solve = getattr(jaxsolve, solver)
    C = _cost_matrix()
    batch = jnp.stack([C, C.at[0, 0].set(jnp.nan), 2 * C])

    def loss(Cs):
        sols = jax.vmap(lambda C: solve(C, epsilon=0.1, throw=False))(Cs)
        keep = jnp.asarray([1.0, 0.0, 1.0])[:, None, None]
        return jnp.sum(jnp.where(keep > 0, sols.plan**2, 0))

    grads = jax.jit(jax.grad(loss))(batch)
    assert bool(jnp.all(jnp.isfinite(grads[0]))) and bool(
        jnp.all(jnp.isfinite(grads[2]))
    )
    single = jax.jit(jax.grad(lambda C: jnp.sum(solve(C, epsilon=0.1).plan ** 2)))(C)
    np.testing.assert_allclose(grads[0], single, rtol=1e-8, atol=1e-12)
    # the bad element's own derivative is NaN, never finite
    bad = jax.jit(
        jax.grad(lambda C: jnp.sum(solve(C, epsilon=0.1, throw=False).plan ** 2))
    )
    assert not bool(jnp.any(jnp.isfinite(bad(batch[1]))))


# --- 3. OT derivatives of jitted functions, zero marginal entries -------------


def _fd(fn, x, h=1e-6):
    return (fn(x + h) - fn(x - h)) / (2 * h)


# Sinkhorn's jitted derivatives run by default in test_matrix.py.
@pytest.mark.parametrize(
    "solver",
    [pytest.param("sinkhorn", marks=pytest.mark.slow), "sinkhorn_newton_sparse"],
)
def test_derivatives_of_a_jitted_ot_solve(solver):
    solve = getattr(jaxsolve, solver)
    C = _cost_matrix()
    a, b = jnp.ones(6) / 6, jnp.ones(7) / 7
    cost = jax.jit(lambda e: solve(C, a, b, epsilon=e).cost)
    plan = jax.jit(lambda e: solve(C, a, b, epsilon=e, throw=False).plan)
    # The derivatives of the jitted functions, compiled together (one XLA
    # compilation instead of one per eager transform; grad and jvp of a jitted
    # solve called eagerly, as training code does, run for every solver in
    # test_matrix.py's test_derivatives_of_jitted_functions).
    grad, tangent, plan_tangent = jax.jit(
        lambda e: (
            jax.grad(cost)(e),
            jax.jvp(cost, (e,), (1.0,))[1],
            jax.jvp(plan, (e,), (1.0,))[1],
        )
    )(0.1)
    expected = _fd(cost, 0.1)
    np.testing.assert_allclose(grad, expected, rtol=1e-6)
    np.testing.assert_allclose(tangent, expected, rtol=1e-6)
    np.testing.assert_allclose(plan_tangent, _fd(plan, 0.1), rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize(
    "solver",
    ["sinkhorn", pytest.param("sinkhorn_newton_sparse", marks=pytest.mark.slow)],
)
def test_derivatives_of_vmap_of_a_jitted_ot_solve(solver):
    """``jvp``/``grad`` of ``vmap`` of the caller's own ``jit`` of a solve (a
    per-example jitted loss, batched and differentiated) failed with a shape
    error in JAX's batching: two custom_jvp rules gave tangents batched unlike
    their primals (``guard``'s, whose NaN scale depends on the batched failure
    flag, and the row potential's zero, whose tangent depends on the batched
    cost). The derivatives must match the per-element ones and finite
    differences."""
    solve = getattr(jaxsolve, solver)
    batch = jnp.stack([_cost_matrix(seed=s) for s in range(3)])
    W = jnp.asarray(np.random.default_rng(7).normal(size=(6, 7)))
    direction = jnp.asarray(np.random.default_rng(8).normal(size=batch.shape))

    def per_example(C):
        return jnp.sum(solve(C, epsilon=0.1, tol=1e-11, throw=False).plan * W)

    jitted = jax.jit(per_example)

    def loss(Cs):
        return jnp.sum(jax.vmap(jitted)(Cs))

    grad, tangent = jax.jit(
        lambda Cs: (jax.grad(loss)(Cs), jax.jvp(loss, (Cs,), (direction,))[1])
    )(batch)
    expected = jnp.stack([jax.grad(jitted)(C) for C in batch])
    np.testing.assert_allclose(grad, expected, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(tangent, jnp.vdot(expected, direction), rtol=1e-8)
    h = 1e-6
    fd = (loss(batch + h * direction) - loss(batch - h * direction)) / (2 * h)
    np.testing.assert_allclose(tangent, fd, rtol=1e-5)


def test_derivatives_with_a_zero_in_b():
    rng = np.random.default_rng(1)
    C = jnp.asarray(rng.random((5, 6)))
    a = jnp.ones(5) / 5
    b = jnp.asarray([0.25, 0.25, 0.0, 0.25, 0.125, 0.125])

    def plan(e):
        return jaxsolve.sinkhorn(C, a, b, epsilon=e, throw=False).plan

    # Jitted: one compilation each instead of many small eager ones.
    tangent = jax.jit(lambda e: jax.jvp(plan, (e,), (1.0,))[1])(0.1)
    np.testing.assert_allclose(tangent, _fd(jax.jit(plan), 0.1), rtol=1e-5, atol=1e-10)
    assert bool(jnp.all(tangent[:, 2] == 0))
    grad = jax.jit(jax.grad(lambda e: plan(e)[0, 0]))(0.1)
    np.testing.assert_allclose(grad, tangent[0, 0], rtol=1e-8)


def test_gradient_at_a_negative_epsilon_names_epsilon():
    C = _cost_matrix(5, 6)
    for fn in (
        jax.grad(lambda e: jaxsolve.sinkhorn(C, epsilon=e).plan[0, 0]),
        jax.jit(jax.grad(lambda e: jaxsolve.sinkhorn(C, epsilon=e).plan[0, 0])),
        jax.grad(jax.jit(lambda e: jaxsolve.sinkhorn(C, epsilon=e).cost)),
    ):
        _raises(fn, -0.1, match=re.escape("`epsilon` must be > 0"))


# --- 4. wrong answers are never reported as success ---------------------------


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_dense_solve_reports_a_singular_matrix(dtype):
    rng = np.random.default_rng(0)
    M = jnp.asarray(rng.normal(size=(4, 2)) @ rng.normal(size=(2, 4)), dtype)
    sol = jaxsolve.dense_solve(M, jnp.asarray(rng.normal(size=4), dtype), throw=False)
    assert bool(sol.result == RESULTS.breakdown), sol.message
    with pytest.raises(ERRORS, match="singular to working precision"):
        jaxsolve.dense_solve(M, jnp.ones(4, dtype))


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_cg_refuses_a_non_symmetric_matrix(dtype):
    rng = np.random.default_rng(2)
    A = jnp.asarray(rng.normal(size=(5, 5)) * 0.1 + 3 * np.eye(5), dtype)
    b = jnp.asarray(rng.normal(size=5), dtype)
    sol = jax.jit(lambda A, b: jaxsolve.cg(A, b, throw=False))(A, b)
    assert bool(sol.result == RESULTS.not_symmetric), sol.message
    with pytest.raises(ERRORS, match="not symmetric"):
        jax.grad(lambda A: jnp.sum(jaxsolve.cg(A, b).value ** 2))(A)

    def F(x, A):
        return A @ x - b

    root = custom_root(F, solve="cg")(lambda x0, A: jnp.linalg.solve(A, b))
    with pytest.raises(ERRORS, match="not symmetric"):
        jax.grad(lambda A: jnp.sum(root(jnp.zeros(5, dtype), A) ** 2))(A)
    # a symmetric matrix in float32 rounding passes the probe
    S = (A + A.T) / 2
    assert bool(jaxsolve.cg(S, b, rtol=1e-5, throw=False).succeeded)


def test_custom_root_refuses_a_non_finite_solution():
    F = lambda x, t: x - t  # noqa: E731
    nan_solver = custom_root(F)(lambda x0, t: jnp.nan * x0)
    for fn in (
        jax.jit(lambda t: nan_solver(jnp.ones(2), t)),
        jax.jit(jax.grad(lambda t: jnp.sum(nan_solver(jnp.ones(2), t)))),
    ):
        _raises(fn, jnp.ones(2), match="custom_root: the solver returned a solution")

    def T(x, t):
        return 2 * x - t  # not a contraction: iterating diverges to -inf

    def iterate_t(x0, t):
        return jax.lax.fori_loop(0, 2000, lambda _, x: T(x, t), x0)

    diverging = custom_fixed_point(T)(iterate_t)
    _raises(
        jax.jit(lambda t: diverging(jnp.zeros(2), t)),
        jnp.ones(2),
        match="solution containing NaN or Inf",
    )
    # throw=False: no error, and the derivative is NaN, never finite
    quiet = custom_root(F, throw=False)(lambda x0, t: jnp.nan * x0)
    assert bool(
        jnp.all(
            jnp.isnan(jax.grad(lambda t: jnp.sum(quiet(jnp.ones(2), t)))(jnp.ones(2)))
        )
    )


def test_linear_solve_refuses_bad_ridges_and_operators():
    A, b = 3 * jnp.eye(3), jnp.ones(3)
    with pytest.raises(ValueError, match="`ridge` must be >= 0"):
        jaxsolve.linear_solve(A, b, ridge=-1.0)
    # An array is data, checked at run time as under jit (an eager call is
    # compiled as one program): the same message, or the code with throw=False.
    eager = lambda r: jaxsolve.linear_solve(A, b, ridge=r)  # noqa: E731
    _raises(eager, jnp.asarray(-1.0), match="`ridge` must be >= 0")
    bad = jaxsolve.linear_solve(A, b, ridge=jnp.asarray(-1.0), throw=False)
    assert bool(bad.result == RESULTS.invalid_input)
    traced = jax.jit(lambda r: jaxsolve.linear_solve(A, b, ridge=r, throw=False))
    assert bool(traced(-1.0).result == RESULTS.invalid_input)
    assert bool(traced(1.0).succeeded)
    _raises(
        jax.jit(lambda r: jaxsolve.linear_solve(A, b, ridge=r).residual),
        -1.0,
        match="`ridge` must be >= 0",
    )
    with pytest.raises(ValueError, match="`ridge` must be a scalar"):
        jaxsolve.linear_solve(A, b, ridge=jnp.ones(3))
    for operator, match in (
        (jnp.ones(3) * 3, "square matrix"),  # 1-D "matrix"
        (jnp.ones((3, 4)), "square matrix"),
        (lambda x: jnp.sum(x), "same shape"),  # a scalar output
        (jnp.eye(3, dtype=bool), "floating"),
    ):
        with pytest.raises(ValueError, match=match):
            jaxsolve.linear_solve(operator, b, ridge=0.1)


@pytest.mark.parametrize("method", ["cg", "gmres", "bicgstab", "dense"])
def test_operator_output_and_linearity_are_checked(method):
    b = jnp.ones(3) * 1.5
    for operator in (
        lambda x: (3 * x).astype(jnp.int32),
        lambda x: (3 * x).astype(jnp.complex128),
    ):
        with pytest.raises(ValueError, match="`operator` must return a real floating"):
            jaxsolve.linear_solve(operator, b, method=method)
    sol = jaxsolve.linear_solve(lambda x: 3 * x + 1, b, method=method, throw=False)
    assert bool(sol.result == RESULTS.nonlinear_operator)
    _raises(
        jax.jit(
            lambda b: (
                jaxsolve.linear_solve(lambda x: 3 * x + 1, b, method=method).residual
            )
        ),
        b,
        match="not linear",
    )


def test_max_steps_beyond_int32_is_refused():
    with pytest.raises(ValueError, match="2\\*\\*31"):
        jaxsolve.cg(jnp.eye(2), jnp.ones(2), max_steps=2**31)


# --- 5. robustness against scipy ----------------------------------------------


def _convection_diffusion_1d(n=200, half_peclet=2.82):
    """Central differences for -u'' + c u' on n points: cond ~ 140, strongly
    non-normal (cell Peclet / 2 = 2.82)."""
    main = 2.0 * np.eye(n)
    return (
        main
        + np.diag(np.full(n - 1, -1 + half_peclet), 1)
        + np.diag(np.full(n - 1, -1 - half_peclet), -1)
    )


def test_bicgstab_restarts_after_a_breakdown():
    A = _convection_diffusion_1d()
    n = A.shape[0]
    rtol = 8.5e-8
    scipy_linalg = pytest.importorskip("scipy.sparse.linalg")
    b = np.sin(np.arange(n))
    x_scipy, info = scipy_linalg.bicgstab(A, b, rtol=rtol, maxiter=4000)
    assert info == 0  # scipy's bicgstab converges here
    sol = jaxsolve.bicgstab(jnp.asarray(A), jnp.asarray(b), rtol=rtol, throw=False)
    assert bool(sol.succeeded), sol.message
    assert float(sol.residual) <= rtol * np.linalg.norm(b)
    np.testing.assert_allclose(sol.value, np.linalg.solve(A, b), rtol=1e-5, atol=1e-6)
    # where BiCGStab cannot converge (scipy's returns a residual of 1e9 here), it
    # says so and returns its best iterate, not the diverged last one
    ones = np.ones(n)
    sol = jaxsolve.bicgstab(jnp.asarray(A), jnp.asarray(ones), rtol=rtol, throw=False)
    if not bool(sol.succeeded):
        assert float(sol.residual) <= np.linalg.norm(ones) * (1 + 1e-12)


@pytest.mark.parametrize("method", ["cg", "gmres", "bicgstab"])
def test_zero_right_hand_side_is_solved_exactly_from_any_guess(method):
    A = jnp.diag(jnp.arange(1.0, 6.0))
    solve = getattr(jaxsolve, method)
    sol = solve(A, jnp.zeros(5), x0=jnp.ones(5), throw=False)
    assert bool(sol.succeeded), sol.message
    assert bool(jnp.all(sol.value == 0))


# --- 6. messages that name the argument and the reason ------------------------


def test_messages_name_the_argument():
    A, b = 2.0 * jnp.eye(3), jnp.ones(3)
    with pytest.raises(ValueError, match="`b` must be an array, got None"):
        jaxsolve.cg(A, None)
    with pytest.raises(ValueError, match="`C` must be an array, got None"):
        jaxsolve.sinkhorn(None, epsilon=0.1)
    with pytest.raises(ValueError, match="`preconditioner` could not be applied"):
        jaxsolve.cg(A, b, preconditioner=lambda x: x @ jnp.ones((4, 4)))
    with pytest.raises(ValueError, match="`cg_rtol` must be >= 0"):
        jaxsolve.sinkhorn_newton_sparse(_cost_matrix(), epsilon=0.1, cg_rtol=-0.1)
    with pytest.raises(ValueError, match="`b` must not be empty"):
        jaxsolve.cg(jnp.zeros((0, 0)), jnp.zeros(0))
    with pytest.raises(ValueError, match="`shape` must be an int or a pair"):
        grid_cost(2.5)
    with pytest.raises(ValueError, match="float32 or float64"):
        jaxsolve.dense_solve(A.astype(jnp.float16), b.astype(jnp.float16))
    with pytest.raises(ValueError, match="JAX can transpose"):
        jaxsolve.gmres(lambda x: x**3 + 2 * x, b)
    with pytest.raises(ValueError, match="must return a pair \\(x, aux\\)"):
        custom_root(lambda x, t: x - t, has_aux=True)(lambda x0, t: t)(b, b)
    with pytest.raises(
        ValueError, match="`fixed_point_fn\\(x, \\*args\\)` must return"
    ):
        custom_fixed_point(lambda x, t: jnp.sum(x) * t[:2])(lambda x0, t: x0)(b, b)


def test_sns_messages_are_its_own():
    C = _cost_matrix()
    fn = jax.jit(
        lambda C: (
            jaxsolve.sinkhorn_newton_sparse(
                C, epsilon=0.1, max_newton_steps=1, warmup_steps=1, tol=1e-14
            ).cost
        )
    )
    with pytest.raises(ERRORS) as info:
        jax.block_until_ready(fn(C))
    message = str(info.value)
    assert "sinkhorn_newton_sparse: " in message
    assert "`rtol`" not in message and "`atol`" not in message
