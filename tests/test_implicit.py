"""The implicit-differentiation layer: closed forms, finite differences, every
transform, pytrees, closures, JAXopt compatibility, errors and memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxsolve import custom_fixed_point, custom_root

rng = np.random.default_rng(0)
N, D = 30, 4
X = jnp.asarray(rng.normal(size=(N, D)))
Y = jnp.asarray(rng.normal(size=N))
W0 = jnp.zeros(D)


def ridge_condition(w, lam, X, y):
    return X.T @ (X @ w - y) + lam * w


def ridge_closed_form(lam, X, y):
    return jnp.linalg.solve(X.T @ X + lam * jnp.eye(X.shape[1]), X.T @ y)


def gradient_descent(w, lam, X, y, steps=3000):
    """A solver JAX cannot reverse-differentiate: a while_loop."""
    lr = 1.0 / (jnp.linalg.norm(X, 2) ** 2 + lam)

    def body(carry):
        w, k = carry
        return w - lr * ridge_condition(w, lam, X, y), k + 1

    def cond(carry):
        w, k = carry
        return (jnp.linalg.norm(ridge_condition(w, lam, X, y)) > 1e-13) & (k < steps)

    return lax.while_loop(cond, body, (w, 0))[0]


@pytest.mark.parametrize("solve", ["cg", "gmres", "bicgstab", "dense"])
def test_every_transform_matches_the_closed_form(solve):
    ridge = custom_root(ridge_condition, solve=solve)(gradient_descent)
    f = lambda lam: jnp.sum(jnp.sin(ridge(W0, lam, X, Y)))  # noqa: E731
    g = lambda lam: jnp.sum(jnp.sin(ridge_closed_form(lam, X, Y)))  # noqa: E731
    lam = 0.7
    # Jitted transforms: one compilation each instead of many small eager ones
    # (eager use is covered by the other tests).
    jit = jax.jit
    np.testing.assert_allclose(jit(jax.grad(f))(lam), jax.grad(g)(lam), rtol=1e-8)
    tangent = jit(lambda t: jax.jvp(f, (t,), (1.0,))[1])(lam)
    np.testing.assert_allclose(tangent, jax.jvp(g, (lam,), (1.0,))[1], rtol=1e-8)
    if solve == "cg":  # second order and full Jacobians: one method suffices
        hess = jit(jax.hessian(f))(lam)
        np.testing.assert_allclose(hess, jax.hessian(g)(lam), rtol=1e-6)
        jx = lambda X: ridge(W0, lam, X, Y)  # noqa: E731
        ref = jax.jacfwd(lambda X: ridge_closed_form(lam, X, Y))(X)
        np.testing.assert_allclose(jit(jax.jacfwd(jx))(X), ref, rtol=1e-7, atol=1e-12)
        np.testing.assert_allclose(jit(jax.jacrev(jx))(X), ref, rtol=1e-7, atol=1e-12)


def test_finite_differences_and_no_unrolling():
    ridge = custom_root(ridge_condition, solve="cg")(gradient_descent)
    loss = jax.jit(lambda lam: jnp.sum(ridge(W0, lam, X, Y) ** 2))
    h = 1e-5
    fd = (loss(0.5 + h) - loss(0.5 - h)) / (2 * h)
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(0.5), fd, rtol=1e-6)
    # Without the decorator, reverse mode through the while_loop is impossible:
    with pytest.raises(ValueError, match="while_loop"):
        jax.grad(lambda lam: jnp.sum(gradient_descent(W0, lam, X, Y)))(0.5)


def test_jit_vmap_and_no_recompilation():
    ridge = custom_root(ridge_condition, solve="cg")(gradient_descent)
    traces = []

    @jax.jit
    def hypergrad(lams):
        traces.append(1)
        return jax.vmap(jax.grad(lambda t: jnp.sum(ridge(W0, t, X, Y) ** 2)))(lams)

    lams = jnp.array([0.1, 1.0, 10.0])
    ref = jax.vmap(jax.grad(lambda t: jnp.sum(ridge_closed_form(t, X, Y) ** 2)))(lams)
    np.testing.assert_allclose(hypergrad(lams), ref, rtol=1e-8)
    ref2 = jax.vmap(jax.grad(lambda t: jnp.sum(ridge_closed_form(t, X, Y) ** 2)))(
        2 * lams
    )
    np.testing.assert_allclose(hypergrad(2 * lams), ref2, rtol=1e-8)  # new values
    assert len(traces) == 1
    # vmap without jit (JAXopt issue 242) and grad of vmap
    np.testing.assert_allclose(
        jax.vmap(lambda t: ridge(W0, t, X, Y))(lams),
        jax.vmap(lambda t: ridge_closed_form(t, X, Y))(lams),
        rtol=1e-9,
    )
    gv = jax.grad(lambda ls: jnp.sum(jax.vmap(lambda t: ridge(W0, t, X, Y))(ls) ** 2))
    np.testing.assert_allclose(gv(lams), ref, rtol=1e-8)


def test_pytree_solution_and_parameters_keywords_and_aux():
    """x = {"w": w, "b": bias} and theta = {"lam": lam, "data": (X, y)}, passed by
    keyword, with aux output: as in JAXopt."""

    def condition(params, hyper, data):
        X, y = data
        r = X @ params["w"] + params["b"] - y
        return {
            "w": X.T @ r + hyper["lam"] * params["w"],
            "b": jnp.sum(r) + params["b"],
        }

    def closed_form(hyper, data):
        X, y = data
        A = jnp.block(
            [
                [X.T @ X + hyper["lam"] * jnp.eye(D), X.T.sum(1, keepdims=True)],
                [X.sum(0, keepdims=True), jnp.array([[N + 1.0]])],
            ]
        )
        sol = jnp.linalg.solve(A, jnp.concatenate([X.T @ y, y.sum()[None]]))
        return {"w": sol[:D], "b": sol[D]}

    @custom_root(condition, has_aux=True, solve="gmres")
    def solver(init, hyper, data):
        return closed_form(hyper, data), {"steps": jnp.asarray(1)}

    hyper, data = {"lam": jnp.asarray(0.3)}, (X, Y)
    init = {"w": W0, "b": jnp.asarray(0.0)}
    loss = lambda h, d: jnp.sum(solver(init, hyper=h, data=d)[0]["w"] ** 2)  # noqa: E731
    ref = lambda h, d: jnp.sum(closed_form(h, d)["w"] ** 2)  # noqa: E731
    g, g_ref = (
        jax.grad(loss, argnums=(0, 1))(hyper, data),
        jax.grad(ref, argnums=(0, 1))(hyper, data),
    )
    for a, b in zip(
        jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)
    _, aux = solver(init, hyper, data)
    assert int(aux["steps"]) == 1


def test_closed_over_arrays_receive_gradients():
    def loss(X):
        def condition(w, lam):  # closes over X
            return ridge_condition(w, lam, X, Y)

        @custom_root(condition, solve="cg")
        def solver(init, lam):  # closes over X too
            return gradient_descent(init, lam, X, Y)

        return jnp.sum(solver(W0, 0.5) ** 2)

    ref = jax.grad(lambda X: jnp.sum(ridge_closed_form(0.5, X, Y) ** 2))(X)
    np.testing.assert_allclose(jax.grad(loss)(X), ref, rtol=1e-8)
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(X), ref, rtol=1e-8)
    t = jax.jvp(loss, (X,), (jnp.ones_like(X),))[1]
    np.testing.assert_allclose(t, jnp.sum(ref), rtol=1e-8)


def test_fixed_point_closed_form():
    def T(x, a):
        return a * jnp.cos(x)

    @custom_fixed_point(T)
    def solve(x0, a):
        return lax.fori_loop(0, 200, lambda i, x: T(x, a), x0)

    a = jnp.array([0.2, 0.5, 0.8])
    x = solve(jnp.zeros(3), a)
    expected = jnp.cos(x) / (1 + a * jnp.sin(x))
    np.testing.assert_allclose(
        jax.jacfwd(solve, argnums=1)(jnp.zeros(3), a),
        jnp.diag(expected),
        rtol=1e-10,
        atol=1e-14,
    )
    np.testing.assert_allclose(
        jax.grad(lambda a: jnp.sum(solve(jnp.zeros(3), a)))(a), expected, rtol=1e-10
    )


def test_jaxopt_solve_function_and_decorator_are_interchangeable():
    jaxopt = pytest.importorskip("jaxopt")

    def solver(w, lam, X, y):
        return gradient_descent(w, lam, X, y)

    ours = custom_root(ridge_condition, solve=jaxopt.linear_solve.solve_cg)(solver)
    theirs = jaxopt.implicit_diff.custom_root(
        ridge_condition, solve=jaxopt.linear_solve.solve_cg
    )(solver)
    f = lambda s: jax.grad(lambda lam: jnp.sum(s(W0, lam, X, Y) ** 2))(0.4)  # noqa: E731
    np.testing.assert_allclose(f(ours), f(theirs), rtol=1e-7)


def test_preconditioner_built_at_the_solution():
    """``preconditioner(x, *args)`` is built at the solution and used by the
    derivative solves: a Jacobi one gives the closed-form derivatives (all
    transforms), and one that returns NaN makes the derivative solve fail
    loudly (so it is really applied)."""
    calls = []

    def jacobi(w, lam, X, y):
        calls.append(w.shape)
        diag = jnp.sum(X * X, axis=0) + lam
        return lambda v: v / diag

    ridge = custom_root(ridge_condition, solve="cg", preconditioner=jacobi)
    ridge = ridge(gradient_descent)
    f = lambda lam: jnp.sum(jnp.sin(ridge(W0, lam, X, Y)))  # noqa: E731
    g = lambda lam: jnp.sum(jnp.sin(ridge_closed_form(lam, X, Y)))  # noqa: E731
    # Jitted transforms: one compilation each instead of many small eager ones.
    np.testing.assert_allclose(jax.jit(jax.grad(f))(0.7), jax.grad(g)(0.7), rtol=1e-8)
    tangent = jax.jit(lambda t: jax.jvp(f, (t,), (1.0,))[1])(0.7)
    np.testing.assert_allclose(tangent, jax.jvp(g, (0.7,), (1.0,))[1], rtol=1e-8)
    hess = jax.jit(jax.hessian(f))(0.7)
    np.testing.assert_allclose(hess, jax.hessian(g)(0.7), rtol=1e-6)
    assert calls and all(shape == (D,) for shape in calls)

    poisoned = custom_root(
        ridge_condition, solve="cg", preconditioner=lambda w, *a: lambda v: v * jnp.nan
    )(gradient_descent)
    with pytest.raises(Exception, match="cg: "):
        jax.block_until_ready(
            jax.jit(jax.grad(lambda lam: jnp.sum(poisoned(W0, lam, X, Y))))(0.7)
        )
    with pytest.raises(ValueError, match="`preconditioner` needs an iterative"):
        custom_root(ridge_condition, solve="dense", preconditioner=jacobi)
    with pytest.raises(ValueError, match="not both"):
        custom_root(
            ridge_condition,
            solve="cg",
            preconditioner=jacobi,
            solve_options={"preconditioner": lambda v: v},
        )


def test_errors():
    with pytest.raises(ValueError, match="same structure and shapes"):
        custom_root(lambda w, lam: w[:2])(lambda init, lam: init)(jnp.ones(3), 1.0)
    with pytest.raises(ValueError, match="`solve`"):
        custom_root(ridge_condition, solve=3)
    # A backward linear solve that fails raises (no silent wrong derivative):
    bad = custom_root(lambda x, a: -x - a, solve="cg")(lambda init, a: -a)
    with pytest.raises(Exception, match="cg: the operator is not symmetric positive"):
        jax.block_until_ready(
            jax.grad(lambda a: jnp.sum(bad(jnp.zeros(2), a)))(jnp.ones(2))
        )


def test_gradient_memory_does_not_grow_with_iterations():
    ridge = custom_root(ridge_condition, solve="cg")

    def gd_fixed(steps):
        def solver(w, lam, X, y):
            lr = 1.0 / (jnp.linalg.norm(X, 2) ** 2 + lam)
            return lax.fori_loop(
                0, steps, lambda i, w: w - lr * ridge_condition(w, lam, X, y), w
            )

        return solver

    def temp_bytes(steps, implicit):
        solver = ridge(gd_fixed(steps)) if implicit else gd_fixed(steps)
        loss = lambda lam: jnp.sum(solver(W0, lam, X, Y) ** 2)  # noqa: E731
        compiled = jax.jit(jax.grad(loss)).lower(0.5).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert temp_bytes(10, True) == temp_bytes(2000, True)
    assert temp_bytes(2000, False) > 10 * temp_bytes(10, False)  # unrolling grows
