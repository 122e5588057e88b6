"""Krylov core: agreement with scipy.sparse.linalg, options, and argument errors."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import jaxsolve
from jaxsolve import RESULTS
from jaxsolve.problems import convection_diffusion_2d, poisson_2d

N = 12  # grid side: 144 unknowns


def _assemble(matvec, shape):
    """The sparse matrix of a matrix-free operator (column by column)."""
    n = int(np.prod(shape))
    eye = jnp.eye(n).reshape((n, *shape))
    cols = jax.vmap(lambda e: matvec(e).reshape(-1))(eye)
    return sp.csr_matrix(np.asarray(cols).T)


@pytest.fixture(scope="module")
def poisson():
    matvec, b = poisson_2d(N)
    return matvec, b, _assemble(matvec, b.shape)


@pytest.fixture(scope="module")
def convection():
    matvec, b = convection_diffusion_2d(N)
    return matvec, b, _assemble(matvec, b.shape)


def test_cg_agrees_with_scipy(poisson):
    matvec, b, a = poisson
    sol = jaxsolve.cg(matvec, b, rtol=1e-10)
    ref, info = spla.cg(a, np.asarray(b).ravel(), rtol=1e-10, maxiter=2000)
    assert info == 0
    exact = spla.spsolve(a.tocsc(), np.asarray(b).ravel())
    np.testing.assert_allclose(sol.value.ravel(), ref, rtol=1e-8)
    np.testing.assert_allclose(sol.value.ravel(), exact, rtol=1e-8)
    assert float(sol.residual) <= 1e-10 * float(jnp.linalg.norm(b))


@pytest.mark.parametrize("solver", [jaxsolve.gmres, jaxsolve.bicgstab])
def test_nonsymmetric_solvers_agree_with_scipy(convection, solver):
    matvec, b, a = convection
    sol = solver(matvec, b, rtol=1e-10)
    exact = spla.spsolve(a.tocsc(), np.asarray(b).ravel())
    np.testing.assert_allclose(sol.value.ravel(), exact, rtol=1e-7)
    scipy_solver = spla.gmres if solver is jaxsolve.gmres else spla.bicgstab
    ref, info = scipy_solver(a, np.asarray(b).ravel(), rtol=1e-10, maxiter=5000)
    assert info == 0
    np.testing.assert_allclose(sol.value.ravel(), ref, rtol=1e-6)


def test_gmres_restart_length_matches_scipy_iteration_count():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(60, 60)) / np.sqrt(60) + 1.5 * np.eye(60)
    b = rng.normal(size=60)
    counts = []
    ref, info = spla.gmres(
        a,
        b,
        rtol=1e-10,
        restart=10,
        maxiter=100,
        callback=counts.append,
        callback_type="pr_norm",
    )
    sol = jaxsolve.gmres(a, b, rtol=1e-10, restart=10)
    np.testing.assert_allclose(sol.value, ref, rtol=1e-7)
    # Same Krylov spaces: the inner-step counts agree up to the stopping test.
    assert abs(int(sol.num_steps) - len(counts)) <= 2, (int(sol.num_steps), len(counts))


def test_preconditioner_and_initial_guess(poisson):
    matvec, b, a = poisson
    diag = a.diagonal().reshape(b.shape)
    plain = jaxsolve.cg(matvec, b, rtol=1e-10)
    # Jacobi (a function) changes nothing but the path; the exact inverse (a
    # matrix) must converge in one step.
    jacobi = jaxsolve.cg(matvec, b, rtol=1e-10, preconditioner=lambda r: r / diag)
    np.testing.assert_allclose(jacobi.value, plain.value, rtol=1e-8)
    dense_m = np.linalg.inv(a.toarray())
    exact_m = jaxsolve.cg(matvec, b, rtol=1e-10, preconditioner=dense_m)
    assert int(exact_m.num_steps) <= 2
    warm = jaxsolve.cg(matvec, b, rtol=1e-10, x0=plain.value)
    assert int(warm.num_steps) <= 1
    for solver in (jaxsolve.gmres, jaxsolve.bicgstab):
        sol = solver(matvec, b, rtol=1e-10, preconditioner=dense_m)
        assert int(sol.num_steps) <= 2
        np.testing.assert_allclose(sol.value, plain.value, rtol=1e-8)


def test_tolerances_are_respected(poisson):
    matvec, b, _ = poisson
    bnorm = float(jnp.linalg.norm(b))
    for rtol in (1e-3, 1e-6, 1e-9):
        sol = jaxsolve.cg(matvec, b, rtol=rtol)
        assert float(sol.residual) <= rtol * bnorm
    sol = jaxsolve.gmres(matvec, b, rtol=0.0, atol=1e-4 * bnorm)
    assert float(sol.residual) <= 1e-4 * bnorm


def test_max_steps_reached_and_zero_rhs(poisson):
    matvec, b, _ = poisson
    sol = jaxsolve.cg(matvec, b, rtol=1e-12, max_steps=3, throw=False)
    assert int(sol.num_steps) == 3
    assert bool(sol.result == RESULTS.max_steps_reached)
    with pytest.raises(Exception, match="cg: the maximum number of steps"):
        jaxsolve.cg(matvec, b, rtol=1e-12, max_steps=3).value.block_until_ready()
    zero = jaxsolve.gmres(matvec, jnp.zeros_like(b))
    assert bool(zero.succeeded) and float(jnp.abs(zero.value).max()) == 0


def test_traced_negative_tolerance_is_a_result_code(poisson):
    matvec, b, _ = poisson
    sol = jax.jit(lambda t: jaxsolve.cg(matvec, b, rtol=t, throw=False))(-1.0)
    assert bool(sol.result == RESULTS.invalid_input)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: jaxsolve.cg(jnp.eye(3), jnp.ones(4)), "`b` must have shape"),
        (lambda: jaxsolve.gmres(jnp.ones((3, 4)), jnp.ones(3)), "square matrix"),
        (
            lambda: jaxsolve.cg(jnp.eye(3), jnp.ones(3), rtol=-1.0),
            "`rtol` must be >= 0",
        ),
        (
            lambda: jaxsolve.cg(jnp.eye(3), jnp.ones(3), atol=-1.0),
            "`atol` must be >= 0",
        ),
        (lambda: jaxsolve.cg(jnp.eye(3), jnp.ones(3), max_steps=0), "`max_steps`"),
        (lambda: jaxsolve.gmres(jnp.eye(3), jnp.ones(3), restart=0), "`restart`"),
        (lambda: jaxsolve.cg(lambda x: x[:2], jnp.ones(3)), "same shape"),
        (lambda: jaxsolve.cg(jnp.eye(3), jnp.ones(3) * 1j), "`b` must be real"),
        (lambda: jaxsolve.cg(jnp.eye(3), jnp.ones(3), x0=jnp.ones(2)), "`x0`"),
        (
            lambda: jaxsolve.cg(jnp.eye(3), jnp.ones(3), preconditioner=jnp.eye(2)),
            "`preconditioner`",
        ),
        (
            lambda: jaxsolve.linear_solve(jnp.eye(3), jnp.ones(3), method="lu"),
            "`method`",
        ),
        (lambda: jaxsolve.linear_solve(jnp.eye(3), jnp.ones(3), ridge=-1.0), "`ridge`"),
    ],
)
def test_argument_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_gradient_wrt_stencil_parameter_matches_closed_form():
    """d/dc of sum(x) with (L + c I) x = b is -1^T (L + cI)^{-2} b."""
    matvec, b = poisson_2d(6)
    a = _assemble(matvec, b.shape).toarray()
    bb = np.asarray(b).ravel()

    def loss(c, method):
        op = lambda u: matvec(u) + c * u  # noqa: E731
        return jnp.sum(jaxsolve.linear_solve(op, b, method=method, rtol=1e-12).value)

    m = a + 2.0 * np.eye(a.shape[0])
    expected = -np.ones(len(bb)) @ np.linalg.solve(m, np.linalg.solve(m, bb))
    for method in ("cg", "gmres", "bicgstab", "dense"):
        f = functools.partial(loss, method=method)
        # Jitted: one compilation each instead of many small eager ones.
        np.testing.assert_allclose(jax.jit(jax.grad(f))(2.0), expected, rtol=1e-8)
        t = jax.jit(lambda c, f=f: jax.jvp(f, (c,), (1.0,))[1])(2.0)
        np.testing.assert_allclose(t, expected, rtol=1e-8)


def test_ridge_and_custom_method():
    a = jnp.diag(jnp.array([0.0, 1.0, 2.0]))  # singular
    b = jnp.ones(3)
    sol = jaxsolve.linear_solve(a, b, method="dense", ridge=1.0)
    np.testing.assert_allclose(sol.value, 1.0 / np.array([1.0, 2.0, 3.0]), rtol=1e-12)

    def my_solve(matvec, rhs):  # JAXopt's convention: solve(matvec, b) -> x
        return jax.scipy.sparse.linalg.cg(matvec, rhs, tol=1e-12)[0]

    spd = jnp.array([[4.0, 1.0], [1.0, 3.0]])
    rhs = jnp.array([1.0, 2.0])
    sol = jaxsolve.linear_solve(spd, rhs, method=my_solve)
    np.testing.assert_allclose(sol.value, np.linalg.solve(spd, rhs), rtol=1e-10)
    g = jax.grad(
        lambda r: jnp.sum(jaxsolve.linear_solve(spd, r, method=my_solve).value)
    )(rhs)
    np.testing.assert_allclose(g, np.linalg.solve(spd.T, np.ones(2)), rtol=1e-10)


@pytest.mark.parametrize("method", ["gcrodr"])
def test_linear_solve_knows_the_recycling_method(method):
    rng = np.random.default_rng(5)
    A = jnp.asarray(rng.normal(size=(30, 30)) / 6 + 2 * np.eye(30))
    b = jnp.asarray(rng.normal(size=30))
    sol = jaxsolve.linear_solve(A, b, method=method, rtol=1e-10)
    np.testing.assert_allclose(sol.value, np.linalg.solve(A, b), rtol=1e-7, atol=1e-9)


def test_cg_counts_its_check_products():
    """CG's operator checks cost two products (A 0 and the symmetry probe on its
    own first direction), one for an operator linear by construction; the true
    residual at the end is one more."""
    from jaxsolve.solvers.linear._krylov import linear_by_construction

    rng = np.random.default_rng(4)
    M = rng.normal(size=(12, 12))
    A = jnp.asarray(M @ M.T + 12 * np.eye(12))
    b = jnp.asarray(rng.normal(size=12))

    def matvec(x):
        return A @ x

    for op, checks in ((matvec, 2), (linear_by_construction(matvec), 1)):
        sol = jaxsolve.cg(op, b, rtol=1e-10)
        np.testing.assert_allclose(sol.value, np.linalg.solve(A, b), rtol=1e-9)
        assert int(sol.stats["matvecs"]) == int(sol.num_steps) + checks + 1
    # an asymmetric operator marked linear is still refused
    skew = A.at[0, 1].add(1.0)
    sol = jaxsolve.cg(linear_by_construction(lambda x: skew @ x), b, throw=False)
    assert bool(sol.result == RESULTS.not_symmetric), sol.message
    # The probe rides on the first step's product: that step is refused and
    # not counted; the products are A p0, A u and the true residual.
    assert int(sol.num_steps) == 0 and int(sol.stats["matvecs"]) == 3


def test_cg_steps_takes_cgs_steps_without_its_checks():
    """The lean CG of inner solves (``cg_steps``, SNS's Newton directions):
    ``cg``'s loop (its step counts to rounding, preconditioned or not) and its
    solution, the step cap, and an honest code for a non-positive curvature;
    under ``jit`` and ``vmap``."""
    from jaxsolve.solvers.linear._cg import cg_steps

    rng = np.random.default_rng(6)
    M = rng.normal(size=(40, 40))
    A = jnp.asarray(M @ M.T + 0.5 * np.eye(40))
    b = jnp.asarray(rng.normal(size=40))
    diag = jnp.diagonal(A)
    exact = np.linalg.solve(A, b)
    for precond in (None, lambda v: v / diag):
        x, steps, code = jax.jit(
            lambda b, precond=precond: cg_steps(
                lambda v: A @ v, b, rtol=1e-10, max_steps=400, preconditioner=precond
            )
        )(b)
        ref = jaxsolve.cg(A, b, rtol=1e-10, preconditioner=precond)
        assert bool(code == RESULTS.successful)
        # The same loop: the step counts differ by rounding at most (cg's
        # first step is fused apart from the others, and it may restart).
        assert abs(int(steps) - int(ref.num_steps)) <= 2
        np.testing.assert_allclose(x, exact, rtol=1e-7, atol=1e-9)
        assert float(jnp.linalg.norm(A @ x - b)) <= 1e-9 * float(jnp.linalg.norm(b))
    # The cap (an array too) is honoured, and its last iterate is finite.
    x, steps, code = cg_steps(lambda v: A @ v, b, rtol=1e-12, max_steps=jnp.asarray(5))
    assert int(steps) == 5 and bool(code == RESULTS.successful)
    assert bool(jnp.all(jnp.isfinite(x)))
    # Negative curvature: the step is not taken and the code says why.
    x, steps, code = cg_steps(lambda v: -v, b, rtol=1e-10, max_steps=10)
    assert bool(code == RESULTS.not_positive_definite)
    assert int(steps) == 1 and bool(jnp.all(x == 0))
    # Batched right-hand sides: each element as alone.
    B = jnp.stack([b, 2 * b, jnp.zeros_like(b)])
    xs, steps_b, _ = jax.vmap(
        lambda r: cg_steps(lambda v: A @ v, r, rtol=1e-10, max_steps=400)
    )(B)
    np.testing.assert_allclose(xs[1], 2 * xs[0], rtol=1e-8, atol=1e-12)
    assert int(steps_b[2]) == 0 and bool(jnp.all(xs[2] == 0))
