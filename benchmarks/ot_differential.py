"""Differential check of ``sinkhorn_newton_sparse`` (SNS) against POT's
``sinkhorn_log`` on seeded random problems: an adversarial check, not a test.

Issue 12 began with such a check from outside (150 configurations, 21 SNS
failures where POT converged). This script repeats it after any change to SNS's
step rules: for each seed it draws

* sizes ``n, m`` from ``--sizes`` (default 5, 37, 128, 300);
* a cost: uniform random, squared Euclidean between 1-D or 2-D points, or the
  L1 distance on a pixel grid (degenerate: many ties);
* marginals: uniform, Dirichlet(1), Dirichlet(1) with zeros, or peaked
  (Dirichlet(0.05) floored at 1e-16);
* ``epsilon`` log-uniform in ``[--eps-lo, 1]`` times the median cost;

runs POT (``stopThr`` 1e-10, at most ``--pot-iters`` iterations; a case where
POT does not converge is skipped) and SNS (``tol`` 1e-9, ``throw=False``,
jitted once per shape), and reports, per case, SNS's code, its marginal error
and the largest entry of ``|P_sns - P_pot|``. A *failure* is SNS not converging
where POT did; a *silent wrong answer* is SNS reporting success with a plan
farther than ``--plan-tol`` from POT's. Exit status 1 if either occurs.

    python benchmarks/ot_differential.py                 # 150 seeds (~10 min, 1 core)
    python benchmarks/ot_differential.py --seeds 40 --sizes 5 37 128
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# benchmarks/ot.py sits next to this file: keep `import ot` (POT) from finding it.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxsolve  # noqa: E402


def draw(seed: int, sizes, eps_lo: float):
    rng = np.random.default_rng(seed)
    n, m = (int(v) for v in rng.choice(sizes, 2))
    cost_kind = rng.choice(["uniform", "sqeuclid-1d", "sqeuclid-2d", "grid-l1"])
    if cost_kind == "uniform":
        C = rng.uniform(size=(n, m))
    elif cost_kind == "grid-l1":
        side = int(np.ceil(np.sqrt(max(n, m))))
        cells = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1)
        cells = cells.reshape(-1, 2).astype(float)
        x = cells[rng.choice(len(cells), n, replace=False)]
        y = cells[rng.choice(len(cells), m, replace=False)]
        C = np.abs(x[:, None] - y[None]).sum(-1)
    else:
        d = 1 if cost_kind == "sqeuclid-1d" else 2
        x, y = rng.uniform(size=(n, d)), rng.uniform(size=(m, d))
        C = ((x[:, None] - y[None]) ** 2).sum(-1)

    def marginal(size, kind):
        if kind == "uniform":
            return np.full(size, 1.0 / size)
        if kind == "dirichlet":
            return rng.dirichlet(np.ones(size))
        if kind == "zeros":
            p = rng.dirichlet(np.ones(size))
            p[rng.uniform(size=size) < 0.3] = 0.0
            if p.sum() == 0:
                p[0] = 1.0
            return p / p.sum()
        p = np.maximum(rng.dirichlet(np.full(size, 0.05)), 1e-16)
        return p / p.sum()

    kind = rng.choice(["uniform", "dirichlet", "zeros", "peaked"])
    a, b = marginal(n, kind), marginal(m, kind)
    rel_eps = float(np.exp(rng.uniform(np.log(eps_lo), 0.0)))
    eps = rel_eps * float(np.median(C[C > 0])) if np.any(C > 0) else rel_eps
    label = f"{n}x{m} {cost_kind} {kind} eps {rel_eps:.1e}*median"
    return C, a, b, eps, label


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=150)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 37, 128, 300])
    parser.add_argument("--eps-lo", type=float, default=1e-3)
    parser.add_argument("--pot-iters", type=int, default=50_000)
    parser.add_argument("--plan-tol", type=float, default=1e-7)
    args = parser.parse_args(argv)
    import ot

    @jax.jit
    def sns(C, a, b, eps):
        sol = jaxsolve.sinkhorn_newton_sparse(
            C, a, b, epsilon=eps, tol=1e-9, throw=False
        )
        return sol.plan, sol.result._value, sol.num_steps

    compared = skipped = failures = silent = 0
    start = time.perf_counter()
    for seed in range(args.seeds):
        C, a, b, eps, label = draw(seed, args.sizes, args.eps_lo)
        ref, log = ot.sinkhorn(
            a,
            b,
            C,
            eps,
            method="sinkhorn_log",
            stopThr=1e-10,
            numItermax=args.pot_iters,
            log=True,
        )
        pot_err = np.abs(ref.sum(1) - a).sum() + np.abs(ref.sum(0) - b).sum()
        if not np.all(np.isfinite(ref)) or pot_err > 1e-8:
            skipped += 1
            print(f"seed {seed:3d} {label}: POT did not converge (err {pot_err:.1e})")
            continue
        compared += 1
        plan, code, steps = sns(jnp.asarray(C), jnp.asarray(a), jnp.asarray(b), eps)
        plan = np.asarray(plan)
        err = np.abs(plan.sum(1) - a).sum() + np.abs(plan.sum(0) - b).sum()
        diff = float(np.max(np.abs(plan - ref)))
        ok = int(code) == 0
        status = "ok"
        if not ok:
            failures += 1
            status = f"FAILED ({jaxsolve.RESULTS._index_to_message[int(code)]})"
        elif diff > args.plan_tol or not np.isfinite(err):
            silent += 1
            status = "SILENT WRONG ANSWER"
        print(
            f"seed {seed:3d} {label}: {status}, {int(steps)} steps, err {err:.1e}, "
            f"|dP| {diff:.1e}",
            flush=True,
        )
    print(
        f"\n{compared} compared ({skipped} skipped: POT did not converge), "
        f"{failures} SNS failures, {silent} silent wrong answers, "
        f"{time.perf_counter() - start:.0f} s"
    )
    return int(failures + silent > 0)


if __name__ == "__main__":
    sys.exit(main())
