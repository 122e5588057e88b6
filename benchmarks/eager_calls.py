"""Eager calls: what a solver call costs outside ``jax.jit`` (issue 12 item 5).

A notebook or a script calls a solver eagerly: ``sinkhorn_newton_sparse(C,
epsilon=eps)``, no ``jax.jit`` around it. Each case runs in a fresh process
(nothing compiled before) that times, in wall-clock seconds:

    first    the first eager call (compilation included),
    second   a second eager call, new values of the same shapes,
    jit      for reference, the first call of ``jax.jit`` of the same solve in
             another fresh process.

``--trees DIR [DIR ...]`` compares source trees (``git worktree`` checkouts of
two commits), one process per tree and case (``PYTHONPATH=DIR``), the trees
alternated over ``--repeats`` rounds; the table gives medians and the ratio of
each tree's ``first`` and ``second`` to the first tree's. Run it pinned to one
core (``taskset -c 1 python benchmarks/eager_calls.py --trees BASE .``): the
processes inherit the pinning.

Cases (float64): ``sns-60x50`` and ``sns-300x280`` (``C ~ U[0, 1]``,
``epsilon = 1/1200``), ``sinkhorn-60x50``, ``cg-100`` and ``gmres-100`` (a
random SPD / non-symmetric 100 x 100 system), ``sns-grad-60x50`` (an eager
``jax.grad`` of SNS's cost) and ``sns-vmap-60x50`` (an eager ``jax.vmap`` of it
over two problems).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CASES = [
    "sns-60x50",
    "sns-300x280",
    "sinkhorn-60x50",
    "cg-100",
    "gmres-100",
    "sns-grad-60x50",
    "sns-vmap-60x50",
]


def _case(name, seed):
    """``(call, inputs)`` of a case: ``call(*inputs)`` is one solve."""
    import jax.numpy as jnp
    import numpy as np

    import jaxsolve

    rng = np.random.default_rng(seed)
    if name in ("sns-grad-60x50", "sns-vmap-60x50"):
        import jax

        def cost(C):
            return jaxsolve.sinkhorn_newton_sparse(C, epsilon=1 / 1200).cost

        if name == "sns-grad-60x50":
            return jax.grad(cost), (jnp.asarray(rng.uniform(size=(60, 50))),)
        return jax.vmap(cost), (jnp.asarray(rng.uniform(size=(2, 60, 50))),)
    if name.startswith(("sns", "sinkhorn")):
        n, m = (int(s) for s in name.split("-")[1].split("x"))
        solver = (
            jaxsolve.sinkhorn_newton_sparse
            if name.startswith("sns")
            else jaxsolve.sinkhorn
        )
        C = jnp.asarray(rng.uniform(size=(n, m)))
        return (lambda C: solver(C, epsilon=1 / 1200).cost), (C,)
    n = int(name.split("-")[1])
    M = rng.normal(size=(n, n))
    if name.startswith("cg"):
        A, solver = M @ M.T + n * np.eye(n), jaxsolve.cg
    else:
        A, solver = M + 3 * np.sqrt(n) * np.eye(n), jaxsolve.gmres
    b = rng.normal(size=n)
    return (lambda A, b: solver(A, b).value), (jnp.asarray(A), jnp.asarray(b))


def _worker(name, mode):
    import jax

    jax.config.update("jax_enable_x64", True)
    call = _case(name, 0)[0]
    if mode == "jit":
        call = jax.jit(call)
    times = []
    for seed in (0, 1):
        inputs = _case(name, seed)[1]
        jax.block_until_ready(inputs)
        t0 = time.perf_counter()
        jax.block_until_ready(call(*inputs))
        times.append(time.perf_counter() - t0)
    print(json.dumps(times))


def _measure(tree, name, mode):
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", name, mode],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trees", nargs="+", default=["."])
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(*args.worker)
        return
    import jax

    print(f"jax {jax.__version__}, wall s, median of {args.repeats} fresh processes")
    for i, tree in enumerate(args.trees):
        print(f"  [{i}] {os.path.abspath(tree)}")
    header = f"{'case':15s} {'tree':>4s} {'first':>7s} {'second':>8s} {'jit':>7s}"
    print(header + "  first/[0]  second/[0]")
    for name in args.cases:
        results = {
            i: {"first": [], "second": [], "jit": []} for i in range(len(args.trees))
        }
        for r in range(args.repeats):
            order = list(range(len(args.trees)))
            if r % 2:
                order.reverse()
            for i in order:
                first, second = _measure(args.trees[i], name, "eager")
                results[i]["first"].append(first)
                results[i]["second"].append(second)
                results[i]["jit"].append(_measure(args.trees[i], name, "jit")[0])
        med = {
            i: {k: statistics.median(v) for k, v in res.items()}
            for i, res in results.items()
        }
        for i in med:
            first, second, jit = med[i]["first"], med[i]["second"], med[i]["jit"]
            ratios = ""
            if i:
                ratios = (
                    f"  {first / med[0]['first']:9.2f}"
                    f"  {second / med[0]['second']:10.4f}"
                )
            print(
                f"{name:15s} {f'[{i}]':>4s} {first:7.3f} {second:8.4f} {jit:7.3f}"
                + ratios
            )


if __name__ == "__main__":
    main()
