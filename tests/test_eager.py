"""Eager calls compile once (``jaxsolve._compiled``).

Called outside ``jit``, a solver's loops used to be compiled again on every call
(new closures each time, so JAX's caches missed): 3 s a call for SNS at 60 x 50,
0.8 s for ``cg`` at n = 100, where the program runs in milliseconds. Each solver
now compiles an eager call as one program, once per configuration. These tests
count XLA compilations (``jax.monitoring``'s backend-compile events) over a
second call with new values of the same shapes, and check that the eager result
is the jitted one.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsolve
from jaxsolve.solvers.linear import deflated_cg
from jaxsolve.solvers.ot import PointCloud

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def _count_compilations():
    count = [0]

    def listener(event, duration, **kwargs):
        if event == _COMPILE_EVENT:
            count[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield count
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def _spd(seed, n=12):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(n, n))
    return jnp.asarray(m @ m.T + n * np.eye(n)), jnp.asarray(rng.normal(size=n))


def _nonsymmetric(seed, n=12):
    A, b = _spd(seed, n)
    return A + 0.3 * jnp.triu(A, 1), b


def _cost(seed, n=9, m=7):
    return (jnp.asarray(np.random.default_rng(seed).random((n, m))),)


def _cloud(seed, n=9, m=7):
    rng = np.random.default_rng(seed)
    return (
        PointCloud(jnp.asarray(rng.random((n, 2))), jnp.asarray(rng.random((m, 2)))),
    )


def _grid(seed):
    from jaxsolve.problems.obstacles import (
        obstacle_layout,
        obstacle_rhs,
        poisson_obstacles,
    )

    solid = obstacle_layout(8, "discs", seed=4)
    k = jnp.asarray(1.0 + 0.5 * seed)
    return poisson_obstacles(solid, coefficient=k, dtype=k.dtype), obstacle_rhs(
        solid, seed=seed, dtype=k.dtype
    )


# name: (solver, inputs from a seed, static keywords, output compared)
CASES = {
    "cg": (jaxsolve.cg, _spd, {}, "value"),
    "gmres": (jaxsolve.gmres, _nonsymmetric, {}, "value"),
    "bicgstab": (jaxsolve.bicgstab, _nonsymmetric, {}, "value"),
    "dense_solve": (jaxsolve.dense_solve, _nonsymmetric, {}, "value"),
    "linear_solve": (jaxsolve.linear_solve, _spd, {"method": "cg"}, "value"),
    "gcrodr": (jaxsolve.gcrodr, _nonsymmetric, {"m": 6, "k": 2}, "value"),
    "deflated_cg": (deflated_cg, _spd, {"record": 2}, "value"),
    "dcdm": (jaxsolve.dcdm, _grid, {"rtol": 1e-8}, "value"),
    "sinkhorn": (jaxsolve.sinkhorn, _cost, {"epsilon": 0.1}, "cost"),
    "sinkhorn_newton_sparse": (
        jaxsolve.sinkhorn_newton_sparse,
        _cost,
        {"epsilon": 0.1},
        "cost",
    ),
    "sns-point-cloud": (
        jaxsolve.sinkhorn_newton_sparse,
        _cloud,
        {"epsilon": 0.1},
        "cost",
    ),
}


def test_the_compilation_counter_counts():
    x = jax.block_until_ready(jnp.ones(3))
    with _count_compilations() as count:
        jax.block_until_ready(jax.jit(lambda x: x * 1.2345)(x))
    assert count[0] >= 1


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_second_eager_call_compiles_nothing(name):
    solver, inputs, kwargs, output = CASES[name]
    jax.block_until_ready(solver(*inputs(0), **kwargs))
    with _count_compilations() as count:
        second = jax.block_until_ready(solver(*inputs(1), **kwargs))
    assert count[0] == 0
    assert bool(second.succeeded)
    # the same answer as jax.jit of the undecorated solver (the solver itself is
    # decorated under jit too, so comparing with it would compare a program
    # with itself)
    plain = solver.__wrapped__
    jitted = jax.jit(lambda *args: getattr(plain(*args, **kwargs), output))
    np.testing.assert_allclose(
        getattr(second, output), jitted(*inputs(1)), rtol=1e-12, atol=0
    )


def test_a_function_argument_is_called_as_before():
    """A matrix-free operator is not compiled into one program (jax.jit would key
    it by identity and embed the matrix it closes over): the call runs as an
    eager call did, and its answer is right."""
    A, b = _spd(3)
    cache = jaxsolve.cg.compiled._cached
    before = cache._cache_size()
    sol = jaxsolve.cg(lambda x: A @ x, b, rtol=1e-10)
    assert cache._cache_size() == before
    np.testing.assert_allclose(A @ sol.value, b, rtol=0, atol=1e-8)


def test_eager_gradient_and_vmap_compile_once():
    """An eager ``jax.grad`` or ``jax.vmap`` of a solve (tracers, no ``jit``)
    compiled the loops again on every call too (SNS at 60 x 50: 4 s and 5 s a
    call); the second call now compiles nothing, and the results are those of
    ``jax.jit`` of the undecorated solver."""

    def cost(C, solve=jaxsolve.sinkhorn_newton_sparse):
        return solve(C, epsilon=0.1).cost

    def costs(Cs):
        return jax.vmap(cost)(Cs)

    # the reference: jax.jit of the undecorated solver
    def plain_cost(C):
        return cost(C, jaxsolve.sinkhorn_newton_sparse.__wrapped__)

    grad = jax.grad(cost)
    jax.block_until_ready(grad(_cost(0)[0]))
    jax.block_until_ready(costs(jnp.stack([_cost(0)[0], _cost(1)[0]])))
    C = _cost(2)[0]
    Cs = jnp.stack([_cost(3)[0], _cost(4)[0]])
    with _count_compilations() as count:
        g = jax.block_until_ready(grad(C))
        batch = jax.block_until_ready(costs(Cs))
    assert count[0] == 0
    plain_grad = jax.jit(jax.grad(plain_cost))(C)
    np.testing.assert_allclose(g, plain_grad, rtol=1e-12, atol=1e-15)
    plain_batch = jax.jit(jax.vmap(plain_cost))(Cs)
    np.testing.assert_allclose(batch, plain_batch, rtol=1e-12, atol=0)


def test_an_array_epsilon_compiles_once_for_all_values():
    """Python numbers are static (a new ``epsilon=0.2`` compiles again, as
    ``jax.jit`` with a static argument would); an array ``epsilon`` is traced."""
    C = _cost(0)[0]
    solve = jaxsolve.sinkhorn_newton_sparse
    jax.block_until_ready(solve(C, epsilon=jnp.asarray(0.1)))
    with _count_compilations() as count:
        sol = jax.block_until_ready(solve(C, epsilon=jnp.asarray(0.05)))
    assert count[0] == 0 and bool(sol.succeeded)
    np.testing.assert_allclose(
        sol.cost, solve(C, epsilon=0.05).cost, rtol=1e-12, atol=0
    )
