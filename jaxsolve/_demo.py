"""``python -m jaxsolve``: a short tour of the solvers, printed as a table.

Each row solves one small problem with one solver, in float64, and reports the
solver's iterations, the median wall-clock time of the jitted call (after a warm-up
call that compiles it) and the error against an independent reference (scipy's
sparse direct solver, numpy's dense solver, a closed form, or finite differences).

Options: ``-k TEXT`` runs only the rows whose problem or solver contains ``TEXT``,
``--repeats N`` sets the number of timed calls, ``--list`` lists the rows.

Adding a row (a later solver family, say) is one decorated function, here or in a
module that this one imports::

    @row("Entropic OT, 200x200", "sinkhorn", tol=1e-6)
    def _sinkhorn_row(repeats):
        ...
        sol, seconds = timed(solve, inputs, repeats=repeats)
        return {
            "iterations": int(sol.num_steps),  # or "-"
            "time": seconds,
            "error": relative_error(sol.value, reference),
            "reference": "what the error is measured against",
        }

The function runs at call time, after float64 has been enabled; it creates its
arrays inside (module-level arrays would be float32). ``tol`` is the error the row
must reach: a row above it, or one that raises, is flagged and makes the tour exit
with status 1 (the test suite runs the tour and relies on this).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import __version__
from .implicit import custom_fixed_point, custom_root
from .problems import (
    convection_diffusion_2d,
    darcy_family,
    logistic_loss,
    poisson_2d,
    ridge_logistic_objective,
)
from .solvers.linear import bicgstab, cg, dense_solve, gcrodr, gmres, solve_family
from .solvers.ot import sinkhorn_newton_sparse

__all__ = ["Row", "ROWS", "row", "timed", "relative_error", "run_rows", "main"]


@dataclass(frozen=True)
class Row:
    """One registered row: what it solves, with what, and the error it must reach.

    ``fn(repeats)`` runs it and returns a dict with keys ``iterations`` (an int or a
    string such as ``"-"``), ``time`` (seconds), ``error`` (a float) and
    ``reference`` (what the error is measured against).
    """

    problem: str
    solver: str
    fn: Callable[[int], dict]
    tol: float


ROWS: list[Row] = []
"""The tour's rows, in the order they are printed."""

_KEYS = ("iterations", "time", "error", "reference")


def row(problem: str, solver: str, *, tol: float) -> Callable:
    """Decorator: register ``fn(repeats) -> dict`` as a row of the tour."""
    if not tol > 0:
        raise ValueError(f"`tol` must be > 0, got {tol}")
    if "  " in problem + " " + solver:  # two spaces separate the table's cells
        raise ValueError(f"no double spaces in row names: {problem!r}, {solver!r}")

    def decorator(fn: Callable[[int], dict]) -> Callable[[int], dict]:
        ROWS.append(Row(problem, solver, fn, tol))
        return fn

    return decorator


def timed(fn: Callable, *args, repeats: int = 5):
    """Jit ``fn``, call it once (compilation), then ``repeats`` times; return its
    output and the median wall-clock seconds of a call (``block_until_ready``)."""
    jitted = jax.jit(fn)
    out = jax.block_until_ready(jitted(*args))
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        jax.block_until_ready(jitted(*args))
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def relative_error(x, reference) -> float:
    """``||x - reference|| / ||reference||`` (absolute if the reference is zero)."""
    x = np.asarray(x, np.float64).ravel()
    reference = np.asarray(reference, np.float64).ravel()
    scale = np.linalg.norm(reference)
    return float(np.linalg.norm(x - reference) / (scale if scale > 0 else 1.0))


def _scipy_sparse():
    """``(scipy.sparse, scipy.sparse.linalg.spsolve)``, or ``None`` without scipy
    (an optional dependency: the PDE rows then report the relative residual)."""
    try:
        import scipy.sparse as sparse
        from scipy.sparse.linalg import spsolve
    except ImportError:
        return None
    return sparse, spsolve


# --------------------------------------------------------------------------------
# Linear systems: matrix-free PDE stencils and a dense SPD matrix.


def _grid_operator(n: int, velocity=(0.0, 0.0)):
    """The stencils of :mod:`jaxsolve.problems.pde` assembled independently, as
    a scipy sparse matrix acting on ``u.reshape(-1)`` (row-major, ``u[i, j]`` at
    ``i n + j``): 5-point negative Laplacian plus first-order upwind convection."""
    sparse, _ = _scipy_sparse()
    h = 1.0 / (n + 1)
    eye = sparse.identity(n, format="csr")
    lower = sparse.diags([np.ones(n - 1)], [-1], shape=(n, n), format="csr")
    second = (2 * eye - lower - lower.T) / h**2
    matrix = sparse.kron(second, eye) + sparse.kron(eye, second)
    for axis, v in enumerate(velocity):
        # v > 0: (u_k - u_{k-1}) / h; otherwise (u_{k+1} - u_k) / h.
        first = (eye - lower) / h if v > 0 else (lower.T - eye) / h
        parts = (first, eye) if axis == 0 else (eye, first)
        matrix = matrix + v * sparse.kron(*parts)
    return matrix.tocsc()


def _pde_error(matvec, b, x, velocity=(0.0, 0.0)) -> tuple[float, str]:
    """Relative error vs scipy's ``spsolve``, or the relative residual without
    scipy."""
    if _scipy_sparse() is None:
        residual = np.asarray(b - matvec(x))
        return float(np.linalg.norm(residual) / np.linalg.norm(b)), "||b-Ax||/||b||"
    _, spsolve = _scipy_sparse()
    matrix = _grid_operator(b.shape[0], velocity)
    reference = spsolve(matrix, np.asarray(b, np.float64).ravel())
    return relative_error(x, reference), "scipy spsolve"


_GRID = 64


@row(f"Poisson 2D {_GRID}x{_GRID} (matrix-free)", "cg", tol=1e-7)
def _poisson_cg(repeats: int) -> dict:
    matvec, b = poisson_2d(_GRID)
    sol, seconds = timed(lambda b: cg(matvec, b, rtol=1e-10), b, repeats=repeats)
    error, reference = _pde_error(matvec, b, sol.value)
    return {
        "iterations": int(sol.num_steps),
        "time": seconds,
        "error": error,
        "reference": reference,
    }


_VELOCITY = (20.0, 10.0)


def _convection_diffusion_row(solver: Callable, repeats: int) -> dict:
    matvec, b = convection_diffusion_2d(_GRID, velocity=_VELOCITY)
    sol, seconds = timed(lambda b: solver(matvec, b, rtol=1e-10), b, repeats=repeats)
    error, reference = _pde_error(matvec, b, sol.value, _VELOCITY)
    return {
        "iterations": int(sol.num_steps),
        "time": seconds,
        "error": error,
        "reference": reference,
    }


@row(f"Convection-diffusion 2D {_GRID}x{_GRID}", "gmres(30)", tol=1e-7)
def _convection_diffusion_gmres(repeats: int) -> dict:
    return _convection_diffusion_row(gmres, repeats)


@row(f"Convection-diffusion 2D {_GRID}x{_GRID}", "bicgstab", tol=1e-7)
def _convection_diffusion_bicgstab(repeats: int) -> dict:
    return _convection_diffusion_row(bicgstab, repeats)


@row(f"Convection-diffusion 2D {_GRID}x{_GRID}", "gcrodr(40,20)", tol=1e-7)
def _convection_diffusion_gcrodr(repeats: int) -> dict:
    return _convection_diffusion_row(gcrodr, repeats)


def _darcy_row(method: str, repeats: int, **options) -> dict:
    """A family of 12 Darcy systems (32x32, coefficient 12/3) solved in one
    jitted call; iterations: the solvers' steps summed over the family."""
    fam = darcy_family(12, 32, seed=0)

    def solve(params):
        return solve_family(
            fam.make_operator, params, fam.b, method=method, rtol=1e-10, **options
        )

    sol, seconds = timed(solve, fam.params, repeats=repeats)
    if _scipy_sparse() is None:
        errors = [
            float(
                jnp.linalg.norm(fam.make_operator(p)(x) - fam.b)
                / jnp.linalg.norm(fam.b)
            )
            for p, x in zip(fam.params, sol.value, strict=True)
        ]
        reference = "||b-Ax||/||b||"
    else:
        _, spsolve = _scipy_sparse()
        b = np.asarray(fam.b).ravel()
        errors = [
            relative_error(x, spsolve(fam.to_scipy(p).tocsc(), b))
            for p, x in zip(fam.params, sol.value, strict=True)
        ]
        reference = "scipy spsolve (max over systems)"
    return {
        "iterations": int(jnp.sum(sol.num_steps)),
        "time": seconds,
        "error": max(errors),
        "reference": reference,
    }


@row("Darcy family, 12 systems 32x32", "gmres(40) each", tol=1e-7)
def _darcy_gmres(repeats: int) -> dict:
    return _darcy_row("gmres", repeats, restart=40)


@row("Darcy family, 12 systems 32x32", "solve_family gcrodr sorted", tol=1e-7)
def _darcy_gcrodr(repeats: int) -> dict:
    return _darcy_row("gcrodr", repeats, m=40, k=20)


_DENSE = 400


def _dense_spd(n: int = _DENSE):
    """``M M^T / n + 0.1 I`` with ``M`` standard normal (condition number ~40)."""
    rng = np.random.default_rng(0)
    m = rng.standard_normal((n, n))
    return m @ m.T / n + 0.1 * np.eye(n), rng.standard_normal(n)


def _dense_row(solve: Callable, repeats: int) -> dict:
    a, b = _dense_spd()
    sol, seconds = timed(solve, jnp.asarray(a), jnp.asarray(b), repeats=repeats)
    return {
        "iterations": int(sol.num_steps),
        "time": seconds,
        "error": relative_error(sol.value, np.linalg.solve(a, b)),
        "reference": "numpy.linalg.solve",
    }


@row(f"Dense SPD {_DENSE}x{_DENSE}", "dense_solve (LU)", tol=1e-10)
def _dense_lu(repeats: int) -> dict:
    return _dense_row(dense_solve, repeats)


@row(f"Dense SPD {_DENSE}x{_DENSE}", "cg", tol=1e-9)
def _dense_cg(repeats: int) -> dict:
    return _dense_row(lambda a, b: cg(a, b, rtol=1e-12), repeats)


# --------------------------------------------------------------------------------
# Implicit differentiation: hypergradients through solvers, never unrolled.


def _ridge_data():
    rng = np.random.default_rng(1)
    d = 20
    w_true = rng.standard_normal(d)
    x_train = rng.standard_normal((100, d))
    x_val = rng.standard_normal((50, d))
    y_train = x_train @ w_true + 0.5 * rng.standard_normal(100)
    y_val = x_val @ w_true + 0.5 * rng.standard_normal(50)
    return tuple(jnp.asarray(a) for a in (x_train, y_train, x_val, y_val))


def _ridge_solver():
    """``w*(lam) = argmin ||X w - y||^2 / 2 + lam ||w||^2 / 2`` by CG, made
    differentiable in ``lam`` by ``custom_root`` on the gradient's root."""
    x_train, y_train, _, _ = _ridge_data()

    def optimality(w, lam):
        return x_train.T @ (x_train @ w - y_train) + lam * w

    @custom_root(optimality, has_aux=True, solve="cg")
    def ridge(init, lam):
        gram = x_train.T @ x_train + lam * jnp.eye(x_train.shape[1])
        sol = cg(gram, x_train.T @ y_train, x0=init, rtol=1e-13)
        return sol.value, sol.num_steps

    return ridge


@row("Ridge regression d(val loss)/d(lambda)", "custom_root(cg), grad", tol=1e-9)
def _ridge_hypergradient(repeats: int) -> dict:
    x_train, y_train, x_val, y_val = _ridge_data()
    ridge = _ridge_solver()
    init = jnp.zeros(x_train.shape[1])

    def val_loss(w):
        return 0.5 * jnp.mean((x_val @ w - y_val) ** 2)

    def implicit(lam):
        w, steps = ridge(init, lam)
        return val_loss(w), steps

    def closed_form(lam):
        gram = x_train.T @ x_train + lam * jnp.eye(x_train.shape[1])
        return val_loss(jnp.linalg.solve(gram, x_train.T @ y_train))

    lam = jnp.asarray(3.0)
    (grad, steps), seconds = timed(
        jax.grad(implicit, has_aux=True), lam, repeats=repeats
    )
    return {
        "iterations": int(steps),
        "time": seconds,
        "error": relative_error(grad, jax.jit(jax.grad(closed_form))(lam)),
        "reference": "grad of jnp.linalg.solve",
    }


@row("Ridge regression dw*/d(lambda)", "custom_root(cg), jvp", tol=1e-9)
def _ridge_forward_mode(repeats: int) -> dict:
    x_train, y_train, _, _ = _ridge_data()
    ridge = _ridge_solver()
    init = jnp.zeros(x_train.shape[1])
    lam = 3.0

    def tangent(lam):
        one = jnp.ones_like(lam)
        (_, steps), (dw, _) = jax.jvp(lambda lam: ridge(init, lam), (lam,), (one,))
        return dw, steps

    (dw, steps), seconds = timed(tangent, jnp.asarray(lam), repeats=repeats)
    # d/dlam of (G + lam I) w = X^T y gives (G + lam I) dw = -w.
    x, y = np.asarray(x_train), np.asarray(y_train)
    gram = x.T @ x + lam * np.eye(x.shape[1])
    w = np.linalg.solve(gram, x.T @ y)
    return {
        "iterations": int(steps),
        "time": seconds,
        "error": relative_error(dw, -np.linalg.solve(gram, w)),
        "reference": "closed form (numpy)",
    }


def _logistic_data():
    """Labels from a logistic model, as :func:`jaxsolve.problems.make_classification`
    draws them, but with numpy: ``jax.random`` would cost seconds of compilation
    on a CPU, more than the solve it feeds."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 10))
    w_true = rng.standard_normal(10) / np.sqrt(10)
    y = (3 * x @ w_true + rng.logistic(size=300) > 0).astype(np.float64)
    x, y = jnp.asarray(x), jnp.asarray(y)
    return x[:200], y[:200], x[200:], y[200:]


@row("Logistic regression d(val loss)/d(lambda)", "custom_root(cg), GD loop", tol=1e-6)
def _logistic_hypergradient(repeats: int) -> dict:
    x_train, y_train, x_val, y_val = _logistic_data()
    # F(w, lam, X, y) = d/dw of the ridge-regularised training loss.
    optimality = jax.grad(ridge_logistic_objective)
    # The gradient is Lipschitz with constant ||X||_2^2 / (4 n) + lam.
    smooth = float(np.linalg.norm(np.asarray(x_train), 2) ** 2 / (4 * len(x_train)))

    def gradient_descent(init, lam, x, y):
        """Plain gradient descent in a while_loop, to ||grad|| <= 1e-13."""

        def keep_going(carry):
            _, g, k = carry
            return (jnp.linalg.norm(g) > 1e-13) & (k < 10_000)

        def step(carry):
            w, g, k = carry
            w = w - g / (smooth + lam)
            return w, optimality(w, lam, x, y), k + 1

        start = (init, optimality(init, lam, x, y), jnp.asarray(0))
        w, _, k = lax.while_loop(keep_going, step, start)
        return w, k

    fit = custom_root(optimality, has_aux=True, solve="cg")(gradient_descent)
    init = jnp.zeros(x_train.shape[1])

    def val_loss(lam):
        w, steps = fit(init, lam, x_train, y_train)
        return logistic_loss(w, x_val, y_val), steps

    lam = 0.1
    (grad, steps), seconds = timed(
        jax.grad(val_loss, has_aux=True), jnp.asarray(lam), repeats=repeats
    )

    # Fourth-order central differences of the loss at lam - 2h, ..., lam + 2h
    # (the undecorated solver, batched by vmap: one compilation, one call).
    def plain_loss(lam):
        w, _ = gradient_descent(init, lam, x_train, y_train)
        return logistic_loss(w, x_val, y_val)

    h = 1e-3
    f = jax.jit(jax.vmap(plain_loss))(lam + h * jnp.array([-2.0, -1.0, 1.0, 2.0]))
    finite_difference = (f[0] - 8 * f[1] + 8 * f[2] - f[3]) / (12 * h)
    return {
        "iterations": int(steps),
        "time": seconds,
        "error": relative_error(grad, finite_difference),
        "reference": "finite differences",
    }


@row(
    "Fixed point x = a cos(x), 64 values of a",
    "custom_fixed_point(bicgstab), grad",
    tol=1e-10,
)
def _fixed_point(repeats: int) -> dict:
    def contraction(x, a):
        return a * jnp.cos(x)

    @custom_fixed_point(contraction, has_aux=True, solve="bicgstab")
    def fixed_point(init, a):
        """Picard iteration x <- a cos(x) (a contraction for |a| < 1)."""

        def keep_going(carry):
            _, change, k = carry
            return (change > 1e-15) & (k < 1_000)

        def step(carry):
            x, _, k = carry
            x_new = contraction(x, a)
            return x_new, jnp.max(jnp.abs(x_new - x)), k + 1

        start = (init, jnp.asarray(jnp.inf, init.dtype), jnp.asarray(0))
        x, _, k = lax.while_loop(keep_going, step, start)
        return x, k

    a = jnp.linspace(0.1, 0.9, 64)

    def total(a):
        # The Jacobian dx*/da is diagonal: the gradient of the sum is its diagonal.
        x, steps = fixed_point(jnp.zeros_like(a), a)
        return jnp.sum(x), (x, steps)

    (grad, (x, steps)), seconds = timed(
        jax.grad(total, has_aux=True), a, repeats=repeats
    )
    x, a = np.asarray(x), np.asarray(a)
    return {
        "iterations": int(steps),
        "time": seconds,
        "error": relative_error(grad, np.cos(x) / (1 + a * np.sin(x))),
        "reference": "cos(x)/(1 + a sin(x))",
    }


# --------------------------------------------------------------------------------
# Optimal transport.

_OT_N = 300


def _random_assignment():
    """The random-assignment case of Tang et al. (ICLR 2024) at n = 300:
    ``C ~ U[0, 1]``, uniform marginals, ``eta = 1 / epsilon = 1200``."""
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.uniform(size=(_OT_N, _OT_N)))


@row(
    f"Entropic OT random assignment n={_OT_N}, eta=1200",
    "sinkhorn_newton_sparse",
    tol=1e-9,
)
def _sns_random(repeats: int) -> dict:
    C = _random_assignment()
    solve = lambda C: sinkhorn_newton_sparse(C, epsilon=1 / 1200, tol=1e-10)  # noqa: E731
    sol, seconds = timed(solve, C, repeats=repeats)
    plan = np.asarray(sol.plan)
    uniform = np.full(_OT_N, 1 / _OT_N)
    error = np.abs(plan.sum(1) - uniform).sum() + np.abs(plan.sum(0) - uniform).sum()
    sinkhorn_steps = int(sol.stats["sinkhorn_steps"])
    newton_steps = int(sol.stats["newton_steps"])
    return {
        "iterations": sinkhorn_steps + newton_steps,
        "time": seconds,
        "error": float(error),
        "reference": f"marginals, L1 ({sinkhorn_steps} Sinkhorn+{newton_steps} Newton)",
    }


@row(
    f"Entropic OT n={_OT_N}, eta=1200: d cost/dC",
    "sinkhorn_newton_sparse, grad",
    tol=1e-8,
)
def _sns_envelope(repeats: int) -> dict:
    C = _random_assignment()

    def cost_and_plan(C):
        sol = sinkhorn_newton_sparse(C, epsilon=1 / 1200, tol=1e-10)
        return sol.cost, sol.plan

    (grad, plan), seconds = timed(
        jax.grad(cost_and_plan, has_aux=True), C, repeats=repeats
    )
    return {
        "iterations": "-",
        "time": seconds,
        "error": relative_error(grad, plan),
        "reference": "the plan (envelope theorem)",
    }


# --------------------------------------------------------------------------------
# Bilevel optimisation.


def _bilevel_quadratic():
    """``f = y^T A y / 2 - y^T B x``, ``F = ||C y - d||^2 / 2``: ``y* = A^{-1} B x``
    and the hypergradient ``B^T A^{-1} C^T (C y* - d)`` in closed form."""
    rng = np.random.default_rng(0)
    m = rng.normal(size=(40, 40))
    a = jnp.asarray(m @ m.T / 40 + 0.1 * np.eye(40))
    b, c = (
        jnp.asarray(rng.normal(size=(40, 10))),
        jnp.asarray(rng.normal(size=(20, 40))),
    )
    d, x = jnp.asarray(rng.normal(size=20)), jnp.asarray(rng.normal(size=10))

    def lower(x, y):
        return 0.5 * y @ a @ y - y @ (b @ x)

    def upper(x, y):
        return 0.5 * jnp.sum((c @ y - d) ** 2)

    y = jnp.linalg.solve(a, b @ x)
    exact = b.T @ jnp.linalg.solve(a, c.T @ (c @ y - d))
    return upper, lower, x, y, exact


@row("Quadratic bilevel (10 upper, 40 lower)", "bilevel.hypergradient", tol=1e-8)
def _bilevel_hypergradient(repeats: int) -> dict:
    from .solvers.bilevel import hypergradient

    upper, lower, x, y, exact = _bilevel_quadratic()
    (grad, info), seconds = timed(
        lambda x, y: hypergradient(upper, lower, x, y), x, y, repeats=repeats
    )
    return {
        "iterations": int(info["steps"]),
        "time": seconds,
        "error": relative_error(grad, exact),
        "reference": "closed form",
    }


@row("LV-HBA toy (x in R^100, y in R^200)", "bilevel.lv_hba, 120k steps", tol=1e-3)
def _bilevel_lv_hba_toy(repeats: int) -> dict:
    from .problems.bilevel import lv_hba_toy
    from .solvers.bilevel import lv_hba

    task = lv_hba_toy()
    method = lv_hba(
        task.upper,
        task.lower,
        constraint=task.constraint,
        project=task.project,
        equality=True,
        alpha=0.008,
        eta=0.012,
        gamma1=1.0,
        gamma2=1.0,
        c0=4.0,
        c_power=0.49,
    )

    def solve(x0, y0):
        state = lax.fori_loop(
            0, 120_000, lambda _, s: method.step(s), method.init(x0, y0)
        )
        return state.x, state.y

    (x, y), seconds = timed(solve, task.x0, task.y0, repeats=min(repeats, 2))
    return {
        "iterations": 120_000,
        "time": seconds,
        "error": float(task.extra["relative_error"](x, y)),
        "reference": "known solution (-0.3, 0.7, -0.4)",
    }


@row("Poisson with obstacles 64x64 (discs)", "dcdm (shipped model)", tol=1e-7)
def _dcdm_obstacles(repeats: int) -> dict:
    from .problems.obstacles import obstacle_layout, obstacle_rhs, poisson_obstacles
    from .solvers.linear import dcdm

    solid = obstacle_layout(64, "discs", seed=2026)  # a layout unseen in training
    a, b = poisson_obstacles(solid), obstacle_rhs(solid, seed=1)
    sol, seconds = timed(lambda b: dcdm(a, b, rtol=1e-10), b, repeats=repeats)
    if _scipy_sparse() is None:
        error, reference = float(jnp.linalg.norm(a(sol.value) - b)), "||b-Ax||/||b||"
    else:
        _, spsolve = _scipy_sparse()
        reference = spsolve(a.to_scipy().tocsc(), np.asarray(b).ravel())
        error, reference = relative_error(sol.value, reference), "scipy spsolve"
    return {
        "iterations": int(sol.num_steps),
        "time": seconds,
        "error": error,
        "reference": reference,
    }


@row("Poisson with obstacles 32x32, d loss/d source", "dcdm fwd+bwd", tol=1e-7)
def _dcdm_gradient(repeats: int) -> dict:
    from .problems.obstacles import obstacle_layout, obstacle_rhs, poisson_obstacles
    from .solvers.linear import dcdm

    solid = obstacle_layout(32, "blobs", seed=7)
    a, b = poisson_obstacles(solid), obstacle_rhs(solid, seed=3)

    def grad(method):
        return jax.grad(lambda b: jnp.sum(method(a, b, rtol=1e-11).value ** 2))

    g, seconds = timed(grad(dcdm), b, repeats=repeats)
    return {
        "iterations": "-",
        "time": seconds,
        "error": relative_error(g, jax.jit(grad(cg))(b)),
        "reference": "the same gradient with cg",
    }


# --------------------------------------------------------------------------------
# Running and printing.


def run_row(spec: Row, repeats: int) -> dict:
    """Run one row; never raises: a failure is recorded in the result
    (``ok=False``, the traceback under ``failure``)."""
    result = {"problem": spec.problem, "solver": spec.solver, "tol": spec.tol}
    try:
        out = spec.fn(repeats)
        missing = [key for key in _KEYS if key not in out]
        if missing:
            raise KeyError(f"the row function returned no {missing}")
        error = float(out["error"])
        result.update(
            iterations=out["iterations"],
            time=float(out["time"]),
            error=error,
            reference=str(out["reference"]),
            ok=bool(error <= spec.tol),  # False for NaN
            failure=None,
        )
    except Exception as e:
        result.update(
            iterations="-",
            time=math.nan,
            error=math.nan,
            reference=f"raised {type(e).__name__}",
            ok=False,
            failure=traceback.format_exc(),
        )
    return result


def run_rows(rows: Sequence[Row] | None = None, repeats: int = 5) -> list[dict]:
    """Run ``rows`` (default: every registered row) in float64 and return their
    results (dicts: the row's ``problem``, ``solver``, ``tol`` and what it returned,
    plus ``ok`` and ``failure``); nothing is printed."""
    with _float64():
        return [run_row(spec, repeats) for spec in (ROWS if rows is None else rows)]


@contextlib.contextmanager
def _float64():
    """Enable float64 (``jax_enable_x64``) for the tour, then restore the setting."""
    was_enabled = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", was_enabled)


def _format_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


class _Table:
    """Fixed-width columns, sized from the rows' names, so that each row can be
    printed as soon as it has run. Cells are separated by at least two spaces."""

    def __init__(self, rows: Sequence[Row]):
        self.problem = max([len("problem")] + [len(r.problem) for r in rows])
        self.solver = max([len("solver")] + [len(r.solver) for r in rows])

    def line(self, problem, solver, iterations, time, error, reference) -> str:
        return (
            f"{problem:<{self.problem}}  {solver:<{self.solver}}  "
            f"{iterations:>10}  {time:>10}  {error:>8}  {reference}"
        ).rstrip()

    def header(self) -> str:
        head = self.line("problem", "solver", "iterations", "time", "error", "error vs")
        return head + "\n" + "-" * len(head)

    def format(self, result: dict) -> str:
        error = result["error"]
        text = self.line(
            result["problem"],
            result["solver"],
            str(result["iterations"]),
            _format_time(result["time"]),
            f"{error:.1e}" if math.isfinite(error) else "-",
            result["reference"],
        )
        if not result["ok"] and result["failure"] is None:
            text += f"  <-- ABOVE TOLERANCE {result['tol']:.0e}"
        elif not result["ok"]:
            text += "  <-- FAILED"
        return text


def _describe_backend() -> str:
    devices = jax.devices()
    kind = devices[0].device_kind
    return (
        f"JAX {jax.__version__}, backend {jax.default_backend()}, "
        f"{len(devices)} device(s) ({kind})"
    )


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jaxsolve",
        description="A short tour of jaxsolve's solvers, printed as a table.",
    )
    parser.add_argument(
        "-k",
        dest="select",
        metavar="TEXT",
        help="run only the rows whose problem or solver contains TEXT",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="timed calls per row after the warm-up; the median is shown (default 5)",
    )
    parser.add_argument(
        "--list", action="store_true", help="list the rows without running them"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def main(argv: Sequence[str] | None = None, rows: Sequence[Row] | None = None) -> int:
    """Run the tour, print its table; return 0 if every row is within its tolerance,
    1 otherwise (a row above tolerance or one that raised), 2 if ``-k`` selects no
    row. Float64 is enabled for the tour and restored afterwards."""
    args = _parse(argv)
    rows = list(ROWS if rows is None else rows)
    if args.select:
        text = args.select.lower()
        rows = [r for r in rows if text in f"{r.problem} {r.solver}".lower()]
        if not rows:
            print(f"no row matches -k {args.select!r}", file=sys.stderr)
            return 2
    if args.list:
        for r in rows:
            print(f"{r.problem}  |  {r.solver}  |  tol {r.tol:.0e}")
        return 0

    with _float64():
        print(f"jaxsolve {__version__} tour (float64) | {_describe_backend()}")
        print()
        table = _Table(rows)
        print(table.header(), flush=True)
        start = time.perf_counter()
        results = []
        for spec in rows:
            results.append(run_row(spec, args.repeats))
            print(table.format(results[-1]), flush=True)
        elapsed = time.perf_counter() - start

    print()
    print(f"time: median of {args.repeats} jitted call(s) after a warm-up call")
    print("iterations: the solver's steps (derivative rows: the inner solver's)")
    print("error: relative, against the reference named in 'error vs'")
    bad = [r for r in results if not r["ok"]]
    for r in bad:
        if r["failure"] is not None:
            print(f"\n{r['problem']} | {r['solver']} raised:", file=sys.stderr)
            print(r["failure"], file=sys.stderr, end="")
    verdict = (
        "all within tolerance" if not bad else f"{len(bad)} FAILED or above tolerance"
    )
    print(f"{len(results)} rows in {elapsed:.1f} s (compilation included): {verdict}")
    return 1 if bad else 0
