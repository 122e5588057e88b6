"""Compile time of the entropic OT solvers (issue 12 item 5).

For each case, a fresh compilation (``jax.clear_caches()`` before each) of::

    forward   jax.jit(lambda C: sns(C, epsilon=eps).cost)
    gradient  jax.jit(jax.grad(lambda C: sum(sns(C, epsilon=eps).plan * W)))

(the gradient of a loss of the plan goes through the implicit layer's backward
solve; the cost alone would take the envelope derivative, which needs none),
split into tracing (``jax.jit(f).trace``), lowering to StableHLO
(``traced.lower()``) and XLA's compilation (``lowered.compile()``), medians of
``--repeats`` compilations. Times are the process's CPU time
(``time.process_time``; compilation runs on the calling thread and XLA's pool,
all of it counted), which on a shared machine varies less than wall time (on
one pinned core they are the same up to time the core is taken away); the
``fusions`` column counts XLA's fused kernels in the compiled module, which
each cost LLVM code generation (most of the compile time, ~10-30 ms a
vector or matrix kernel, the most for those with ``exp``/``log``). With
``--ops`` it also counts the lowered module's operations (``stablehlo.while``,
``case``/``if``, ``sort``, ``custom_call``, all ops).

Cases (float64, ``C ~ U[0, 1]``, uniform marginals, ``eta = 1200``):
``sns-60x50`` (SNS defaults; at this size ``newton_solver="auto"`` takes dense
Newton steps throughout), ``sns-300x280`` (defaults: CG steps and dense steps
where the top-k pattern misses mass, large-matrix kernel), ``sns-cg-60x50``
(``newton_solver="cg"``), ``sinkhorn-60x50``. ``--cases`` picks some.

Run pinned to one core, e.g. ``taskset -c 1 python benchmarks/ot_compile.py``.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from jaxsolve.solvers.ot import sinkhorn, sinkhorn_newton_sparse  # noqa: E402

CASES = {
    "sns-60x50": (60, 50, "sns", {}),
    "sns-300x280": (300, 280, "sns", {}),
    "sns-cg-60x50": (60, 50, "sns", {"newton_solver": "cg"}),
    "sinkhorn-60x50": (60, 50, "sinkhorn", {}),
}


def _functions(kind, options, eta, W):
    solve = sinkhorn_newton_sparse if kind == "sns" else sinkhorn

    def forward(C):
        return solve(C, epsilon=1 / eta, **options).cost

    def loss(C):
        return jnp.sum(solve(C, epsilon=1 / eta, **options).plan * W)

    return {"forward": forward, "gradient": jax.grad(loss)}


def _time_once(fn, C):
    jax.clear_caches()
    t0 = time.process_time()
    traced = jax.jit(fn).trace(C)
    t1 = time.process_time()
    lowered = traced.lower()
    t2 = time.process_time()
    compiled = lowered.compile()
    t3 = time.process_time()
    return (t1 - t0, t2 - t1, t3 - t2), lowered, compiled


_OPS = {
    "while": r"stablehlo\.while",
    "cond": r"stablehlo\.(?:case|if)\b",
    "sort": r"stablehlo\.sort",
    "custom_call": r"stablehlo\.custom_call",
    "func": r"func\.func",
    "call": r"func\.call",
}


def count_ops(text: str) -> dict[str, int]:
    counts = {k: len(re.findall(v, text)) for k, v in _OPS.items()}
    counts["ops"] = len(re.findall(r"= \"?(?:stablehlo|chlo|mhlo|func)\.", text))
    counts["lines"] = text.count("\n")
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--what", nargs="*", default=["forward", "gradient"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eta", type=float, default=1200.0)
    parser.add_argument("--ops", action="store_true", help="count the lowered ops")
    args = parser.parse_args()
    print(
        f"jax {jax.__version__}, median of {args.repeats} fresh compilations "
        "(CPU seconds)"
    )
    header = f"{'case':16s} {'what':9s} {'trace':>7s} {'lower':>7s} {'compile':>8s}"
    header += f" {'total':>7s} {'fusions':>8s}"
    if args.ops:
        header += "   while  cond  sort  cc   calls    ops"
    print(header)
    # XLA's first compilation in a process sets up its compiler: not counted.
    jax.jit(lambda x: jnp.exp(x).sum()).lower(jnp.ones(3)).compile()
    rng = np.random.default_rng(0)
    for name in args.cases:
        n, m, kind, options = CASES[name]
        C = jnp.asarray(rng.uniform(size=(n, m)))
        W = jnp.asarray(rng.normal(size=(n, m)))
        fns = _functions(kind, options, args.eta, W)
        for what in args.what:
            times, lowered, compiled = [], None, None
            for _ in range(args.repeats):
                t, lowered, compiled = _time_once(fns[what], C)
                times.append(t)
            fusions = sum(
                " fusion(" in line for line in compiled.as_text().splitlines()
            )
            tr, lo, co = (statistics.median(x) for x in zip(*times, strict=True))
            line = (
                f"{name:16s} {what:9s} {tr:7.2f} {lo:7.2f} {co:8.2f} "
                f"{tr + lo + co:7.2f} {fusions:8d}"
            )
            if args.ops:
                c = count_ops(lowered.as_text())
                line += (
                    f"   {c['while']:5d} {c['cond']:5d} {c['sort']:5d} "
                    f"{c['custom_call']:3d} {c['call']:6d} {c['ops']:6d}"
                )
            print(line, flush=True)


if __name__ == "__main__":
    main()
