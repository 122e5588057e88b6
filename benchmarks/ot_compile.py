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
(``newton_solver="cg"``), ``sinkhorn-60x50``; ``--cases`` picks some, or
``sns-1000x1000`` and ``sinkhorn-1000x1000`` (not run by default: with
``--run-repeats``, the run-time side of an XLA option's trade).

Run pinned to one core, e.g. ``taskset -c 1 python benchmarks/ot_compile.py``.

``--compiler-option KEY=VALUE`` (repeatable) passes XLA options to
``lowered.compile(compiler_options=...)``, e.g.
``xla_backend_optimization_level=0``; ``--run-repeats N`` adds the compiled
function's run time (ms, median of ``N`` calls after one warm-up call).

``--compare DIR [DIR ...]`` compares source trees (e.g. ``git worktree``
checkouts of two commits): one worker process per tree (``PYTHONPATH=DIR``,
pinned to the same core as this process: run it under ``taskset``), fed the
same compilations *interleaved* (each repeat of each case goes to every tree
in turn, in alternating order), so that the machine's drift (measured here:
the same build 20-30% slower ten minutes later on a shared VM) falls on every
tree alike; prints the median XLA compile time per tree and the ratios to
the first tree. Sequential runs of one build after another are not
comparable at that noise level. ``--option-sets SET [SET ...]`` does the same
for sets of XLA options in one process (``default``, or
``KEY=VALUE[,KEY=VALUE...]``), with the run time of each set's code
(``--run-repeats``), e.g. ``--option-sets default
xla_cpu_use_fusion_emitters=false``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
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
    # Not in the default set: for the run-time side of an XLA option's trade.
    "sns-1000x1000": (1000, 1000, "sns", {}),
    "sinkhorn-1000x1000": (1000, 1000, "sinkhorn", {}),
}
DEFAULT_CASES = ["sns-60x50", "sns-300x280", "sns-cg-60x50", "sinkhorn-60x50"]


def _functions(kind, options, eta, W):
    solve = sinkhorn_newton_sparse if kind == "sns" else sinkhorn

    def forward(C):
        return solve(C, epsilon=1 / eta, **options).cost

    def loss(C):
        return jnp.sum(solve(C, epsilon=1 / eta, **options).plan * W)

    return {"forward": forward, "gradient": jax.grad(loss)}


def _time_once(fn, C, compiler_options=None):
    jax.clear_caches()
    t0 = time.process_time()
    traced = jax.jit(fn).trace(C)
    t1 = time.process_time()
    lowered = traced.lower()
    t2 = time.process_time()
    compiled = lowered.compile(compiler_options=compiler_options or None)
    t3 = time.process_time()
    return (t1 - t0, t2 - t1, t3 - t2), lowered, compiled


def _run_ms(compiled, C, repeats):
    jax.block_until_ready(compiled(C))  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(C))
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _fusions(compiled) -> int:
    return sum(" fusion(" in line for line in compiled.as_text().splitlines())


def _compiler_options(pairs):
    """``KEY=VALUE`` strings as a dict (integers and booleans converted)."""
    options = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if value.lower() in ("true", "false"):
            options[key] = value.lower() == "true"
        else:
            try:
                options[key] = int(value)
            except ValueError:
                options[key] = value
    return options


def _problems(args):
    """``{case: (C, {what: function})}`` for the selected cases."""
    rng = np.random.default_rng(0)
    problems = {}
    for name in args.cases:
        n, m, kind, options = CASES[name]
        C = jnp.asarray(rng.uniform(size=(n, m)))
        W = jnp.asarray(rng.normal(size=(n, m)))
        problems[name] = (C, _functions(kind, options, args.eta, W))
    return problems


def _worker(args):
    """Answer ``case what`` lines on stdin with ``seconds kernels``: one fresh
    XLA compilation each (tracing and lowering not counted)."""
    problems = _problems(args)
    options = _compiler_options(args.compiler_option)
    jax.jit(lambda x: jnp.exp(x).sum()).lower(jnp.ones(3)).compile()
    print("ready", flush=True)
    for line in sys.stdin:
        name, what = line.split()
        C, fns = problems[name]
        (_, _, seconds), _, compiled = _time_once(fns[what], C, options)
        print(f"{seconds:.4f} {_fusions(compiled)}", flush=True)


def _rounds(repeats, count):
    """``(r, order)`` for each repeat: the ``count`` contenders in turn, in
    alternating order, so that drift during a round falls on all alike."""
    for r in range(repeats):
        order = list(range(count))
        yield r, order[::-1] if r % 2 else order


def _compare(args):
    trees = [os.path.abspath(d) for d in args.compare]
    passed = ["--eta", str(args.eta), "--cases", *args.cases]
    for pair in args.compiler_option:
        passed += ["--compiler-option", pair]
    workers = []
    for tree in trees:
        env = dict(os.environ, PYTHONPATH=tree)
        workers.append(
            subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--worker", *passed],
                cwd=tree,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    for worker in workers:
        if worker.stdout.readline().strip() != "ready":
            raise RuntimeError("a worker failed to start (see its error above)")
    times, kernels = {}, {}
    jobs = [(name, what) for name in args.cases for what in args.what]
    for _, order in _rounds(args.repeats, len(trees)):
        for name, what in jobs:
            for i in order:
                workers[i].stdin.write(f"{name} {what}\n")
                workers[i].stdin.flush()
                seconds, count = workers[i].stdout.readline().split()
                times.setdefault((name, what, i), []).append(float(seconds))
                kernels[(name, what, i)] = int(count)
    for worker in workers:
        worker.stdin.close()
        worker.wait()
    print(
        f"jax {jax.__version__}, XLA compile CPU s, median of {args.repeats} "
        "interleaved compilations (fused kernels in brackets)"
    )
    for i, tree in enumerate(trees):
        print(f"  [{i}] {tree}")
    head = f"{'case':16s} {'what':9s}"
    head += "".join(f"{f'[{i}]':>16s}" for i in range(len(trees)))
    print(head + "".join(f"  [{i}]/[0]" for i in range(1, len(trees))))
    for name, what in jobs:
        med = [statistics.median(times[(name, what, i)]) for i in range(len(trees))]
        line = f"{name:16s} {what:9s}"
        line += "".join(
            f"{m:9.2f} ({kernels[(name, what, i)]:4d})" for i, m in enumerate(med)
        )
        line += "".join(f"  {m / med[0]:7.2f}" for m in med[1:])
        print(line, flush=True)


def _compare_options(args):
    """Option sets compared in this process, interleaved like ``--compare``:
    XLA compile CPU s (median) and, with ``--run-repeats``, the run time of
    each set's last compilation (wall ms, median)."""
    sets = [
        _compiler_options([p for p in spec.split(",") if p and p != "default"])
        for spec in args.option_sets
    ]
    problems = _problems(args)
    jax.jit(lambda x: jnp.exp(x).sum()).lower(jnp.ones(3)).compile()
    times, kernels, runs = {}, {}, {}
    jobs = [(name, what) for name in args.cases for what in args.what]
    for r, order in _rounds(args.repeats, len(sets)):
        for name, what in jobs:
            C, fns = problems[name]
            for i in order:
                (_, _, seconds), _, compiled = _time_once(fns[what], C, sets[i])
                times.setdefault((name, what, i), []).append(seconds)
                kernels[(name, what, i)] = _fusions(compiled)
                if args.run_repeats and r == args.repeats - 1:
                    runs[(name, what, i)] = _run_ms(compiled, C, args.run_repeats)
    print(
        f"jax {jax.__version__}, XLA compile CPU s, median of {args.repeats} "
        "interleaved compilations (fused kernels in brackets)"
        + (f"; run ms, median of {args.run_repeats}" if args.run_repeats else "")
    )
    for i, spec in enumerate(args.option_sets):
        print(f"  [{i}] {spec or 'default'}")
    for name, what in jobs:
        med = [statistics.median(times[(name, what, i)]) for i in range(len(sets))]
        line = f"{name:18s} {what:9s}"
        for i, m in enumerate(med):
            line += f"  [{i}] {m:5.2f} s ({kernels[(name, what, i)]:3d})"
            if i:
                line += f" {m / med[0]:4.2f}x"
            if runs:
                line += f" {runs[(name, what, i)]:7.1f} ms"
                if i:
                    line += f" {runs[(name, what, i)] / runs[(name, what, 0)]:4.2f}x"
        print(line, flush=True)


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
    parser.add_argument(
        "--cases", nargs="*", default=DEFAULT_CASES, choices=list(CASES)
    )
    parser.add_argument("--what", nargs="*", default=["forward", "gradient"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eta", type=float, default=1200.0)
    parser.add_argument("--ops", action="store_true", help="count the lowered ops")
    parser.add_argument(
        "--compiler-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an XLA compiler option, e.g. xla_backend_optimization_level=0",
    )
    parser.add_argument(
        "--run-repeats",
        type=int,
        default=0,
        help="also time the compiled function (median of N calls, ms)",
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="DIR",
        help="source trees to compare, interleaved (see the module docstring)",
    )
    parser.add_argument(
        "--option-sets",
        nargs="+",
        metavar="SET",
        help="XLA option sets to compare in this process, interleaved: each "
        "KEY=VALUE[,KEY=VALUE...] or 'default'",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _worker(args)
    if args.compare:
        return _compare(args)
    if args.option_sets:
        return _compare_options(args)
    compiler_options = _compiler_options(args.compiler_option)
    print(
        f"jax {jax.__version__}, median of {args.repeats} fresh compilations "
        "(CPU seconds)"
    )
    header = f"{'case':16s} {'what':9s} {'trace':>7s} {'lower':>7s} {'compile':>8s}"
    header += f" {'total':>7s} {'fusions':>8s}"
    if args.run_repeats:
        header += f" {'run ms':>8s}"
    if args.ops:
        header += "   while  cond  sort  cc   calls    ops"
    print(header)
    # XLA's first compilation in a process sets up its compiler: not counted.
    jax.jit(lambda x: jnp.exp(x).sum()).lower(jnp.ones(3)).compile()
    for name, (C, fns) in _problems(args).items():
        for what in args.what:
            times, lowered, compiled = [], None, None
            for _ in range(args.repeats):
                t, lowered, compiled = _time_once(fns[what], C, compiler_options)
                times.append(t)
            fusions = _fusions(compiled)
            tr, lo, co = (statistics.median(x) for x in zip(*times, strict=True))
            line = (
                f"{name:16s} {what:9s} {tr:7.2f} {lo:7.2f} {co:8.2f} "
                f"{tr + lo + co:7.2f} {fusions:8d}"
            )
            if args.run_repeats:
                line += f" {_run_ms(compiled, C, args.run_repeats):8.1f}"
            if args.ops:
                c = count_ops(lowered.as_text())
                line += (
                    f"   {c['while']:5d} {c['cond']:5d} {c['sort']:5d} "
                    f"{c['custom_call']:3d} {c['call']:6d} {c['ops']:6d}"
                )
            print(line, flush=True)


if __name__ == "__main__":
    main()
