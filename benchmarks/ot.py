"""Entropic OT benchmark: jaxsolve's Sinkhorn-Newton-Sparse (SNS) and log-domain
Sinkhorn against ott-jax, POT and regot, side by side.

Problem (float64)::

    min_{P 1 = a, P^T 1 = b}  <C, P> + epsilon sum_ij P_ij log P_ij,   eta = 1 / epsilon

Cases:

* ``random``: the random-assignment case of Tang et al. (ICLR 2024, Table 1):
  ``n = 500``, ``C_ij ~ U[0, 1]``, uniform marginals, ``eta = 1200`` (the paper:
  SNS 20 + 9 iterations, Sinkhorn 56,199).
* ``points``: two 2-D point clouds (``n = m = 500``; uniform on the unit square and
  a Gaussian blob), squared Euclidean cost, uniform marginals, ``eta = 1200``.

Methods:

* ``jaxsolve-sns``: :func:`jaxsolve.solvers.ot.sinkhorn_newton_sparse` (20 Sinkhorn
  steps, then sparse Newton with ``--k`` entries per row, default 32), jitted.
* ``jaxsolve-sinkhorn``: :func:`jaxsolve.solvers.ot.sinkhorn`, jitted.
* ``ott-sinkhorn``: ``ott.solvers.linear.sinkhorn.Sinkhorn`` (log domain, marginal
  error tested every 10 iterations), jitted.
* ``pot-sinkhorn_log``: ``ot.sinkhorn(..., method="sinkhorn_log")`` (NumPy).
* ``regot-ssns``, ``regot-newton``: ``regot.sinkhorn_ssns`` (safe and sparse
  Newton) and ``regot.sinkhorn_newton`` (dense Newton), C++.

Every method is asked for the same tolerance ``--tol`` in its own stopping rule and
capped at ``--max-steps`` iterations (``--pot-max-steps`` for POT, whose NumPy
iterations are slow); a capped method is marked ``no`` in ``conv``.

Columns: ``iters`` (the method's own count; for SNS, Sinkhorn + Newton steps, with
the CG steps in ``note``), ``wall s`` (the median of ``--repeats`` timed calls after
a warm-up call, so jitted methods are timed without compilation; a method whose
first call takes longer than 5 s is timed once), ``conv`` (the method's own verdict,
and a finite plan), ``err`` (the marginal error
``||P 1 - a||_1 + ||P^T 1 - b||_1`` of the returned plan, recomputed here in the same
way for every method), ``|dP|`` (max-abs difference of the plan from SNS's).

Usage: ``python benchmarks/ot.py [--cases random points] [--methods ...]``. Needs
``pip install ott-jax pot regot`` (a method whose package is missing is skipped).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)
# This file is called ot.py: keep `import ot` (POT) from finding it.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

from jaxsolve.solvers.ot import (  # noqa: E402
    sinkhorn,
    sinkhorn_newton_sparse,
    sqeuclidean_cost,
)

METHODS = (
    "jaxsolve-sns",
    "jaxsolve-sinkhorn",
    "ott-sinkhorn",
    "pot-sinkhorn_log",
    "regot-ssns",
    "regot-newton",
)


def make_case(name: str, n: int):
    key = jax.random.PRNGKey(0)
    if name == "random":
        C = jax.random.uniform(key, (n, n), jnp.float64)
    elif name == "points":
        kx, ky = jax.random.split(key)
        x = jax.random.uniform(kx, (n, 2), jnp.float64)
        y = 0.5 + 0.15 * jax.random.normal(ky, (n, 2), jnp.float64)
        C = sqeuclidean_cost(x, y)
    else:
        raise ValueError(f"unknown case {name!r}")
    a = jnp.full(n, 1.0 / n)
    return np.asarray(C), np.asarray(a), np.asarray(a)


def marginal_error(P, a, b):
    P = np.asarray(P)
    return float(np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum())


def _jax_method(fn):
    """``fn(C, a, b) -> (plan, iters, converged, note)`` jitted, on device arrays."""
    compiled = jax.jit(fn)

    def run(C, a, b):
        out = jax.block_until_ready(compiled(C, a, b))
        plan, iters, converged, note = out
        return np.asarray(plan), int(iters), bool(converged), note

    return run, lambda C, a, b: tuple(jnp.asarray(x) for x in (C, a, b))


def build(method, eps, tol, max_steps, pot_max_steps, k):
    """``(run, convert)``: ``run(*convert(C, a, b)) -> (plan, iters, conv, note)``."""
    if method == "jaxsolve-sns":

        def fn(C, a, b):
            sol = sinkhorn_newton_sparse(
                C, a, b, epsilon=eps, tol=tol, k=k, max_newton_steps=200, throw=False
            )
            note = sol.stats["cg_steps"]
            return sol.plan, sol.num_steps, sol.succeeded, note

        run, convert = _jax_method(fn)
        return (lambda *x: _note(run(*x), "CG steps {}")), convert
    if method == "jaxsolve-sinkhorn":

        def fn(C, a, b):
            sol = sinkhorn(
                C, a, b, epsilon=eps, tol=tol, max_steps=max_steps, throw=False
            )
            return sol.plan, sol.num_steps, sol.succeeded, 0

        run, convert = _jax_method(fn)
        return (lambda *x: _note(run(*x), "")), convert
    if method == "ott-sinkhorn":
        from ott.geometry import geometry
        from ott.problems.linear import linear_problem
        from ott.solvers.linear import sinkhorn as ott_sinkhorn

        solver = ott_sinkhorn.Sinkhorn(
            threshold=tol, max_iterations=max_steps, lse_mode=True
        )

        def fn(C, a, b):
            geom = geometry.Geometry(cost_matrix=C, epsilon=eps)
            out = solver(linear_problem.LinearProblem(geom, a, b))
            return out.matrix, out.n_iters, out.converged, 0

        run, convert = _jax_method(fn)
        return (lambda *x: _note(run(*x), "")), convert
    if method == "pot-sinkhorn_log":
        import ot

        def run(C, a, b):
            P, log = ot.sinkhorn(
                a,
                b,
                C,
                eps,
                method="sinkhorn_log",
                stopThr=tol,
                numItermax=pot_max_steps,
                log=True,
            )
            iters = int(log["niter"])
            return P, iters, iters < pot_max_steps - 1, ""

        return run, lambda C, a, b: (C, a, b)
    if method in ("regot-ssns", "regot-newton"):
        import regot

        solve = regot.sinkhorn_ssns if method == "regot-ssns" else regot.sinkhorn_newton

        def run(C, a, b):
            res = solve(C, a, b, eps, tol=tol, max_iter=max_steps)
            iters = int(res.niter)
            return np.asarray(res.plan), iters, iters < max_steps, ""

        return run, lambda C, a, b: (np.asfortranarray(C), a, b)
    raise ValueError(f"unknown method {method!r}")


def _note(out, template):
    plan, iters, conv, note = out
    return plan, iters, conv, template.format(int(note)) if template else ""


def time_method(run, args, repeats):
    t0 = time.perf_counter()
    out = run(*args)  # warm-up (compiles a jitted method)
    first = time.perf_counter() - t0
    if first > 5.0 and not isinstance(args[0], jax.Array):
        return out, first  # slow NumPy / C++ runs: the first call is the sample
    samples = []
    for _ in range(1 if first > 5.0 else repeats):
        t0 = time.perf_counter()
        out = run(*args)
        samples.append(time.perf_counter() - t0)
    return out, statistics.median(samples)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=["random", "points"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--eta", type=float, default=1200.0)
    parser.add_argument("--tol", type=float, default=1e-8)
    parser.add_argument("--max-steps", type=int, default=20_000)
    parser.add_argument("--pot-max-steps", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--k", type=int, default=32, help="SNS entries per row")
    args = parser.parse_args(argv)
    eps = 1.0 / args.eta

    header = (
        f"{'case':8} {'method':18} {'iters':>7} {'wall s':>8} {'err':>9} "
        f"{'|dP|':>9} {'conv':>4}  note"
    )
    print(f"eta = {args.eta:g} (epsilon = {eps:.3g}), tol = {args.tol:g}, n = {args.n}")
    print(header)
    print("-" * len(header))
    for case in args.cases:
        C, a, b = make_case(case, args.n)
        reference = None
        for method in args.methods:
            try:
                run, convert = build(
                    method, eps, args.tol, args.max_steps, args.pot_max_steps, args.k
                )
            except ImportError as e:
                print(f"{case:8} {method:18} skipped ({e.name} is not installed)")
                continue
            (plan, iters, conv, note), wall = time_method(
                run, convert(C, a, b), args.repeats
            )
            if reference is None:
                reference = plan
            err = marginal_error(plan, a, b)
            dp = float(np.max(np.abs(plan - reference)))
            if not np.isfinite(err):
                conv, note = False, "non-finite plan"
            print(
                f"{case:8} {method:18} {iters:7d} {wall:8.3f} {err:9.1e} {dp:9.1e} "
                f"{'yes' if conv else 'no':>4}  {note}",
                flush=True,
            )


if __name__ == "__main__":
    main()
