"""DCDM: the obstacle problems, the network, its training and files, the solver."""

import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse.linalg as spla

import jaxsolve
from jaxsolve import RESULTS
from jaxsolve.problems import (
    obstacle_layout,
    obstacle_rhs,
    poisson_obstacles,
)
from jaxsolve.problems.obstacles import fill_enclosed
from jaxsolve.solvers.linear._dcdm import _io, _train
from jaxsolve.solvers.linear._dcdm._io import default_model, load_model, save_model
from jaxsolve.solvers.linear._dcdm._solver import resolve_model

# ---------------------------------------------------------------- problems


@pytest.mark.parametrize("boundary", ["dirichlet", "neumann"])
@pytest.mark.parametrize(
    "dim,n,kind", [(2, 16, "discs"), (2, 12, "blobs"), (3, 8, "boxes")]
)
def test_operator_matches_scipy_and_is_symmetric(boundary, dim, n, kind):
    solid = obstacle_layout(n, kind, dim=dim, seed=3)
    a = poisson_obstacles(solid, boundary=boundary)
    m = a.to_scipy()
    v = np.random.default_rng(0).normal(size=solid.shape)
    np.testing.assert_allclose(
        m @ v.ravel(), np.asarray(a(jnp.asarray(v))).ravel(), atol=1e-12
    )
    assert abs(m - m.T).max() == 0
    np.testing.assert_allclose(m.diagonal(), np.asarray(a.diagonal()).ravel())
    # solid cells are identity rows, decoupled from the fluid
    rows = np.flatnonzero(solid.ravel())
    dense = m.toarray()
    np.testing.assert_array_equal(dense[rows][:, rows], np.eye(rows.size))
    fluid_rows = np.flatnonzero(~solid.ravel())
    assert not dense[np.ix_(rows, fluid_rows)].any()
    eig = np.linalg.eigvalsh(dense)
    if boundary == "dirichlet":
        assert eig[0] > 1e-6  # SPD: every fluid cell reaches the open boundary
    else:
        # one constant null vector on the (single, pockets filled) fluid region
        assert abs(eig[0]) < 1e-10 and eig[1] > 1e-6
        ones = (~solid).astype(float)
        np.testing.assert_allclose(np.asarray(a(jnp.asarray(ones))), 0, atol=1e-12)


def test_stencil_closed_form():
    # no obstacle, Dirichlet: the integer 5-point Laplacian, eigenvalues known
    n = 6
    a = poisson_obstacles(np.zeros((n, n), bool))
    eig = np.sort(np.linalg.eigvalsh(a.to_scipy().toarray()))
    c = 2 - 2 * np.cos(np.arange(1, n + 1) * np.pi / (n + 1))
    np.testing.assert_allclose(eig, np.sort((c[:, None] + c[None, :]).ravel()))


def test_rhs_is_a_divergence():
    solid = obstacle_layout(24, "discs", seed=5)
    for boundary in ("dirichlet", "neumann"):
        b = np.asarray(obstacle_rhs(solid, seed=1, boundary=boundary))
        assert np.all(b[solid] == 0)
        assert abs(np.linalg.norm(b) - 1) < 1e-12
        np.testing.assert_array_equal(b, obstacle_rhs(solid, seed=1, boundary=boundary))
    # closed walls: no net source, so the singular Neumann system is consistent
    b = obstacle_rhs(solid, seed=1, boundary="neumann")
    assert abs(float(jnp.sum(b))) < 1e-12


@pytest.mark.slow
def test_neumann_null_space_handled():
    """All-Neumann: A is singular (constants), b = G^T u is in its range, CG and
    DCDM converge to a solution; it is unique up to a constant, fixed by
    `project` (zero fluid mean), and matches scipy's minimum-norm solution."""
    solid = obstacle_layout(16, "discs", seed=2)
    a = poisson_obstacles(solid, boundary="neumann")
    b = obstacle_rhs(solid, seed=4, boundary="neumann")
    ref = spla.lsqr(a.to_scipy(), np.asarray(b).ravel(), atol=1e-14, btol=1e-14)[0]
    ref = np.asarray(a.project(jnp.asarray(ref.reshape(solid.shape))))
    for solve in (jaxsolve.cg, jaxsolve.dcdm):
        sol = solve(a, b, rtol=1e-10)
        assert sol.succeeded
        np.testing.assert_allclose(a.project(sol.value), ref, atol=1e-7)


def test_layouts_seeded_and_filled():
    for kind in ("discs", "boxes", "blobs"):
        s = obstacle_layout(20, kind, seed=1)
        np.testing.assert_array_equal(s, obstacle_layout(20, kind, seed=1))
        assert 0.02 < s.mean() < 0.6
        np.testing.assert_array_equal(fill_enclosed(s), s)
    assert not obstacle_layout(10, "none").any()
    # a ring encloses a pocket: it is filled
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7] = True
    ring[3:6, 3:6] = False
    np.testing.assert_array_equal(fill_enclosed(ring)[3:6, 3:6], True)


def test_problem_bad_input():
    with pytest.raises(ValueError, match="boolean"):
        poisson_obstacles(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="square"):
        poisson_obstacles(np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="boundary"):
        poisson_obstacles(np.zeros((4, 4), bool), boundary="periodic")
    with pytest.raises(ValueError, match="kind"):
        obstacle_layout(8, "stars")
    a = poisson_obstacles(np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="shape"):
        a(jnp.zeros((5, 5)))


# ---------------------------------------------------------------- network


@pytest.fixture(scope="module")
def tiny_net():
    return jaxsolve.DCDMNet(2, 4, 2, key=jax.random.key(0))


@pytest.mark.parametrize("shape", [(2, 2), (13, 17)])
def test_network_any_size(tiny_net, shape):
    r = jax.random.normal(jax.random.key(1), shape)
    q = tiny_net(r)
    assert q.shape == shape and q.dtype == r.dtype
    assert bool(jnp.all(jnp.isfinite(q)))
    # no bias: positively homogeneous, so the residual's scale does not matter
    np.testing.assert_allclose(tiny_net(3.0 * r), 3.0 * q, rtol=1e-10, atol=1e-12)
    assert tiny_net.levels(shape) == max(0, int(np.ceil(np.log2(max(shape) / 2))))


@pytest.mark.slow
def test_network_3d_and_dtypes():
    net = jaxsolve.DCDMNet(3, 4, 2, key=jax.random.key(0))
    r = jax.random.normal(jax.random.key(1), (6, 7, 5), jnp.float32)
    q = net(r)
    assert q.shape == r.shape and q.dtype == jnp.float32
    q64 = net(r.astype(jnp.float64))
    assert q64.dtype == jnp.float64
    np.testing.assert_allclose(q64, q, rtol=1e-4, atol=1e-6)


def test_network_refuses_grids(tiny_net):
    with pytest.raises(ValueError, match="2-D grid"):
        tiny_net(jnp.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match="at least 2 cells"):
        tiny_net(jnp.zeros((1, 8)))
    with pytest.raises(ValueError, match="dim"):
        jaxsolve.DCDMNet(4, key=jax.random.key(0))


# ---------------------------------------------------------------- files


def test_save_load_roundtrip_and_mismatch(tmp_path, tiny_net):
    path = tmp_path / "m.eqx"
    save_model(path, tiny_net, note="test")
    loaded = load_model(path)
    r = jax.random.normal(jax.random.key(2), (8, 8))
    np.testing.assert_array_equal(loaded(r), tiny_net(r))
    # a header that does not describe the weights
    raw = path.read_bytes()
    header, body = raw.split(b"\n", 1)
    (tmp_path / "wrong.eqx").write_bytes(
        header.replace(b'"width": 4', b'"width": 8') + b"\n" + body
    )
    with pytest.raises(ValueError, match="do not match"):
        load_model(tmp_path / "wrong.eqx")
    (tmp_path / "cut.eqx").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="do not match"):
        load_model(tmp_path / "cut.eqx")
    (tmp_path / "junk.eqx").write_bytes(b"\x00\x01junk")
    with pytest.raises(ValueError, match="not a jaxsolve DCDM weights file"):
        load_model(tmp_path / "junk.eqx")
    other = jaxsolve.DCDMNet(2, 8, 2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="does not match the expected model"):
        load_model(path, like=other)
    # the solver reports a bad file clearly, naming it
    a = poisson_obstacles(np.zeros((8, 8), bool))
    with pytest.raises(ValueError, match="wrong.eqx"):
        jaxsolve.dcdm(a, jnp.ones((8, 8)), model=tmp_path / "wrong.eqx")


def test_shipped_weights_load():
    model = default_model(2)
    assert isinstance(model, jaxsolve.DCDMNet) and model.dim == 2
    assert (_io.WEIGHTS_DIR / "dcdm_2d.eqx").stat().st_size < 5e6
    assert default_model(2) is model  # loaded once


def test_shipped_3d_weights_picked_by_grid_dimension():
    model = default_model(3)
    assert isinstance(model, jaxsolve.DCDMNet) and model.dim == 3
    assert (_io.WEIGHTS_DIR / "dcdm_3d.eqx").stat().st_size < 5e6
    # model=None: the grid's number of axes picks the shipped model
    assert resolve_model(None, (6, 5, 7)) is model
    assert resolve_model(None, (6, 5)) is default_model(2)


@pytest.mark.parametrize(
    "n,kind,seed,dtype,rtol,ratio",
    [
        (8, "blobs", 21, jnp.float32, 1e-5, 0.6),
        pytest.param(16, "blobs", 7, jnp.float64, 1e-6, 0.35, marks=pytest.mark.slow),
    ],
)
def test_shipped_3d_model_beats_cg(n, kind, seed, dtype, rtol, ratio):
    # Obstacle layouts never seen in training (the model saw only the
    # obstacle-free Laplacian at 16^3, then 32^3); measured 14 DCDM / 28 CG
    # iterations at 8^3, 18 / 65 at 16^3. The default case is small and float32:
    # under the test run's XLA optimisation level 0 a 3-D convolution inside the
    # solver's loop is slow (about 0.75 s a call at 12^3 against 0.04 s at the
    # default level).
    solid = obstacle_layout(n, kind, dim=3, seed=seed)
    a = poisson_obstacles(solid, dtype=dtype)
    b = obstacle_rhs(solid, seed=seed + 1, dtype=dtype)
    sol = jaxsolve.dcdm(a, b, rtol=rtol)  # model=None: the shipped 3-D model
    assert sol.succeeded and sol.value.shape == solid.shape
    assert sol.value.dtype == dtype
    assert float(jnp.linalg.norm(a(sol.value) - b)) <= 1.01 * rtol
    # CG's count from scipy (float64; no compilation, which dominates here)
    cg_steps = []
    _, info = spla.cg(
        a.to_scipy(),
        np.asarray(b, np.float64).ravel(),
        rtol=rtol,
        callback=lambda _: cg_steps.append(1),
    )
    assert info == 0
    assert int(sol.num_steps) < ratio * len(cg_steps), (
        int(sol.num_steps),
        len(cg_steps),
    )


# ---------------------------------------------------------------- training

_TINY = dict(batch=2, width=4, coarsest=2, ritz=12, progress=False)


def test_lanczos_ritz_values():
    n = 5
    a = poisson_obstacles(np.zeros((n, n), bool))
    mv = lambda v: np.asarray(a(jnp.asarray(v.reshape(n, n)))).ravel()  # noqa: E731
    theta, y = _train.lanczos_ritz(mv, n * n, n * n, seed=0)
    exact = np.linalg.eigvalsh(a.to_scipy().toarray())
    # a Krylov space holds one vector per *distinct* eigenvalue (the square's
    # Laplacian has repeated ones): Lanczos stops on the invariant subspace
    distinct = exact[np.r_[True, np.diff(exact) > 1e-9]]
    np.testing.assert_allclose(theta, distinct, atol=1e-8)
    np.testing.assert_allclose(y.T @ y, np.eye(y.shape[1]), atol=1e-8)
    b = _train.training_vectors(jnp.asarray(y), jax.random.key(0), 3)
    np.testing.assert_allclose(jnp.linalg.norm(b, axis=1), 1, rtol=1e-6)
    # white-noise rows (--noise): unit vectors too, the rest from the Ritz span
    y = jnp.asarray(y[:, :10])
    b = _train.training_vectors(y, jax.random.key(0), 5, noise=2)
    np.testing.assert_allclose(jnp.linalg.norm(b, axis=1), 1, rtol=1e-6)
    outside = jnp.linalg.norm(b - (b @ y) @ y.T, axis=1)
    np.testing.assert_allclose(outside[:3], 0, atol=1e-6)
    assert bool(jnp.all(outside[3:] > 0.3))


@pytest.mark.slow  # trains for a few steps in a subprocess (~16 s)
def test_training_cli_and_resume(tmp_path):
    # the command line, in a tiny configuration
    out = tmp_path / "cli.eqx"
    model = _train.main(
        ["--grid", "6", "--steps", "3", "--batch", "2", "--width", "4",
         "--coarsest", "2", "--ritz", "10", "--out", str(out), "--no-progress"]
    )  # fmt: skip
    loaded = load_model(out)
    r = jnp.ones((6, 6))
    np.testing.assert_array_equal(loaded(r), model(r))
    assert pathlib.Path(str(out) + ".ckpt").exists()
    # an uninterrupted run, and the same run split in two through a checkpoint
    full, losses = _train.train(2, 6, steps=4, **_TINY)
    ckpt = tmp_path / "run.ckpt"
    _, first = _train.train(2, 6, steps=4, checkpoint=ckpt, max_new_steps=2, **_TINY)
    resumed, rest = _train.train(2, 6, steps=4, checkpoint=ckpt, **_TINY)
    assert len(first) == 2 and len(rest) == 2
    np.testing.assert_allclose(first + rest, losses, rtol=1e-5)
    leaves = [jax.tree.leaves(eqx.filter(m, eqx.is_array)) for m in (full, resumed)]
    for x, y in zip(*leaves, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    # a finished checkpoint: nothing left to run
    _, none = _train.train(2, 6, steps=4, checkpoint=ckpt, **_TINY)
    assert none == []
    # a checkpoint of another configuration is refused, not silently reused
    with pytest.raises(ValueError, match="was written for"):
        _train.train(2, 6, steps=5, checkpoint=ckpt, **_TINY)
    assert np.isfinite(losses).all()


# ---------------------------------------------------------------- solver

_N = 20


@pytest.fixture(scope="module")
def problem():
    solid = obstacle_layout(_N, "discs", seed=11)
    b = obstacle_rhs(solid, seed=5)
    return solid, b


def _op(solid, k=1.0, dtype=jnp.float64):
    return poisson_obstacles(solid, coefficient=k, dtype=dtype)


@jax.jit
def _solve_k(k, b):
    # the operator's coefficient k is an array: derivatives flow to it
    solid = _SOLID
    return jaxsolve.dcdm(_op(solid, k), b, rtol=1e-11)


_SOLID = obstacle_layout(_N, "discs", seed=11)


def test_solves_like_scipy_and_counts(problem):
    solid, b = problem
    a = _op(solid)
    sol = jaxsolve.dcdm(a, b, rtol=1e-10)
    assert sol.succeeded
    ref = spla.spsolve(a.to_scipy().tocsc(), np.asarray(b).ravel())
    np.testing.assert_allclose(sol.value.ravel(), ref, atol=1e-8)
    assert float(sol.residual) <= 1e-10 * float(jnp.linalg.norm(b))
    assert np.all(np.asarray(sol.value)[solid] == 0)  # decoupled solids stay zero
    steps = int(sol.num_steps)
    assert int(sol.stats["network_calls"]) == steps
    # one product a step, one every 20th step (true residual), the final true
    # residual, and the operator checks of the Krylov core (3)
    assert int(sol.stats["matvecs"]) >= steps + steps // 20 + 1
    cg = jaxsolve.cg(a, b, rtol=1e-10)
    assert steps < int(cg.num_steps) / 2, (steps, int(cg.num_steps))


def _steps(a, b, model, depth, max_steps=3000):
    sol = jaxsolve.dcdm(
        a, b, model=model, rtol=1e-10, orthogonalize=depth, max_steps=max_steps,
        throw=False,
    )  # fmt: skip
    return int(sol.num_steps), bool(sol.succeeded)


def test_orthogonalize_identity_is_cg(problem):
    """``orthogonalize`` = how many previous directions a new one is
    A-orthogonalised against. With a linear symmetric "network" (the identity)
    one is CG exactly, and more change nothing (the directions are already
    A-orthogonal); none is steepest descent."""
    solid, b = problem
    a = _op(solid)
    cg = int(jaxsolve.cg(a, b, rtol=1e-10).num_steps)
    identity = lambda r: r  # noqa: E731
    assert _steps(a, b, identity, 1) == _steps(a, b, identity, 8) == (cg, True)
    assert _steps(a, b, identity, 0, max_steps=5 * cg) == (5 * cg, False)
    with pytest.raises(ValueError, match="orthogonalize"):
        jaxsolve.dcdm(a, b, orthogonalize=-1)


@pytest.mark.slow
def test_orthogonalize_depth_with_network(problem):
    # the shipped network is not a linear operator: directions older than the
    # window lose A-orthogonality, and a deeper window takes fewer steps
    solid, b = problem
    a = _op(solid)
    counts = [_steps(a, b, None, depth) for depth in (0, 2, 16)]
    assert counts == [(23, True), (18, True), (17, True)], counts


@pytest.mark.slow
def test_float32_and_default_model(problem):
    solid, b = problem
    sol = jaxsolve.dcdm(_op(solid, dtype=jnp.float32), b.astype(jnp.float32), rtol=1e-5)
    assert sol.succeeded and sol.value.dtype == jnp.float32
    ref = jaxsolve.dcdm(_op(solid), b, rtol=1e-10).value
    np.testing.assert_allclose(sol.value, ref, atol=1e-4)


def test_jit_no_recompile_and_vmap(problem):
    solid, b = problem
    traces = []

    @jax.jit
    def solve(rhs):
        traces.append(1)
        return jaxsolve.dcdm(_op(solid), rhs, rtol=1e-10, throw=False)

    bs = jnp.stack([b, jnp.roll(b, 3, axis=0) * 0.5, obstacle_rhs(solid, seed=9)])
    bs = bs * jnp.asarray(~solid, bs.dtype)
    one = [solve(x) for x in bs]
    assert len(traces) == 1  # no recompilation on the second call
    batch = jax.vmap(solve)(bs)
    for i, s in enumerate(one):
        assert s.succeeded
        np.testing.assert_allclose(batch.value[i], s.value, atol=1e-9)
    assert bool(jnp.all(batch.succeeded))


@pytest.mark.slow
def test_initial_guess(problem):
    solid, b = problem
    a = _op(solid)
    x = jaxsolve.dcdm(a, b, rtol=1e-10).value
    warm = jaxsolve.dcdm(a, b, rtol=1e-8, x0=x)
    assert warm.succeeded and int(warm.num_steps) == 0


def test_gradients_equal_cg(problem):
    """d/d(source) and d/d(coefficient) of a loss of the Poisson solution, with DCDM
    forward and backward (custom_linear_solve), equal CG's."""
    solid, b = problem
    w = jnp.asarray(np.random.default_rng(1).normal(size=solid.shape))

    def loss(k, b, method):
        a = _op(solid, k)
        x = method(a, b, rtol=1e-11).value
        return jnp.sum(w * x) + 0.5 * jnp.sum(x**2)

    k = jnp.asarray(1.3)
    g_dcdm = jax.grad(loss, argnums=(0, 1))(k, b, jaxsolve.dcdm)
    g_cg = jax.grad(loss, argnums=(0, 1))(k, b, jaxsolve.cg)
    np.testing.assert_allclose(g_dcdm[0], g_cg[0], rtol=1e-7)
    np.testing.assert_allclose(g_dcdm[1], g_cg[1], rtol=1e-7, atol=1e-10)


@pytest.mark.slow
def test_derivatives_match_finite_differences(problem):
    # (the registry case dcdm/obstacles checks jvp and vjp in every input too)
    solid, b = problem
    k, eps = jnp.asarray(1.3), 1e-5
    _, t = jax.jvp(lambda k: _solve_k(k, b).value, (k,), (jnp.asarray(1.0),))
    fd_x = (_solve_k(k + eps, b).value - _solve_k(k - eps, b).value) / (2 * eps)
    np.testing.assert_allclose(t, fd_x, atol=1e-6)


def test_linear_solve_and_custom_root(problem):
    solid, b = problem
    a = _op(solid)
    x_cg = jaxsolve.cg(a, b, rtol=1e-11).value
    x = jaxsolve.linear_solve(a, b, method="dcdm", rtol=1e-11).value
    np.testing.assert_allclose(x, x_cg, atol=1e-9)

    # F(x, s, k) = A(k) x - s: a root-finding problem whose dF/dx is the grid
    # operator; its derivative solves run DCDM on raveled vectors
    def optimality(x, s, k):
        return _op(solid, k)(x) - s

    def make(solve, options):
        @jaxsolve.custom_root(optimality, solve=solve, solve_options=options)
        def solver(init, s, k):
            return jaxsolve.cg(_op(solid, k), s, rtol=1e-12).value

        return solver

    dcdm_root = make("dcdm", {"grid_shape": solid.shape})
    cg_root = make("cg", None)
    w = jnp.asarray(np.random.default_rng(2).normal(size=solid.shape))

    def loss(solver, s, k):
        return jnp.sum(w * solver(None, s, k) ** 2)

    k = jnp.asarray(0.8)
    # jitted: one compilation each instead of many eager ones (test time)
    g1 = jax.jit(jax.grad(lambda s, k: loss(dcdm_root, s, k), argnums=(0, 1)))(b, k)
    g2 = jax.jit(jax.grad(lambda s, k: loss(cg_root, s, k), argnums=(0, 1)))(b, k)
    np.testing.assert_allclose(g1[0], g2[0], rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(g1[1], g2[1], rtol=1e-6)


def test_bad_input(problem, tiny_net):
    solid, b = problem
    a = _op(solid)
    with pytest.raises(ValueError, match="grid-shaped"):
        jaxsolve.dcdm(lambda x: 2 * x, jnp.ones(16))
    with pytest.raises(ValueError, match="2-D grid"):
        jaxsolve.dcdm(lambda x: 2 * x, jnp.ones((4, 4, 4)), model=tiny_net)
    with pytest.raises(ValueError, match="mask"):
        jaxsolve.dcdm(a, b, mask=jnp.ones((3, 3)))
    with pytest.raises(ValueError, match="same shape"):
        jaxsolve.dcdm(a, b, model=lambda r: r[:-1])
    with pytest.raises(ValueError, match="grid_shape"):
        jaxsolve.dcdm(lambda x: x, jnp.ones(10), grid_shape=(3, 3))
    # NaN in b: a code, or a runtime error with throw=True
    bad = b.at[3, 4].set(jnp.nan)
    sol = jaxsolve.dcdm(a, bad, throw=False)
    assert sol.result == RESULTS.nonfinite_input
    with pytest.raises(Exception, match="dcdm"):
        jax.block_until_ready(jaxsolve.dcdm(a, bad).value)
    # not positive definite (negative conductance): a code within max_steps
    sol = jaxsolve.dcdm(_op(solid, -1.0), b, throw=False, max_steps=50)
    assert sol.result == RESULTS.not_positive_definite
    assert int(sol.num_steps) <= 50 and bool(jnp.all(jnp.isfinite(sol.value)))
    # singular and inconsistent (all-Neumann, b with a net source): never converges;
    # a code within max_steps, finite values
    an = poisson_obstacles(solid, boundary="neumann")
    sol = jaxsolve.dcdm(an, jnp.asarray(~solid, float), throw=False, max_steps=60)
    assert not bool(sol.succeeded) and int(sol.num_steps) <= 60
    assert bool(jnp.all(jnp.isfinite(sol.value)))
    # not symmetric: refused by the Krylov core's probe
    skew = lambda x: a(x) + 0.5 * (jnp.roll(x, 1, 0) - jnp.roll(x, -1, 0))  # noqa: E731
    sol = jaxsolve.dcdm(skew, b, throw=False, max_steps=50)
    assert sol.result == RESULTS.not_symmetric


@pytest.mark.slow
def test_training_init_fine_tunes(tmp_path):
    # --init: start from a saved model (another grid size), not a random one
    start, _ = _train.train(2, 6, steps=2, **_TINY)
    path = tmp_path / "start.eqx"
    save_model(path, start)
    # a zero learning rate leaves the starting model as it was
    same, _ = _train.train(2, 8, steps=1, lr=0.0, init=path, **_TINY)
    for x, y in zip(
        jax.tree.leaves(eqx.filter(start, eqx.is_array)),
        jax.tree.leaves(eqx.filter(same, eqx.is_array)),
        strict=True,
    ):
        np.testing.assert_array_equal(x, y)
    # the checkpoint records the starting file: a run from scratch cannot resume it
    ckpt = tmp_path / "ft.ckpt"
    _, losses = _train.train(2, 8, steps=2, init=path, checkpoint=ckpt, **_TINY)
    assert np.isfinite(losses).all()
    with pytest.raises(ValueError, match="was written for"):
        _train.train(2, 8, steps=2, checkpoint=ckpt, **_TINY)
    # a starting model of another configuration is refused
    with pytest.raises(ValueError, match="does not match"):
        _train.train(2, 8, steps=1, init=path, **{**_TINY, "width": 3})


@pytest.mark.slow
def test_training_3d_tiny():
    model, losses = _train.train(3, 4, steps=2, **_TINY)
    assert model.dim == 3 and len(losses) == 2 and np.isfinite(losses).all()
    q = model(jnp.ones((5, 4, 6)))
    assert q.shape == (5, 4, 6)
