"""Entropic OT on point clouds without the cost matrix (:class:`PointCloud`).

The online (blocked) solves must equal the dense-``C`` solves: same iterations,
potentials and plans to rounding, on seeded configurations with ``n != m`` in
both orientations (SNS transposes ``n < m``), zeros in the marginals, blocks that
do not divide ``n``, and each kind of cost. Derivatives through the implicit
layer in the points, the marginals and epsilon are checked against central
differences (forward and reverse mode). The default run compiles few functions
(compilation dominates): one vmapped SNS comparison, one Sinkhorn solve with a
custom cost and its jvp and grad; the rest is ``slow``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsolve import RESULTS
from jaxsolve.solvers.ot import (
    PointCloud,
    SparsePlan,
    pairwise_cost,
    sinkhorn,
    sinkhorn_newton_sparse,
)

TOL = 1e-12
# One xdist worker runs the file, so that its tests share their compiled solves.
pytestmark = pytest.mark.xdist_group("ot-online")


def _cost15(u, v):
    """A custom cost: ``sum |u - v|^1.5`` (smooth enough to differentiate)."""
    return jnp.sum(jnp.abs(u - v) ** 1.5)


def _config(n, m, seed, zeros=False, d=2):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, d))
    y = rng.uniform(size=(m, d)) * 0.8 + 0.1
    a = rng.uniform(0.5, 1.5, size=n)
    b = rng.uniform(0.5, 1.5, size=m)
    if zeros:
        a[rng.integers(n)] = 0
        b[rng.integers(m)] = 0
    return x, y, a / a.sum(), b / b.sum()


def _batch(n, m, seeds, zeros):
    cases = [_config(n, m, s, z) for s, z in zip(seeds, zeros, strict=True)]
    return tuple(jnp.asarray(np.stack(c)) for c in zip(*cases, strict=True))


@functools.cache
def _sns_pair(cost, block_size, k, batched):
    """``(x, y, a, b, eps) -> (dense solution, online solution)``, jitted,
    ``throw=False``; vmapped over a batch of problems if ``batched``."""

    def solve(x, y, a, b, eps):
        geom = PointCloud(x, y, cost, block_size=block_size)
        kw = dict(epsilon=eps, tol=TOL, k=k, warmup_steps=5, throw=False)
        # A point cloud's Newton directions are always CG's; the matrix's
        # default ("auto") may take dense ones.
        dense = sinkhorn_newton_sparse(geom.dense(), a, b, newton_solver="cg", **kw)
        online = sinkhorn_newton_sparse(geom, a, b, **kw)
        return dense, online

    if batched:
        solve = jax.vmap(solve, in_axes=(0, 0, 0, 0, None))
    return jax.jit(solve)


def _assert_same(dense, online, atol=1e-12):
    assert bool(jnp.all(dense.succeeded)), dense.result
    assert bool(jnp.all(online.succeeded)), online.result
    np.testing.assert_array_equal(online.num_steps, dense.num_steps)
    for key in ("sinkhorn_steps", "newton_steps"):
        np.testing.assert_array_equal(online.stats[key], dense.stats[key])
    for u, v in zip(online.value, dense.value, strict=True):
        np.testing.assert_allclose(u, v, atol=atol)
    np.testing.assert_allclose(online.plan, dense.plan, atol=atol)
    np.testing.assert_allclose(online.cost, dense.cost, rtol=1e-12)
    assert float(jnp.max(online.residual)) <= TOL


@pytest.mark.parametrize("seed, zeros", [(0, False), (1, True)])
def test_sns_online_equals_dense(seed, zeros):
    """n < m (SNS solves the transposed cloud), blocks of 5 rows (not dividing
    n = 12 or m = 17), zeros in both marginals."""
    x, y, a, b = (jnp.asarray(v) for v in _config(12, 17, seed, zeros))
    dense, online = _sns_pair("sqeuclidean", 5, 6, False)(x, y, a, b, 0.03)
    _assert_same(dense, online)
    assert int(online.stats["newton_steps"]) > 0


# One Sinkhorn solve on a custom cost with a sparse plan that keeps every entry,
# for derivatives (jvp and grad against central differences) and input codes.
N, M = 9, 6


def _sinkhorn_cloud(x, y, a, b, eps):
    geom = PointCloud(x, y, _cost15, block_size=4, plan="sparse", plan_k=M)
    return sinkhorn(geom, a, b, epsilon=eps, tol=TOL, throw=False)


_solve_cloud = jax.jit(_sinkhorn_cloud)


def _loss(x, y, a, b, eps):
    """A function of the cost, the (sparse) plan and the potentials."""
    return _loss_of(_sinkhorn_cloud(x, y, a, b, eps))


def _loss_of(sol):
    f, g = sol.value
    weights = jnp.arange(M, dtype=f.dtype)[sol.plan.indices]
    others = jnp.sum(sol.plan.values**2 * weights) * 50 + jnp.sum(jnp.sin(f))
    return sol.cost + others + jnp.sum(g**2)


def _args(seed=3):
    x, y, a, b = _config(N, M, seed)
    return tuple(jnp.asarray(v) for v in (x, y, a, b)) + (jnp.asarray(0.2),)


def _directions(args):
    keys = jax.random.split(jax.random.PRNGKey(7), len(args))
    dirs = [
        jax.random.normal(k, jnp.shape(v), jnp.float64)
        for k, v in zip(keys, args, strict=True)
    ]
    # Mass-preserving directions for the marginals (no normalisation).
    dirs[2] = 0.1 * (dirs[2] - jnp.mean(dirs[2]))
    dirs[3] = 0.1 * (dirs[3] - jnp.mean(dirs[3]))
    return dirs


def test_custom_cost_sparse_plan_and_pot_reference():
    ot = pytest.importorskip("ot")
    x, y, a, b, eps = _args()
    sol = _solve_cloud(x, y, a, b, eps)
    assert bool(sol.succeeded)
    assert isinstance(sol.plan, SparsePlan) and sol.plan.shape == (N, M)
    C = np.asarray(jax.vmap(jax.vmap(_cost15, (None, 0)), (0, None))(x, y))
    P = ot.sinkhorn(
        np.asarray(a), np.asarray(b), C, 0.2, method="sinkhorn_log", stopThr=1e-14
    )
    np.testing.assert_allclose(sol.plan.todense(), P, atol=1e-12)
    np.testing.assert_allclose(sol.plan.values.sum(), 1.0, rtol=1e-12)
    # A NaN point is a non-finite input, like a NaN entry of C.
    bad = _solve_cloud(x.at[2, 1].set(jnp.nan), y, a, b, eps)
    assert bad.result == RESULTS.nonfinite_input


def _central_differences(args, dirs, h=1e-6):
    """The directional derivative of :func:`_loss` along each ``dirs[i]``
    (through the jitted solve of the other tests: nothing new to compile)."""
    out = []
    for i in range(len(args)):
        step = [h * d if j == i else 0 * d for j, d in enumerate(dirs)]
        plus = _solve_cloud(*[v + s for v, s in zip(args, step, strict=True)])
        minus = _solve_cloud(*[v - s for v, s in zip(args, step, strict=True)])
        out.append((_loss_of(plus) - _loss_of(minus)) / (2 * h))
    return out


def test_grad_in_points_marginals_epsilon():
    args = _args()
    dirs = _directions(args)
    grads = jax.jit(jax.grad(_loss, argnums=(0, 1, 2, 3, 4)))(*args)
    for g, d, fd in zip(grads, dirs, _central_differences(args, dirs), strict=True):
        np.testing.assert_allclose(jnp.vdot(g, d), fd, rtol=2e-6)


@pytest.mark.slow
def test_jvp_in_points_marginals_epsilon():
    args = _args()
    dirs = _directions(args)
    tangent = jax.jit(lambda p, t: jax.jvp(_loss, p, t)[1])(args, tuple(dirs))
    fd = sum(_central_differences(args, dirs))
    np.testing.assert_allclose(tangent, fd, rtol=2e-6)


def test_bad_input_names_the_argument():
    x, y = np.zeros((4, 2)), np.zeros((5, 3))
    with pytest.raises(ValueError, match="`x` and `y` must have the same dimension"):
        PointCloud(x, y)
    with pytest.raises(ValueError, match="`cost` must be one of"):
        PointCloud(x, x, cost=3.0)
    with pytest.raises(ValueError, match="`cost` must be one of"):
        PointCloud(x, x, cost="cosine")
    with pytest.raises(ValueError, match="`cost` must map two points"):
        PointCloud(x, x, cost=lambda u, v: u - v)
    with pytest.raises(ValueError, match="`x` must be a non-empty array of points"):
        PointCloud(np.zeros((2, 2, 2)), x)
    with pytest.raises(ValueError, match="`block_size` must be >= 1"):
        PointCloud(x, x, block_size=0)
    with pytest.raises(ValueError, match="`plan` must be one of"):
        PointCloud(x, x, plan="coo")
    with pytest.raises(ValueError, match=r"`a` must have shape \(4,\)"):
        sinkhorn(PointCloud(x, x), np.ones(3) / 3, epsilon=0.1)
    for bad in ("int32", jnp.int32, "cloud", jnp.float16):
        with pytest.raises(ValueError, match="`warmup_dtype` must be None"):
            sinkhorn_newton_sparse(PointCloud(x, x), epsilon=0.1, warmup_dtype=bad)
    with pytest.raises(ValueError, match="`warmup_dtype` must not be more precise"):
        cloud = PointCloud(x.astype(np.float32), x.astype(np.float32))
        sinkhorn_newton_sparse(cloud, epsilon=0.1, warmup_dtype=jnp.float64)


def test_default_block_size_keeps_a_block_in_the_caches():
    """``block_size=None``: about 2^20 entries a block, 8 to 256 rows."""
    x = np.zeros((3, 2))
    for m, rows in ((100, 256), (4096, 256), (20_000, 52), (10**6, 8)):
        cloud = PointCloud(x, np.zeros((m, 2)))
        assert cloud.block_size == rows
        assert cloud.T.block_size == 256  # its columns are the 3 points of x
    assert PointCloud(x, x, block_size=5).T.block_size == 5


@functools.cache
def _sns_cloud_by_warmup_dtype():
    def solve(x, y, a, b, eps, warmup_dtype):
        cloud = PointCloud(x, y, block_size=16)
        return sinkhorn_newton_sparse(
            cloud, a, b, epsilon=eps, tol=TOL, warmup_dtype=warmup_dtype, throw=False
        )

    return jax.jit(solve, static_argnums=5)


def test_cloud_warm_up_in_float32():
    """``warmup_dtype=jnp.float32`` on a float64 cloud (the default from 2048 x
    2048 points on): Newton, in float64, reaches the tolerance and the plan of a
    float64 warm-up. A cloud whose costs overflow float32 (points near 1e20)
    falls back to the float64 warm-up, step for step, also per element under
    vmap."""
    from jaxsolve._solution import RESULTS as codes
    from jaxsolve.solvers.ot._dual import Problem
    from jaxsolve.solvers.ot._sns import _low_dtype

    def default_for(n, m, dtype=np.float64):
        x = jnp.zeros((n, 2), dtype)
        cloud = PointCloud(x, jnp.zeros((m, 2), dtype))
        one = jnp.ones((), dtype)
        problem = Problem(cloud, x[:, 0], x[:2, 0], one, one, codes.successful)
        return _low_dtype(None, problem)

    assert default_for(2048, 2048) == jnp.float32
    assert default_for(2048, 2047) is None  # below 2^22 entries
    assert default_for(2048, 2048, np.float32) is None

    x, y, a, b = (jnp.asarray(v) for v in _config(40, 30, 5))
    solve = _sns_cloud_by_warmup_dtype()
    low = solve(x, y, a, b, 0.01, jnp.float32)
    high = solve(x, y, a, b, 0.01, jnp.float64)
    for sol in (low, high):
        assert bool(sol.succeeded), (sol.result, sol.stats)
        assert float(sol.residual) <= TOL
        assert int(sol.stats["sinkhorn_steps"]) >= 20  # the whole warm-up ran
    # Different warm-ups (float32 rounding), the same solution.
    assert not np.array_equal(low.value[0], high.value[0])
    np.testing.assert_allclose(low.plan, high.plan, rtol=0, atol=1e-12)

    scale = 1e20  # costs near 1e40: beyond float32, not float64
    big = (x * scale, y * scale, a, b, 0.01 * scale**2)
    fallback, reference = solve(*big, jnp.float32), solve(*big, jnp.float64)
    for sol in (fallback, reference):
        assert bool(sol.succeeded), (sol.result, sol.stats)
    for key in ("sinkhorn_steps", "newton_steps"):
        assert int(fallback.stats[key]) == int(reference.stats[key])
    np.testing.assert_allclose(fallback.plan, reference.plan, rtol=1e-12, atol=0)
    np.testing.assert_allclose(fallback.plan, low.plan, rtol=0, atol=1e-9)

    # Under vmap the fallback is per element: a batch of the two clouds gives
    # each its own solve (the float32 warm-up for one, float64 for the other).
    xs, ys = jnp.stack([x, x * scale]), jnp.stack([y, y * scale])
    eps = jnp.asarray([0.01, 0.01 * scale**2])
    batch = jax.jit(
        jax.vmap(
            lambda x, y, eps: sinkhorn_newton_sparse(
                PointCloud(x, y, block_size=16),
                a,
                b,
                epsilon=eps,
                tol=TOL,
                warmup_dtype=jnp.float32,
                throw=False,
            )
        )
    )(xs, ys, eps)
    assert bool(jnp.all(batch.succeeded)), batch.result
    for i, single in enumerate((low, fallback)):
        for key in ("sinkhorn_steps", "newton_steps"):
            assert int(batch.stats[key][i]) == int(single.stats[key]), key
        np.testing.assert_allclose(batch.plan[i], single.plan, rtol=1e-9, atol=1e-15)


# ----------------------------------------------------------------------------
# Slow: more configurations, both solvers, every cost, SNS derivatives, throw.


@pytest.mark.slow
@pytest.mark.parametrize(
    "cost", ["sqeuclidean", "l1", _cost15], ids=["sqeuclidean", "l1", "custom"]
)
@pytest.mark.parametrize("shape", [(23, 11), (11, 23), (16, 16)], ids=str)
def test_online_equals_dense_every_cost(cost, shape):
    n, m = shape
    x, y, a, b = _batch(n, m, seeds=(10, 11, 12, 13), zeros=(False, True, False, True))
    dense, online = _sns_pair(cost, 7, 8, True)(x, y, a, b, 0.02)
    _assert_same(dense, online)

    def pair(x, y, a, b):
        geom = PointCloud(x, y, cost, block_size=7)
        kw = dict(epsilon=0.05, tol=TOL, throw=False)
        return sinkhorn(geom.dense(), a, b, **kw), sinkhorn(geom, a, b, **kw)

    dense, online = jax.jit(jax.vmap(pair))(x, y, a, b)
    _assert_same(dense, online)


@pytest.mark.slow
def test_sns_derivatives_in_the_points():
    """SNS on n < m (transposed inside): grad and jvp of the cost and the plan in
    x and y against central differences, and against the dense-C solve."""
    x, y, a, b = (jnp.asarray(v) for v in _config(7, 10, 21))

    def loss(x, y, geom_fn):
        sol = sinkhorn_newton_sparse(geom_fn(x, y), a, b, epsilon=0.1, tol=TOL, k=4)
        return sol.cost + 10 * jnp.sum(sol.plan**2 * jnp.arange(10.0))

    def online(x, y):
        return loss(x, y, lambda x, y: PointCloud(x, y, block_size=3))

    def dense(x, y):
        return loss(x, y, pairwise_cost)

    gx, gy = jax.jit(jax.grad(online, argnums=(0, 1)))(x, y)
    dx, dy = jax.jit(jax.grad(dense, argnums=(0, 1)))(x, y)
    np.testing.assert_allclose(gx, dx, atol=1e-10)
    np.testing.assert_allclose(gy, dy, atol=1e-10)
    ku, kv = jax.random.split(jax.random.PRNGKey(0))
    u = jax.random.normal(ku, x.shape, jnp.float64)
    v = jax.random.normal(kv, y.shape, jnp.float64)
    tangent = jax.jit(lambda: jax.jvp(online, (x, y), (u, v))[1])()
    h = 1e-6
    f = jax.jit(online)
    fd = (f(x + h * u, y + h * v) - f(x - h * u, y - h * v)) / (2 * h)
    np.testing.assert_allclose(tangent, fd, rtol=2e-6)
    np.testing.assert_allclose(jnp.vdot(gx, u) + jnp.vdot(gy, v), fd, rtol=2e-6)


@pytest.mark.slow
def test_throw_and_no_recompilation():
    x, y, a, b = (jnp.asarray(v) for v in _config(8, 5, 30))
    solve = jax.jit(
        lambda x, y: sinkhorn_newton_sparse(PointCloud(x, y), a, b, epsilon=0.1)
    )
    first = solve(x, y)
    size = solve._cache_size()
    solve(x + 0.1, y)
    assert solve._cache_size() == size
    assert bool(first.succeeded)
    message = "sinkhorn_newton_sparse: an input contains NaN"
    with pytest.raises(Exception, match=message):
        jax.block_until_ready(solve(x.at[0, 0].set(jnp.nan), y).cost)


@pytest.mark.slow
def test_sparse_plan_of_a_larger_cloud():
    """plan="auto" is sparse above 2**22 entries; here asked for: the top
    plan_k entries per row, a plan whose rows hold most of their mass."""
    x, y, a, b = (jnp.asarray(v) for v in _config(300, 200, 40))
    geom = PointCloud(x, y, plan="sparse", plan_k=20, block_size=64)
    sol = jax.jit(lambda g: sinkhorn_newton_sparse(g, a, b, epsilon=1e-3))(geom)
    assert bool(sol.succeeded)
    assert sol.plan.indices.shape == (300, 20)
    dense = sinkhorn_newton_sparse(geom.dense(), a, b, epsilon=1e-3).plan
    top = jnp.take_along_axis(dense, sol.plan.indices, axis=1)
    np.testing.assert_allclose(sol.plan.values, top, atol=1e-12)
    assert float(sol.plan.values.sum()) > 0.99
