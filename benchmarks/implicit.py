"""Hypergradient benchmark: implicit differentiation in jaxsolve, JAXopt and
Optimistix, against unrolling, side by side.

Problem (bilevel ridge-logistic regression, float64 throughout)::

    w*(lam) = argmin_w  logistic_loss(w; X_train, y_train) + lam/2 ||w||^2
    h(lam)  = logistic_loss(w*(lam); X_val, y_val)

and we compute ``dh/dlam``, the hypergradient with respect to the l2 strength, for
``d`` features and ``T`` inner iterations. The inner problem is solved by the *same*
solver for every method: plain gradient descent, ``T`` steps of size ``1 / L`` with
``L = ||X_train||_2^2 / (4 n) + lam`` (a Lipschitz constant of the inner gradient),
started from zero. Only the way the derivative of ``w*`` is obtained differs:

* ``jaxsolve``: ``jaxsolve.custom_root(F, solve="cg")`` with ``F = grad_w`` of the
  inner objective (the Hessian ``dF/dw`` is symmetric positive definite).
* ``jaxopt-cg``: ``jaxopt.implicit_diff.custom_root`` with
  ``jaxopt.linear_solve.solve_cg``, JAXopt's best choice for an SPD Hessian. It is
  the reference of the ratio columns.
* ``jaxopt-normal-cg``: the same with JAXopt's default linear solver,
  ``solve_normal_cg`` (CG on ``H^T H``: two Hessian products per step and a squared
  condition number).
* ``optimistix``: ``implicit_jvp`` (what ``optimistix.ImplicitAdjoint`` runs on;
  ``optimistix.internal.implicit_jvp`` in optimistix 0.1) with ``lineax.CG`` and
  symmetric / positive-semidefinite tags.
* ``unrolled``: reverse-mode differentiation straight through the ``T`` steps of the
  gradient-descent loop (``lax.fori_loop`` of static length, i.e. a ``scan``).

The linear solves of the implicit methods use the same tolerance ``--tol`` (default
1e-10; JAXopt's own default would be 1e-5). jaxsolve and JAXopt stop when
``||r||_2 <= tol ||b||_2``; lineax's CG has its own rule (element-wise
``|r_i| <= atol + rtol |b_i|`` plus a step-size test) and gets ``rtol = atol = tol``.

Columns of the table:

* ``grad ms``: one call of the jitted ``jax.grad(h)`` (inner solve + backward pass).
  Each function is called through ``jax.jit`` after a warm-up call, so compilation
  is excluded and the call takes JAX's C++ dispatch path, as in a user's training
  loop; each call is waited for with ``block_until_ready`` and timed with
  ``time.perf_counter``. (With ``--aot`` the ahead-of-time ``Compiled`` objects,
  ``jit(...).lower(...).compile()``, are called instead: JAX refuses its C++
  dispatch to a ``Compiled`` whose program contains a host callback, and every
  ``throw=True`` error check (``equinox.error_if``) holds one, so each such call
  then pays about 0.1 ms of Python dispatch that a ``jax.jit`` call does not.)
  A first call is a warm-up; calls much shorter than 20 ms are timed in batches
  (the mean of the batch is one sample). The value is the median of ``--repeats``
  samples, taken round-robin over the methods (one sample of each per round) so
  that background load hits them alike.
* ``bwd ms``: the backward pass alone: ``jax.vjp(h)`` is run once (jitted), and the
  jitted call of the returned ``vjp`` function on the cotangent 1.0 is timed the
  same way (``--bwd-repeats`` samples). For the implicit methods this is the adjoint
  linear solve and little else; the forward pass is the same gradient descent for
  every method and dominates ``grad ms`` when ``T`` is large.
* ``temp MiB``: the scratch memory of the compiled ``grad`` executable,
  ``compiled.memory_analysis().temp_size_in_bytes``: XLA's buffer assignment of
  every buffer that is neither an argument nor an output (e.g. what the unrolled
  backward pass stores for each of the ``T`` steps). ``total MiB`` adds the
  arguments and outputs (``argument_size_in_bytes + output_size_in_bytes -
  alias_size_in_bytes``); the data arrays are arguments, the same for every method.
  These are the compiler's static figures, not a measured resident set size.
  (``peak_memory_in_bytes`` is not used: on the CPU backend it leaves out the
  temporaries.)
* ``|dg|``: ``|hypergradient - jaxsolve's hypergradient|``. The implicit methods
  agree up to the linear-solve tolerance; ``unrolled`` differs by more where
  gradient descent has not converged (``||F(w_T)||`` is printed for each size).
* ``compile s``: tracing + compiling ``jit(grad(h))``, for information.

Run from the repository root with the package importable::

    PYTHONPATH=. python benchmarks/implicit.py            # full run
    PYTHONPATH=. python benchmarks/implicit.py --quick    # smoke test, one tiny size

(``--help`` lists the options). ``main(argv)`` can be called from Python, e.g.
``main(["--quick"])``; it returns the table's rows and turns 64-bit mode on only for
the duration of the run.
"""

import argparse
import functools
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

try:
    import jaxsolve
except ModuleNotFoundError:  # run from a source checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import jaxsolve

from jaxsolve import custom_root
from jaxsolve.problems import (
    logistic_loss,
    make_classification,
    ridge_logistic_objective,
)

MIB = 2.0**20
REFERENCE = "jaxopt-cg"
METHODS = ("jaxsolve", "jaxopt-cg", "jaxopt-normal-cg", "optimistix", "unrolled")


# --------------------------------------------------------------------------------------
# The inner problem and its solver (shared by every method)


def optimality(w, lam, X, y):
    """``F(w, lam) = grad_w`` of the inner objective; zero at ``w*(lam)``."""
    return jax.grad(ridge_logistic_objective)(w, lam, X, y)


def gradient_descent(init, lam, X, y, sq_norm_x: float, num_steps: int):
    """``num_steps`` steps of gradient descent with step ``1 / L``,
    ``L = ||X||_2^2 / (4 n) + lam`` (``sq_norm_x = ||X||_2^2`` is a constant)."""
    step = 1.0 / (sq_norm_x / (4 * X.shape[0]) + lam)

    def body(_, w):
        return w - step * optimality(w, lam, X, y)

    return jax.lax.fori_loop(0, num_steps, body, init)


# Optimistix's implicit_jvp wants global functions that close over nothing: the data
# travel in `inputs` (arrays are differentiated, Python numbers are static).
def _optx_primal(inputs):
    lam, X, y, sq_norm_x, num_steps = inputs
    init = jnp.zeros(X.shape[1], X.dtype)
    return gradient_descent(init, lam, X, y, sq_norm_x, num_steps), None


def _optx_rewrite(root, residual, inputs):
    del residual
    lam, X, y, _, _ = inputs
    return optimality(root, lam, X, y)


# --------------------------------------------------------------------------------------
# The methods: each returns ``h(lam, X_train, y_train, X_val, y_val)``


def _outer(solve_inner: Callable) -> Callable:
    def h(lam, X_train, y_train, X_val, y_val):
        w = solve_inner(lam, X_train, y_train)
        return logistic_loss(w, X_val, y_val)

    return h


def make_methods(sq_norm_x: float, num_steps: int, tol: float) -> dict[str, Callable]:
    """The hypergradient objectives ``h(lam, data...)``, one per method."""
    import jaxopt
    import lineax as lx

    try:  # optimistix >= 0.1 keeps it in `internal`; older versions export it
        from optimistix.internal import implicit_jvp
    except ImportError:  # pragma: no cover
        from optimistix import implicit_jvp

    def inner(init, lam, X, y):
        return gradient_descent(init, lam, X, y, sq_norm_x, num_steps)

    def from_decorator(decorator):
        solver = decorator(inner)
        return lambda lam, X, y: solver(jnp.zeros(X.shape[1], X.dtype), lam, X, y)

    def optimistix_inner(lam, X, y):
        inputs = (lam, X, y, sq_norm_x, num_steps)
        tags = frozenset({lx.symmetric_tag, lx.positive_semidefinite_tag})
        w, _ = implicit_jvp(
            _optx_primal,
            _optx_rewrite,
            inputs,
            tags,
            lx.CG(rtol=tol, atol=tol),
        )
        return w

    def unrolled_inner(lam, X, y):
        return inner(jnp.zeros(X.shape[1], X.dtype), lam, X, y)

    jaxopt_cg = functools.partial(jaxopt.linear_solve.solve_cg, tol=tol)
    jaxopt_ncg = functools.partial(jaxopt.linear_solve.solve_normal_cg, tol=tol)
    return {
        "jaxsolve": _outer(
            from_decorator(
                custom_root(optimality, solve="cg", solve_options={"rtol": tol})
            )
        ),
        REFERENCE: _outer(
            from_decorator(
                jaxopt.implicit_diff.custom_root(optimality, solve=jaxopt_cg)
            )
        ),
        "jaxopt-normal-cg": _outer(
            from_decorator(
                jaxopt.implicit_diff.custom_root(optimality, solve=jaxopt_ncg)
            )
        ),
        "optimistix": _outer(optimistix_inner),
        "unrolled": _outer(unrolled_inner),
    }


# --------------------------------------------------------------------------------------
# Measurement


@dataclass
class Compiled:
    """The ahead-of-time compiled pieces of one method at one size."""

    grad: Callable  # data -> hypergradient
    bwd: Callable  # () -> hypergradient, the backward pass only
    temp_bytes: int
    total_bytes: int
    compile_s: float


def compile_method(h: Callable, lam, data: tuple, aot: bool = False) -> Compiled:
    """``aot``: time the ``Compiled`` objects rather than ``jax.jit`` calls."""
    start = time.perf_counter()
    grad = jax.jit(jax.grad(h)).lower(lam, *data).compile()
    compile_s = time.perf_counter() - start
    mem = grad.memory_analysis()
    temp = int(mem.temp_size_in_bytes)
    total = (
        int(mem.argument_size_in_bytes)
        + int(mem.output_size_in_bytes)
        - int(mem.alias_size_in_bytes)
        + temp
    )

    # The backward pass alone: run the forward pass once, keep its residuals (the
    # `vjp` function is a pytree of arrays), then time `vjp(1.0)`.
    def forward(lam, *data):
        return jax.vjp(lambda lam_: h(lam_, *data), lam)

    _, vjp_fn = jax.jit(forward)(lam, *data)
    cotangent = jnp.ones_like(lam)
    bwd_jit = jax.jit(lambda f, ct: f(ct))
    bwd_compiled = bwd_jit.lower(vjp_fn, cotangent).compile()
    jax.block_until_ready(vjp_fn)
    if not aot:
        # Same programs, called the way a training loop calls them (the
        # warm-up call compiles once more, outside the timing).
        grad, bwd_compiled = jax.jit(jax.grad(h)), bwd_jit
        jax.block_until_ready((grad(lam, *data), bwd_compiled(vjp_fn, cotangent)))

    return Compiled(
        grad=lambda: grad(lam, *data),
        bwd=lambda: bwd_compiled(vjp_fn, cotangent)[0],
        temp_bytes=temp,
        total_bytes=total,
        compile_s=compile_s,
    )


def _time_calls(fn: Callable, number: int) -> float:
    """Seconds per call, over ``number`` calls (each one waited for)."""
    start = time.perf_counter()
    for _ in range(number):
        jax.block_until_ready(fn())
    return (time.perf_counter() - start) / number


def time_round_robin(
    fns: dict[str, Callable], repeats: int, min_sample_s: float = 0.02
) -> dict[str, float]:
    """Median seconds per call of each function over ``repeats`` samples, taken
    round-robin (one sample of each function per round).

    A first call of each function is a warm-up and calibration; functions faster
    than ``min_sample_s`` are called several times per sample (the sample is then
    the mean over those calls) so that timer and scheduling noise stay small.
    """
    number = {}
    for name, fn in fns.items():
        first = _time_calls(fn, 1)
        number[name] = max(1, min(1000, int(min_sample_s / max(first, 1e-9))))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(_time_calls(fn, number[name]))
    return {name: statistics.median(s) for name, s in samples.items()}


@dataclass
class Row:
    d: int
    steps: int
    method: str
    grad_s: float
    bwd_s: float
    temp_bytes: int
    total_bytes: int
    compile_s: float
    hypergrad: float
    diff: float


def run_size(args, d: int, num_steps: int) -> tuple[list[Row], dict]:
    key = jax.random.PRNGKey(args.seed)
    X, y = make_classification(key, args.n_samples, d)
    n_train = int(round(args.train_fraction * args.n_samples))
    X_train, y_train, X_val, y_val = X[:n_train], y[:n_train], X[n_train:], y[n_train:]
    data = (X_train, y_train, X_val, y_val)
    lam = jnp.asarray(args.lam, X.dtype)
    sq_norm_x = float(np.linalg.norm(np.asarray(X_train), 2) ** 2)

    methods = make_methods(sq_norm_x, num_steps, args.tol)
    methods = {k: v for k, v in methods.items() if k in args.methods}
    compiled = {
        name: compile_method(h, lam, data, args.aot) for name, h in methods.items()
    }
    hypergrads = {name: float(c.grad()) for name, c in compiled.items()}
    grads = {name: c.grad for name, c in compiled.items()}
    grad_times = time_round_robin(grads, args.repeats)
    bwds = {name: c.bwd for name, c in compiled.items()}
    bwd_times = time_round_robin(bwds, args.bwd_repeats or 3 * args.repeats)

    w_final = jax.jit(gradient_descent, static_argnums=(4, 5))(
        jnp.zeros(d, X.dtype), lam, X_train, y_train, sq_norm_x, num_steps
    )
    info = {
        "n_train": n_train,
        "n_val": args.n_samples - n_train,
        "inner_residual": float(
            jnp.linalg.norm(optimality(w_final, lam, X_train, y_train))
        ),
    }
    ref = next(iter(hypergrads.values()))  # jaxsolve's unless left out
    rows = [
        Row(
            d=d,
            steps=num_steps,
            method=name,
            grad_s=grad_times[name],
            bwd_s=bwd_times[name],
            temp_bytes=c.temp_bytes,
            total_bytes=c.total_bytes,
            compile_s=c.compile_s,
            hypergrad=hypergrads[name],
            diff=abs(hypergrads[name] - ref),
        )
        for name, c in compiled.items()
    ]
    return rows, info


# --------------------------------------------------------------------------------------
# Output


def _ratio(x: float, ref: float | None) -> str:
    if ref is None or ref == 0:
        return "-"
    return f"{x / ref:.2f}"


def format_table(rows: list[Row]) -> str:
    header = (
        "| d | T | method | grad ms | vs jaxopt | bwd ms | vs jaxopt "
        "| temp MiB | total MiB | vs jaxopt | |dg| | compile s |"
    )
    lines = [header, "|---:|---:|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ref = next(
            (x for x in rows if (x.d, x.steps, x.method) == (r.d, r.steps, REFERENCE)),
            None,
        )
        lines.append(
            f"| {r.d} | {r.steps} | {r.method} "
            f"| {1e3 * r.grad_s:.2f} | {_ratio(r.grad_s, ref and ref.grad_s)} "
            f"| {1e3 * r.bwd_s:.2f} | {_ratio(r.bwd_s, ref and ref.bwd_s)} "
            f"| {r.temp_bytes / MIB:.3f} | {r.total_bytes / MIB:.2f} "
            f"| {_ratio(r.total_bytes, ref and ref.total_bytes)} "
            f"| {r.diff:.1e} | {r.compile_s:.1f} |"
        )
    return "\n".join(lines)


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = [f"jaxsolve {jaxsolve.__version__}"]
    for package in ("jax", "jaxopt", "optimistix", "lineax"):
        try:
            out.append(f"{package} {version(package)}")
        except PackageNotFoundError:  # pragma: no cover
            out.append(f"{package} ?")
    return ", ".join(out)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: d=50, T=20, 200 samples, 3 repeats (overrides those)",
    )
    parser.add_argument(
        "--features", type=int, nargs="+", default=[100, 500, 2000], help="d values"
    )
    parser.add_argument(
        "--steps", type=int, nargs="+", default=[100, 1000], help="T values"
    )
    parser.add_argument(
        "--n-samples", type=int, default=1000, help="train + validation samples"
    )
    parser.add_argument("--train-fraction", type=float, default=0.5)
    parser.add_argument("--lam", type=float, default=0.1, help="l2 strength")
    parser.add_argument("--tol", type=float, default=1e-10, help="linear-solve rtol")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed samples of each grad"
    )
    parser.add_argument(
        "--bwd-repeats",
        type=int,
        default=None,
        help="timed samples of each backward pass (None: 3 x --repeats)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--aot",
        action="store_true",
        help="time the ahead-of-time Compiled objects instead of jax.jit calls "
        "(adds Python dispatch to programs that hold a host callback)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(METHODS),
        help="methods to run",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.features, args.steps = [50], [20]
        args.n_samples, args.repeats = 200, 3
    return args


def main(argv=None) -> list[Row]:
    """Run the benchmark, print the table, and return its rows."""
    args = parse_args(argv)
    with jax.enable_x64(True):
        print(
            f"Hypergradient d/dlam of the validation loss, ridge-logistic regression "
            f"(lam = {args.lam}), float64 (jax_enable_x64).\n"
            f"{_versions()}; backend {jax.default_backend()} "
            f"({jax.devices()[0].device_kind}, {platform.machine()}, "
            f"{os.cpu_count()} CPUs); median of {args.repeats} samples "
            f"(grad) / {args.bwd_repeats or 3 * args.repeats} (bwd), compile excluded, "
            f"{'AOT Compiled' if args.aot else 'jax.jit'} calls; "
            f"linear-solve tolerance {args.tol:g}; ratios are vs {REFERENCE}.\n",
            flush=True,
        )
        rows: list[Row] = []
        load_start, clock_start = os.getloadavg()[0], time.perf_counter()
        for d in args.features:
            for num_steps in args.steps:
                start = time.perf_counter()
                size_rows, info = run_size(args, d, num_steps)
                rows += size_rows
                print(
                    f"d={d}, T={num_steps}: n_train={info['n_train']}, "
                    f"n_val={info['n_val']}, ||F(w_T)|| = "
                    f"{info['inner_residual']:.1e}, hypergradient "
                    f"({size_rows[0].method}) = {size_rows[0].hypergrad:.12g} "
                    f"[{time.perf_counter() - start:.1f} s]",
                    flush=True,
                )
        print()
        print(format_table(rows))
        print(
            "\ngrad ms: jitted jax.grad (inner GD + backward), median; bwd ms: the "
            "backward pass alone (vjp on saved residuals), median.\ntemp MiB: XLA "
            "scratch of the compiled grad (memory_analysis().temp_size_in_bytes); "
            "total MiB: temp + arguments + outputs - aliases\n(the data arrays are "
            "arguments, the same for every method). |dg|: |hypergradient - "
            f"{rows[0].method}'s| (same size). compile s: trace + compile of "
            "jit(grad)."
        )
        print(
            f"Run time {time.perf_counter() - clock_start:.0f} s on {os.cpu_count()} "
            f"CPU cores; 1-minute load average {load_start:.1f} at the start, "
            f"{os.getloadavg()[0]:.1f} at the end (above the core count, other "
            "processes competed for the CPU and the timings are noisier)."
        )
    return rows


if __name__ == "__main__":
    main()
