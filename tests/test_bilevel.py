"""Tests of jaxsolve.bilevel: AID's hypergradient against closed forms (grad and
jvp, through custom_root too), LV-HBA on the toy with a known solution, AID, BO-REP
and ITD on the tasks, recycled backward solves, jit/vmap/pytrees and bad inputs."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import jaxsolve
from jaxsolve import RESULTS, bilevel
from jaxsolve.problems.bilevel import (
    hyper_cleaning,
    logistic_l2_tuning,
    lv_hba_toy,
)
from jaxsolve.solvers.linear import deflated_cg

# --- a quadratic bilevel problem with a closed-form hypergradient -----------------
# x = {"a": (2,), "b": (3,)}, y = (y1 (4,), y2 (3,)): pytrees on both levels.
#   f(x, y) = 0.5 y^T A y - y^T (B xf),  y*(x) = A^{-1} B xf
#   F(x, y) = 0.5 ||C y - d||^2 + 0.5 r ||xf||^2
# dF/dxf = B^T A^{-1} C^T (C y* - d) + r xf.

_rng = np.random.default_rng(0)
_M = _rng.normal(size=(7, 7))
_A = jnp.asarray(_M @ _M.T + 7 * np.eye(7))
_B = jnp.asarray(_rng.normal(size=(7, 5)))
_C = jnp.asarray(_rng.normal(size=(6, 7)))
_d = jnp.asarray(_rng.normal(size=6))
_r = 0.3


def _xf(x):
    return jnp.concatenate([x["a"], x["b"]])


def _yf(y):
    return jnp.concatenate([y[0], y[1]])


def _lower_q(x, y, scale):
    yf = _yf(y)
    return 0.5 * yf @ (scale * _A) @ yf - yf @ (_B @ _xf(x))


def _upper_q(x, y, scale):
    del scale
    return 0.5 * jnp.sum((_C @ _yf(y) - _d) ** 2) + 0.5 * _r * jnp.sum(_xf(x) ** 2)


def _ystar(x, scale=1.0):
    yf = jnp.linalg.solve(scale * _A, _B @ _xf(x))
    return (yf[:4], yf[4:])


def _closed_form(x, scale=1.0):
    xf = _xf(x)
    yf = jnp.linalg.solve(scale * _A, _B @ xf)
    g = _B.T @ jnp.linalg.solve(scale * _A, _C.T @ (_C @ yf - _d)) + _r * xf
    return {"a": g[:2], "b": g[2:]}


_X = {"a": jnp.asarray([0.5, -1.0]), "b": jnp.asarray([0.2, 0.3, -0.7])}


def _rel(a, b):
    a, b = ravel_pytree(a)[0], ravel_pytree(b)[0]
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _exact_inner(x, y, scale):
    del y
    return _ystar(x, scale)


def test_aid_hypergradient_closed_form():
    g, info = jax.jit(
        lambda x: bilevel.hypergradient(_upper_q, _lower_q, x, _ystar(x), 1.0)
    )(_X)
    assert _rel(g, _closed_form(_X)) < 1e-9
    assert info["result"] == RESULTS.successful
    assert int(info["matvecs"]) >= int(info["steps"])


def test_implicit_lower_grad_and_jvp_closed_form():
    y_star = bilevel.implicit_lower(_lower_q, _exact_inner)
    y0 = (jnp.zeros(4), jnp.zeros(3))

    def outer(x):
        return _upper_q(x, y_star(x, y0, 1.0), 1.0)

    g = jax.jit(jax.grad(outer))(_X)
    assert _rel(g, _closed_form(_X)) < 1e-9
    # forward mode: jvp along a direction equals <closed form, direction>
    t = {"a": jnp.asarray([1.0, 2.0]), "b": jnp.asarray([-1.0, 0.5, 0.25])}
    _, dot = jax.jit(lambda x, t: jax.jvp(outer, (x,), (t,)))(_X, t)
    expect = sum(
        jnp.vdot(a, b)
        for a, b in zip(
            jax.tree.leaves(_closed_form(_X)), jax.tree.leaves(t), strict=True
        )
    )
    assert abs(float(dot - expect)) < 1e-9 * abs(float(expect))
    # the adjoint (AID) path and the custom_root path agree
    g2, _ = jax.jit(
        lambda x: bilevel.hypergradient(_upper_q, _lower_q, x, _ystar(x), 1.0)
    )(_X)
    assert _rel(g2, g) < 1e-9


def test_hypergradient_in_data_by_finite_differences():
    # d/dscale of the hypergradient-free value F(x, y*(x, scale)) through custom_root
    y_star = bilevel.implicit_lower(_lower_q, _exact_inner)
    y0 = (jnp.zeros(4), jnp.zeros(3))

    def value(s):
        return _upper_q(_X, y_star(_X, y0, s), s)

    g = jax.grad(value)(1.0)
    h = 1e-6
    fd = (_upper_q(_X, _ystar(_X, 1 + h), 0) - _upper_q(_X, _ystar(_X, 1 - h), 0)) / (
        2 * h
    )
    assert abs(float(g - fd)) < 1e-6 * abs(float(fd))


def test_aid_descends_quadratic_and_no_recompile():
    method = bilevel.aid(
        _upper_q, _lower_q, learning_rate=0.05, inner_lr=0.05, inner_steps=20
    )
    y0 = (jnp.zeros(4), jnp.zeros(3))
    init = jax.jit(method.init)
    step = jax.jit(method.step)
    state = init(_X, y0, 1.0)
    before = float(_upper_q(_X, _ystar(_X), 1.0))
    for _ in range(30):
        state = step(state, 1.0)
    after = float(_upper_q(state.x, _ystar(state.x), 1.0))
    assert after < before
    assert step._cache_size() == 1
    # a second problem of the same shapes: no recompilation
    state = init(jax.tree.map(lambda a: a + 1, _X), y0, 2.0)
    state = step(state, 2.0)
    assert step._cache_size() == 1 and init._cache_size() == 1


# --- LV-HBA on the toy --------------------------------------------------------------

_TOY = lv_hba_toy()
_TOY_SETTINGS = dict(
    alpha=0.008, eta=0.012, gamma1=1.0, gamma2=1.0, c0=4.0, c_power=0.49
)


def _toy_method(**kw):
    return bilevel.lv_hba(
        _TOY.upper,
        _TOY.lower,
        constraint=_TOY.constraint,
        project=_TOY.project,
        equality=True,
        **{**_TOY_SETTINGS, **kw},
    )


def test_lv_hba_reaches_toy_solution():
    method = _toy_method()
    sol = bilevel.run(
        method, _TOY.x0, _TOY.y0, steps=150_000, progress=False, chunk=10_000
    )
    x, y = sol.value
    err = float(_TOY.extra["relative_error"](x, y))
    assert err <= 1e-3, err
    assert sol.succeeded and int(sol.num_steps) == 150_000
    assert sol.stats["upper"].shape == (150_000,)
    # on the coupling hyperplane
    assert abs(float(_TOY.constraint(x, y)[0])) < 1e-8


def test_lv_hba_infeasible_start():
    # without a projection, an infeasible start is a clear runtime error...
    bad = bilevel.lv_hba(
        _TOY.upper, _TOY.lower, constraint=_TOY.constraint, equality=True
    )
    with pytest.raises(Exception, match="infeasible"):
        jax.block_until_ready(jax.jit(bad.init)(_TOY.x0, _TOY.y0))
    # ...unless allowed
    ok = bilevel.lv_hba(
        _TOY.upper,
        _TOY.lower,
        constraint=_TOY.constraint,
        equality=True,
        infeasible_start="allow",
    )
    jax.jit(ok.init)(_TOY.x0, _TOY.y0)


# --- bad inputs ---------------------------------------------------------------------


def test_structure_mismatch_is_a_clear_error():
    method = _toy_method()
    with pytest.raises(ValueError, match="y of shapes"):
        method.init(_TOY.x0, _TOY.y0[0])  # y must be a pair
    with pytest.raises(ValueError, match="`lower`"):
        method.init(_TOY.x0, (jnp.zeros(3), jnp.zeros(100)))
    with pytest.raises(ValueError, match="floating"):
        method.init(jnp.zeros(100, jnp.int32), _TOY.y0)
    aid = bilevel.aid(_upper_q, _lower_q, learning_rate=0.1, inner_lr=0.1)
    with pytest.raises(ValueError, match="must return a scalar"):
        bilevel.aid(
            lambda x, y, s: _yf(y), _lower_q, learning_rate=0.1, inner_lr=0.1
        ).init(_X, (jnp.zeros(4), jnp.zeros(3)), 1.0)
    with pytest.raises(ValueError, match="x0"):
        aid.init({"a": jnp.zeros(2)}, (jnp.zeros(4), jnp.zeros(3)), 1.0)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="inner_lr"):
        bilevel.aid(_upper_q, _lower_q, learning_rate=0.1)
    with pytest.raises(ValueError, match="learning_rate"):
        bilevel.aid(_upper_q, _lower_q, learning_rate=-1.0, inner_lr=0.1)
    with pytest.raises(ValueError, match="alpha"):
        bilevel.lv_hba(_upper_q, _lower_q, alpha=0.0)
    for bad, name in [
        (dict(recycle_refresh=0), "recycle_refresh"),
        (dict(recycle_spectral=-1), "recycle_spectral"),
        (dict(recycle_dim=0, recycle_solutions=0, recycle_spectral=0), "recycle"),
    ]:
        with pytest.raises(ValueError, match=name):
            bilevel.aid(
                _upper_q, _lower_q, learning_rate=0.1, inner_lr=0.1, recycle=True, **bad
            )
    with pytest.raises(ValueError, match="momentum"):
        bilevel.bo_rep(
            _upper_q, _lower_q, learning_rate=0.1, inner_lr=0.1, momentum=1.0
        )
    with pytest.raises(ValueError, match="steps"):
        bilevel.run(_toy_method(), _TOY.x0, _TOY.y0, steps=0)
    with pytest.raises(ValueError, match="method"):
        bilevel.run(object(), _TOY.x0, _TOY.y0, steps=1)


def test_nonfinite_objective_keeps_last_finite_iterate():
    # the upper objective overflows to inf once x grows past ~ 700 (exp)
    def upper(x, y):
        return jnp.sum(jnp.exp(x)) + jnp.sum(y**2)

    def lower(x, y):
        return 0.5 * jnp.sum((y - x) ** 2)

    # ascent on x (a negative learning rate): exp(x) overflows after a few steps
    method = bilevel.aid(upper, lower, optimizer=optax.sgd(-1.0), inner_lr=0.5)
    sol = bilevel.run(
        method,
        jnp.zeros(2),
        jnp.zeros(2),
        steps=50,
        progress=False,
        throw=False,
        chunk=4,
    )
    assert sol.result == RESULTS.nonfinite_value
    x, y = sol.value
    n = int(sol.num_steps)
    assert 0 < n < 50 and sol.stats["upper"].shape == (n,)
    assert np.isfinite(float(upper(x, y))) and np.all(np.isfinite(sol.stats["upper"]))
    # the kept iterate is the one after the last finite step
    assert float(upper(x, y)) == pytest.approx(float(sol.stats["upper"][-1]))
    with pytest.raises(Exception, match="NaN or Inf"):
        bilevel.run(
            method, jnp.zeros(2), jnp.zeros(2), steps=50, progress=False, chunk=4
        )
    # the second run reused the first one's compilation
    from jaxsolve.solvers.bilevel._run import _CHUNKS

    assert _CHUNKS[method][4]._cache_size() == 1


# --- tasks: hyper-cleaning and l2 tuning ---------------------------------------------


@pytest.fixture(scope="module")
def cleaning():
    return hyper_cleaning(n_train=300, n_val=200)


def _lower_solution(task, x, steps=400):
    """An accurate lower-level solution (many gradient steps)."""
    inner = bilevel.gradient_steps(task.lower, 5.0, steps)
    return jax.jit(inner)(x, task.y0, *task.data)


@pytest.mark.slow
def test_aid_and_bo_rep_lower_validation_loss_hyper_cleaning(cleaning):
    task = cleaning
    x0 = task.x0
    start = float(task.upper(x0, _lower_solution(task, x0), *task.data))
    aid = bilevel.aid(
        task.upper,
        task.lower,
        optimizer=optax.adam(0.3),
        inner_lr=5.0,
        inner_steps=20,
        backward_rtol=1e-6,
    )
    sol = bilevel.run(aid, x0, task.y0, *task.data, steps=40, progress=False)
    x = sol.value[0]
    end = float(task.upper(x, _lower_solution(task, x), *task.data))
    assert end < start - 0.05, (start, end)
    # the corrupted samples get the lower weights
    corrupted = np.asarray(task.extra["corrupted"])
    w = np.asarray(jax.nn.sigmoid(x))
    assert w[corrupted].mean() < w[~corrupted].mean()
    # The adjoint step must stay below 2 / L (L ~ 0.8 here; the default,
    # adjoint_lr = inner_lr = 5, makes the adjoint iteration diverge, and the
    # normalised steps then wander: this test passed or failed with the
    # compiler's rounding, start 1.545, end 1.494 or 1.788). With these settings
    # (benchmarks/bilevel.py's) the end is 0.316 at either XLA optimisation level.
    borep = bilevel.bo_rep(
        task.upper,
        task.lower,
        learning_rate=1.0,
        inner_lr=4.0,
        inner_steps=20,
        adjoint_lr=2.0,
        init_inner_steps=200,
    )
    sol = bilevel.run(
        borep, x0, task.y0, *task.data, steps=150, progress=False, chunk=50
    )
    x = sol.value[0]
    end = float(task.upper(x, _lower_solution(task, x), *task.data))
    assert end < start - 0.05, (start, end)


def test_l2_tuning_aid_bo_rep_itd_lower_validation_loss():
    task = logistic_l2_tuning()
    inner = bilevel.gradient_steps(task.lower, 0.5, 2000)
    solve = jax.jit(inner)

    def val(x):
        return float(task.upper(x, solve(x, task.y0, *task.data), *task.data))

    start = val(task.x0)
    for method in [
        bilevel.aid(
            task.upper,
            task.lower,
            optimizer=optax.adam(0.1),
            inner_lr=0.5,
            inner_steps=50,
        ),
        bilevel.bo_rep(
            task.upper, task.lower, learning_rate=0.2, inner_lr=0.5, inner_steps=50
        ),
        bilevel.itd(
            task.upper,
            task.lower,
            optimizer=optax.adam(0.1),
            inner_lr=0.5,
            inner_steps=50,
        ),
    ]:
        sol = bilevel.run(
            method, task.x0, task.y0, *task.data, steps=30, progress=False
        )
        assert val(sol.value[0]) < start - 0.01, (method, start, val(sol.value[0]))


# --- recycling ----------------------------------------------------------------------


def test_deflated_cg_solves_and_differentiates():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(60, 60)))
    ev = np.logspace(-3, 0, 60)
    a = jnp.asarray((q * ev) @ q.T)
    b = jnp.asarray(rng.normal(size=60))
    w = jnp.asarray(q[:, :8])
    plain = jax.jit(lambda a, b: jaxsolve.cg(a, b, rtol=1e-11))(a, b)
    sol = jax.jit(lambda a, b, w: deflated_cg(a, b, basis=w, rtol=1e-11))(a, b, w)
    assert sol.succeeded and sol.num_steps < plain.num_steps
    assert (
        float(
            jnp.linalg.norm(sol.value - jnp.linalg.solve(a, b))
            / jnp.linalg.norm(sol.value)
        )
        < 1e-8
    )
    g = jax.jit(
        jax.grad(lambda b: jnp.sum(deflated_cg(a, b, basis=w, rtol=1e-12).value))
    )(b)
    assert float(jnp.linalg.norm(g - jnp.linalg.solve(a, jnp.ones(60)))) < 1e-7
    with pytest.raises(ValueError, match="basis"):
        deflated_cg(a, b, basis=jnp.zeros((59, 2)))


def _aid_cleaning(task, recycle):
    return bilevel.aid(
        task.upper,
        task.lower,
        optimizer=optax.adam(0.05),
        inner_lr=5.0,
        inner_steps=20,
        backward_rtol=1e-10,
        recycle=recycle,
    )


def _spd_with_spectrum(n=60, seed=0):
    rng = np.random.default_rng(seed)
    q = np.linalg.qr(rng.normal(size=(n, n)))[0]
    lam = np.sort(
        np.concatenate([np.full(n // 3, 1e-3), np.geomspace(1e-3, 0.7, n - n // 3)])
    )
    return (q * lam) @ q.T, lam, q


def test_spectral_preconditioner_from_exact_pairs_and_from_cg_directions():
    """M = sigma (I - W W^T) + W diag(1/theta) W^T: with the exact top-k pairs and
    sigma = 1 / lambda_{k+1}, M A has k eigenvalues at 1 and the rest at
    lambda_i / lambda_{k+1}; it is SPD. Recycled from CG directions alone
    (spectral_update, no product) the Ritz pairs approach the top eigenpairs;
    spectral_refresh recomputes A W exactly. Preconditioned CG with it needs far
    fewer steps than CG on a nearby operator (57 against 88 here)."""
    from jaxsolve.solvers.linear import SpectralPreconditioner
    from jaxsolve.solvers.linear._spectral import spectral_refresh, spectral_update

    a, lam, q = _spd_with_spectrum()
    n, k = a.shape[0], 10
    w = q[:, -k:]
    exact = SpectralPreconditioner(
        jnp.asarray(w), jnp.asarray(a @ w), jnp.asarray(lam[-k:]), 1 / lam[-k - 1]
    )
    m = np.stack([np.asarray(exact(jnp.asarray(e))) for e in np.eye(n)], axis=1)
    np.testing.assert_allclose(m, m.T, atol=1e-12)
    assert np.linalg.eigvalsh(0.5 * (m + m.T)).min() > 0
    ev = np.sort(np.linalg.eigvals(m @ a).real)
    ref = np.sort(np.concatenate([np.ones(k), lam[: n - k] / lam[-k - 1]]))
    np.testing.assert_allclose(ev, ref, rtol=1e-8, atol=1e-12)
    # The empty preconditioner is the identity.
    empty = SpectralPreconditioner.empty(n, k, jnp.float64)
    r = jnp.asarray(np.random.default_rng(1).normal(size=n))
    np.testing.assert_allclose(empty(r), r)
    # From one CG solve's recorded directions: no products, top Ritz values close.
    b = jnp.asarray(np.random.default_rng(2).normal(size=n))
    sol = deflated_cg(jnp.asarray(a), b, record=40, rtol=1e-12, throw=False)
    p_rec, ap_rec, _, recorded = sol.aux["recycle"]
    got = spectral_update(empty, p_rec, ap_rec, recorded)
    np.testing.assert_allclose(np.asarray(got.theta[:3]), lam[::-1][:3], rtol=1e-8)
    np.testing.assert_allclose(np.asarray(got.AW), a @ np.asarray(got.W), atol=1e-10)
    wg = np.asarray(got.W)
    used = np.asarray(got.theta) > 0
    np.testing.assert_allclose(
        wg[:, used].T @ wg[:, used], np.eye(used.sum()), atol=1e-8
    )
    # A nearby operator: refresh gives its exact products; CG steps fall.
    a2 = a + 1e-3 * np.diag(np.random.default_rng(3).uniform(size=n))
    fresh = spectral_refresh(got, lambda v: jnp.asarray(a2) @ v)
    np.testing.assert_allclose(
        np.asarray(fresh.AW), a2 @ np.asarray(fresh.W), atol=1e-12
    )
    plain = deflated_cg(jnp.asarray(a2), b, rtol=1e-10)
    pre = deflated_cg(jnp.asarray(a2), b, rtol=1e-10, preconditioner=fresh)
    np.testing.assert_allclose(pre.value, np.linalg.solve(a2, np.asarray(b)), rtol=1e-8)
    assert int(pre.num_steps) < 0.7 * int(plain.num_steps), (
        pre.num_steps,
        plain.num_steps,
    )


def test_recycled_backward_solves_same_hypergradient_fewer_matvecs(cleaning):
    """Along one recycled AID run, every hypergradient equals the one of a fresh
    (unrecycled) backward solve at the same (x, y) to 1e-8, and the backward
    Hessian products per step after warm-up fall at least 3x (issue 11), the
    recycled preconditioner's exact refreshes included."""
    task = cleaning
    recycled = _aid_cleaning(task, True)
    step = jax.jit(recycled.step)

    @jax.jit
    def fresh(x, y):
        g, info = bilevel.hypergradient(task.upper, task.lower, x, y, *task.data)
        return g, info["matvecs"]

    state = jax.jit(recycled.init)(task.x0, task.y0, *task.data)
    counts_recycled, counts_plain = [], []
    for _ in range(46):
        x = state.x
        state = step(state, *task.data)
        g_fresh, mv = fresh(x, state.y)
        assert _rel(state.grad, g_fresh) < 1e-8
        assert int(state.info["backward_result"]) == 0
        counts_recycled.append(int(state.info["backward_matvecs"]))
        counts_plain.append(int(mv))
    # Steps 16-45: two refresh periods of 15 steps (the refresh at step 15, 80
    # Hessian products, falls just before the window and the one at step 30 in
    # it; measured 3.36x; steps 10-45 3.16x; 500 samples, 40 steps, 3.7x).
    # Unrecycled CG took 90-116 products a step.
    warm = slice(16, None)
    ratio = np.mean(counts_plain[warm]) / np.mean(counts_recycled[warm])
    assert ratio >= 3, (ratio, counts_plain, counts_recycled)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_recycled_backward_solves_never_cost_much_more_than_plain_cg(dtype):
    """A fast-moving x on a small problem (l2 tuning, 31 lower variables): the
    recycled pairs go stale quickly. A solve that is slow for its preconditioner
    triggers an exact refresh, so the recycled run costs about what plain CG
    does (measured 0.94x in float64; without that trigger 1.85x, single solves
    5x), with the same hypergradients."""
    task = logistic_l2_tuning()

    def cast(a):
        return a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a

    y0, data, x0 = jax.tree_util.tree_map(cast, (task.y0, task.data, task.x0))
    method = bilevel.aid(
        task.upper,
        task.lower,
        optimizer=optax.adam(0.1),
        inner_lr=0.5,
        inner_steps=20,
        recycle=True,
    )
    step = jax.jit(method.step)
    rtol = float(jnp.finfo(dtype).eps) ** 0.625

    @jax.jit
    def fresh(x, y):
        g, info = bilevel.hypergradient(task.upper, task.lower, x, y, *data, rtol=rtol)
        return g, info["matvecs"]

    state = jax.jit(method.init)(x0, y0, *data)
    assert ravel_pytree(state.y)[0].dtype == dtype
    recycled, plain = 0, 0
    for _ in range(20):
        x = state.x
        state = step(state, *data)
        g, mv = fresh(x, state.y)
        assert int(state.info["backward_result"]) == 0
        assert _rel(state.grad, g) < (1e-8 if dtype == jnp.float64 else 1e-3)
        recycled += int(state.info["backward_matvecs"])
        plain += int(mv)
    assert recycled <= 1.2 * plain, (recycled, plain)


def test_vmap_over_seeds_and_pytrees():
    task = logistic_l2_tuning()
    method = bilevel.aid(
        task.upper, task.lower, optimizer=optax.adam(0.1), inner_lr=0.5, inner_steps=20
    )
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    x0s = jax.vmap(lambda k: 0.5 * jax.random.normal(k, task.x0.shape))(keys)
    init = jax.jit(jax.vmap(method.init, in_axes=(0, None) + (None,) * len(task.data)))
    step = jax.jit(jax.vmap(method.step, in_axes=(0,) + (None,) * len(task.data)))
    states = init(x0s, task.y0, *task.data)
    for _ in range(2):
        states = step(states, *task.data)
    # each batch element equals its own unbatched run
    single_init, single_step = jax.jit(method.init), jax.jit(method.step)
    for i in range(2):
        s = single_init(x0s[i], task.y0, *task.data)
        for _ in range(2):
            s = single_step(s, *task.data)
        pick = functools.partial(jax.tree.map, lambda a, i=i: a[i])
        assert _rel(pick(states.x), s.x) < 1e-10
        assert _rel(pick(states.y), s.y) < 1e-10
    assert step._cache_size() == 1
    # the lower variable is a dict pytree and stays one
    assert set(states.y) == {"w", "b"}


@pytest.mark.slow
def test_vmap_other_methods():
    task = logistic_l2_tuning()
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x0s = jax.vmap(lambda k: 0.5 * jax.random.normal(k, task.x0.shape))(keys)
    for m in [
        bilevel.bo_rep(task.upper, task.lower, learning_rate=0.1, inner_lr=0.5),
        bilevel.itd(task.upper, task.lower, learning_rate=1.0, inner_lr=0.5),
        bilevel.lv_hba(task.upper, task.lower, alpha=0.01, eta=0.1),
    ]:
        st = jax.vmap(m.init, in_axes=(0, None) + (None,) * len(task.data))(
            x0s, task.y0, *task.data
        )
        st = jax.vmap(m.step, in_axes=(0,) + (None,) * len(task.data))(st, *task.data)
        assert np.all(np.isfinite(np.asarray(ravel_pytree(st.x)[0])))


@pytest.mark.parametrize("name", ["lv_hba", "bo_rep", "itd"])
def test_step_jits_without_recompiling(name):
    make = {
        "lv_hba": lambda: bilevel.lv_hba(
            _upper_q, _lower_q, alpha=0.01, eta=0.05, c0=1.0
        ),
        "bo_rep": lambda: bilevel.bo_rep(
            _upper_q, _lower_q, learning_rate=0.05, inner_lr=0.05, inner_steps=5
        ),
        "itd": lambda: bilevel.itd(
            _upper_q, _lower_q, learning_rate=0.05, inner_lr=0.05, inner_steps=5
        ),
    }
    method = make[name]()
    y0 = (jnp.zeros(4), jnp.zeros(3))
    init, step = jax.jit(method.init), jax.jit(method.step)
    state = init(_X, y0, 1.0)
    before = float(_upper_q(state.x, _ystar(state.x), 1.0))
    for _ in range(40):
        state = step(state, 1.0)
    state2 = step(init(jax.tree.map(lambda a: 2 * a, _X), y0, 2.0), 2.0)
    assert init._cache_size() == 1 and step._cache_size() == 1
    assert jax.tree.structure(state2.x) == jax.tree.structure(_X)
    after = float(_upper_q(state.x, _ystar(state.x), 1.0))
    assert np.isfinite(after) and after < before


def test_float32_hypergradient():
    x32 = jax.tree.map(lambda a: a.astype(jnp.float32), _X)
    y32 = jax.tree.map(lambda a: a.astype(jnp.float32), _ystar(_X))

    def lower(x, y, s):
        return _lower_q(x, y, s).astype(jnp.float32)

    g, info = jax.jit(
        lambda x, y: bilevel.hypergradient(_upper_q, lower, x, y, 1.0, rtol=1e-5)
    )(x32, y32)
    assert jax.tree.leaves(g)[0].dtype == jnp.float32
    assert info["result"] == RESULTS.successful
    assert _rel(g, _closed_form(_X)) < 1e-4


def test_aid_with_a_jaxsolve_inner_solver():
    """The inner solver can be any jaxsolve solver (here CG on the lower level's
    linear optimality condition, warm-started); the hypergradient is then exact."""

    def inner(x, y, scale):
        sol = jaxsolve.cg(scale * _A, _B @ _xf(x), x0=_yf(y), rtol=1e-13)
        return (sol.value[:4], sol.value[4:])

    method = bilevel.aid(_upper_q, _lower_q, learning_rate=0.01, inner=inner)
    init, step = jax.jit(method.init), jax.jit(method.step)
    state = step(init(_X, (jnp.zeros(4), jnp.zeros(3)), 1.5), 1.5)
    assert _rel(state.grad, _closed_form(_X, 1.5)) < 1e-9
    expect = jax.tree.map(lambda a, g: a - 0.01 * g, _X, _closed_form(_X, 1.5))
    assert _rel(state.x, expect) < 1e-9
