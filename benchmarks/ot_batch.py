"""Minibatch entropic OT: a batch of problems solved at once under ``jax.vmap``.

The case of training code (minibatch OT losses, OT layers): ``--batch`` (default
64) independent problems between two 2-D point clouds of ``--n`` (default 200)
points each (uniform on the unit square against a Gaussian blob, a fresh pair
per problem), squared Euclidean cost, uniform marginals, ``epsilon = --eps``
(default ``1e-2, 2e-3``: about 3e-2 and 6e-3 of the median cost), tolerance
``--tol`` on the L1 marginal error (default 1e-8), float64.

Methods, each one ``jax.jit(jax.vmap(solve))`` over the batch:

* ``jaxsolve-sns``: :func:`jaxsolve.solvers.ot.sinkhorn_newton_sparse` (default
  ``k``, 20 warm-up steps), ``throw=False`` (one code per element);
* ``jaxsolve-sinkhorn``: :func:`jaxsolve.solvers.ot.sinkhorn`;
* ``ott-sinkhorn``: ott-jax's ``Sinkhorn`` (log domain, its error checked every
  10 iterations) on a ``Geometry`` of the same cost matrix;
* ``jaxsolve-sns-loop``: SNS jitted for one problem and called once per element
  from Python (what vmap saves over a loop);
* ``jaxsolve-sns-cg`` (and ``jaxsolve-sns-cg-loop``): SNS with
  ``newton_solver="cg"``, whose vmapped Newton step does not also compute the
  dense direction of the default ``"auto"`` (a vmapped ``lax.cond`` runs both
  branches for every element).

Printed per method and epsilon: the wall-clock of the whole batch (median of
``--repeats``, compilation excluded, printed apart), iterations (the largest in
the batch: a vmapped loop runs until its slowest element is done), how many
elements converged, the largest marginal error, and the time relative to
ott-jax. Optional ``--devices D`` shards the batch axis over ``D`` forced CPU
devices (``XLA_FLAGS``, set before JAX starts; on a 2-core machine this shows
that it works, not a speed-up).

    PYTHONPATH=. python benchmarks/ot_batch.py
    PYTHONPATH=. python benchmarks/ot_batch.py --batch 16 --n 100 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _parse():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--eps", type=float, nargs="+", default=[1e-2, 2e-3])
    parser.add_argument("--tol", type=float, default=1e-8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-steps", type=int, default=20_000)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=[
            "ott-sinkhorn",
            "jaxsolve-sns",
            "jaxsolve-sns-cg",
            "jaxsolve-sinkhorn",
            "jaxsolve-sns-loop",
        ],
    )
    return parser.parse_args()


ARGS = _parse()
if ARGS.devices > 1:  # before JAX starts
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={ARGS.devices}"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

from jaxsolve.solvers.ot import (  # noqa: E402
    marginal_error,
    sinkhorn,
    sinkhorn_newton_sparse,
    sqeuclidean_cost,
)


def problems(batch, n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(batch, n, 2))
    y = rng.normal(0.5, 0.15, size=(batch, n, 2))
    return jnp.stack([sqeuclidean_cost(xi, yi) for xi, yi in zip(x, y, strict=True)])


def method(name, eps, tol, max_steps):
    """``solve(C) -> (plan, iterations, converged)`` for one problem."""
    if name.startswith("jaxsolve-sns"):
        # "-cg": Newton directions by CG only. Under vmap the default "auto"
        # computes its dense direction and CG's for every element at every
        # Newton step (a vmapped lax.cond runs both branches).
        solver = "cg" if name.removesuffix("-loop").endswith("-cg") else "auto"

        def solve(C):
            sol = sinkhorn_newton_sparse(
                C, epsilon=eps, tol=tol, newton_solver=solver, throw=False
            )
            return sol.plan, sol.num_steps, sol.succeeded

        return solve
    if name == "jaxsolve-sinkhorn":

        def solve(C):
            sol = sinkhorn(C, epsilon=eps, tol=tol, max_steps=max_steps, throw=False)
            return sol.plan, sol.num_steps, sol.succeeded

        return solve
    if name == "ott-sinkhorn":
        from ott.geometry import geometry
        from ott.problems.linear import linear_problem
        from ott.solvers.linear import sinkhorn as ott_sinkhorn

        solver = ott_sinkhorn.Sinkhorn(
            threshold=tol, max_iterations=max_steps, lse_mode=True
        )

        def solve(C):
            geom = geometry.Geometry(cost_matrix=C, epsilon=eps)
            out = solver(linear_problem.LinearProblem(geom))
            return out.matrix, out.n_iters, out.converged

        return solve
    raise ValueError(f"unknown method {name!r}")


def timed(fn, repeats):
    """Compile time of the first call, then the median wall-clock of ``repeats``."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    return out, median, first - median


def run(name, C, eps):
    solve = method(name, eps, ARGS.tol, ARGS.max_steps)
    if name.endswith("-loop"):
        one = jax.jit(solve)

        def call():
            outs = [one(c) for c in C]
            return tuple(jnp.stack(parts) for parts in zip(*outs, strict=True))

        return timed(call, ARGS.repeats)
    batched = jax.jit(jax.vmap(solve))
    return timed(lambda: batched(C), ARGS.repeats)


def main():
    C = problems(ARGS.batch, ARGS.n)
    if ARGS.devices > 1:
        from jax.sharding import AxisType, NamedSharding, PartitionSpec

        mesh = jax.make_mesh((ARGS.devices,), ("batch",), axis_types=(AxisType.Auto,))
        C = jax.device_put(C, NamedSharding(mesh, PartitionSpec("batch")))
    n = ARGS.n
    uniform = jnp.full((n,), 1.0 / n)
    median = float(jnp.median(C))
    print(
        f"minibatch OT: batch {ARGS.batch}, n = m = {n} (2-D clouds, squared "
        f"Euclidean, median cost {median:.3f}), tol {ARGS.tol:g}, float64, "
        f"{len(jax.devices())} device(s), {os.cpu_count()} CPU cores; median of "
        f"{ARGS.repeats}",
        flush=True,
    )
    header = (
        f"{'eps':>7} {'eps/med':>7} {'method':20} {'wall s':>8} {'compile s':>9} "
        f"{'iters(max)':>10} {'conv':>7} {'max err':>8} {'vs ott':>7}"
    )
    for eps in ARGS.eps:
        print(header)
        rows = {}
        for name in ARGS.methods:
            try:
                (plan, iters, ok), wall, compile_s = run(name, C, eps)
            except ImportError as exc:
                print(f"{eps:7.0e} {'':7} {name:20} skipped: {exc}")
                continue
            errors = jax.vmap(marginal_error, in_axes=(0, None, None))(
                plan, uniform, uniform
            )
            rows[name] = wall
            ratio = ""
            if "ott-sinkhorn" in rows:
                ratio = f"{wall / rows['ott-sinkhorn']:7.3f}"
            print(
                f"{eps:7.0e} {eps / median:7.1e} {name:20} {wall:8.3f} "
                f"{compile_s:9.2f} "
                f"{int(jnp.max(iters)):10d} {int(jnp.sum(ok)):3d}/{ARGS.batch:<3d} "
                f"{float(jnp.max(errors)):8.1e} {ratio:>7}",
                flush=True,
            )
        if "ott-sinkhorn" in rows:
            for name, wall in rows.items():
                if name != "ott-sinkhorn":
                    print(
                        f"  ott-sinkhorn / {name}: {rows['ott-sinkhorn'] / wall:.2f}x"
                    )


if __name__ == "__main__":
    sys.exit(main())
