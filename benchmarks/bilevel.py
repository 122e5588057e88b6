"""Bilevel benchmark: jaxsolve.bilevel's methods side by side (one run, float64).

1. **LV-HBA toy** (Yao et al., ICLR 2024; ``jaxsolve.problems.bilevel.lv_hba_toy``,
   known solution): the relative error after the paper's 1500 iterations with the
   paper's step sizes, and the iterations and wall-clock to a relative error of
   1e-3 with the tuned ones.
2. **Data hyper-cleaning** on scikit-learn's digits (50% of the training labels
   corrupted): test accuracy of the model trained with the learned sample weights,
   precision/recall of the corrupted samples (weight < 1/2) and the AUC of the
   weights (the chance that a clean sample outweighs a corrupted one), wall-clock,
   for AID (with and without recycled backward solves), LV-HBA, BO-REP and ITD,
   against "train on everything" and "train on the clean subset" (the oracle);
   ``gap %`` is the share of the accuracy gap between the two that a method
   recovers. AID's backward Hessian products per step (after 10 warm-up steps) are
   reported with and without recycling.
3. **Hypergradient cost** on the hyper-cleaning problem at a fixed ``(x, y ~
   y*(x))`` (300 sample weights, 650 model parameters): ``bilevel.hypergradient``
   (the adjoint solve by CG), ``jax.grad`` through ``jaxsolve.custom_root``
   (``bilevel.implicit_lower``), ``jaxopt.implicit_diff.custom_root`` with
   ``solve_cg`` and ``optimistix`` (``implicit_jvp`` with ``lineax.CG``), all to
   the same tolerance; median of repeats after a warm-up (compilation excluded).

Run from the repository root: ``nice -n 10 python benchmarks/bilevel.py``
(``--quick``: fewer steps).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

try:
    import jaxsolve  # noqa: F401
except ModuleNotFoundError:  # a source checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxsolve import bilevel
from jaxsolve.problems.bilevel import accuracy, hyper_cleaning, lv_hba_toy


def _table(rows, headers):
    widths = [
        max(len(h), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    print()


def _timed_run(method, x0, y0, data, steps, chunk):
    bilevel.run(method, x0, y0, *data, steps=steps, progress=False, chunk=chunk)
    t0 = time.perf_counter()  # second call: compiled
    sol = bilevel.run(method, x0, y0, *data, steps=steps, progress=False, chunk=chunk)
    jax.block_until_ready(sol.value)
    return sol, time.perf_counter() - t0


# --- 1. the toy -----------------------------------------------------------------------


def toy(quick: bool):
    task = lv_hba_toy()
    rows = []
    paper = bilevel.lv_hba(
        task.upper,
        task.lower,
        constraint=task.constraint,
        project=task.project,
        equality=True,
    )
    sol, seconds = _timed_run(paper, task.x0, task.y0, task.data, 1500, 500)
    err = float(task.extra["relative_error"](*sol.value))
    rows.append(["paper's steps (a=0.008, eta=0.01, g=10)", 1500, f"{err:.3g}", "-"])
    tuned = bilevel.lv_hba(
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
    block = 2000
    steps_max = 60_000 if quick else 300_000
    init = jax.jit(tuned.init)
    advance = jax.jit(
        lambda s: jax.lax.fori_loop(0, block, lambda i, s: tuned.step(s), s)
    )
    state = advance(init(task.x0, task.y0))  # compile
    jax.block_until_ready(state.x)
    state = init(task.x0, task.y0)
    t0 = time.perf_counter()
    steps, err = 0, float("inf")
    while steps < steps_max:
        state = advance(state)
        steps += block
        err = float(task.extra["relative_error"](state.x, state.y))
        if err <= 1e-3:
            break
    seconds = time.perf_counter() - t0
    rows.append(
        [
            "tuned (a=0.008, eta=0.012, g=1, c_k=4(k+1)^0.49)",
            steps,
            f"{err:.3g}",
            f"{seconds:.2f}",
        ]
    )
    print(
        "LV-HBA toy (x in R^100, y in R^200; iterations to rel. error 1e-3, "
        f"checked every {block})"
    )
    _table(rows, ["settings", "iterations", "rel. error", "seconds"])


# --- 2. hyper-cleaning ---------------------------------------------------------------


def _train(task, x, steps=1500):
    inner = jax.jit(bilevel.gradient_steps(task.lower, 5.0, steps))
    return inner(x, task.y0, *task.data)


def cleaning(quick: bool):
    task = hyper_cleaning()
    X_test, t_test = task.extra["X_test"], task.extra["test_labels"]
    corrupted = np.asarray(task.extra["corrupted"])
    n = corrupted.size

    def test_acc(x):
        return float(accuracy(_train(task, x), X_test, t_test))

    everything = test_acc(jnp.full((n,), 30.0))
    clean = test_acc(jnp.where(task.extra["corrupted"], -30.0, 30.0))
    steps = 60 if quick else 200
    common = dict(inner_lr=5.0, inner_steps=20)
    methods = {
        "AID": bilevel.aid(task.upper, task.lower, optimizer=optax.adam(0.1), **common),
        "AID recycled": bilevel.aid(
            task.upper, task.lower, optimizer=optax.adam(0.1), recycle=True, **common
        ),
        # The adjoint step must stay below 2 / L (L ~ 0.8 here).
        "BO-REP": bilevel.bo_rep(
            task.upper,
            task.lower,
            learning_rate=1.0,
            inner_lr=4.0,
            inner_steps=20,
            adjoint_lr=2.0,
            init_inner_steps=200,
        ),
        "ITD": bilevel.itd(task.upper, task.lower, optimizer=optax.adam(0.1), **common),
        # Single loop: a step is one gradient of f, F and theta (no inner loop),
        # so it runs 20x the steps, about the wall-clock of the others.
        "LV-HBA": bilevel.lv_hba(
            task.upper,
            task.lower,
            alpha=5.0,
            eta=5.0,
            gamma1=20.0,
            gamma2=20.0,
            c0=0.05,
            c_power=0.3,
        ),
    }
    rows = [
        ["train on everything", "-", f"{everything:.4f}", "0", "-", "-", "-", "-", "-"],
        [
            "train on the clean subset",
            "-",
            f"{clean:.4f}",
            "100",
            "-",
            "-",
            "-",
            "-",
            "-",
        ],
    ]
    for name, method in methods.items():
        n_steps = 20 * steps if name == "LV-HBA" else steps
        sol, seconds = _timed_run(method, task.x0, task.y0, task.data, n_steps, 20)
        x = sol.value[0]
        acc = test_acc(x)
        w = np.asarray(jax.nn.sigmoid(x))
        flagged = w < 0.5
        tp = np.sum(flagged & corrupted)
        precision = tp / max(flagged.sum(), 1)
        recall = tp / corrupted.sum()
        # AUC: the chance that a clean sample outweighs a corrupted one.
        auc = np.mean(w[~corrupted][:, None] > w[corrupted][None, :])
        gap = 100 * (acc - everything) / (clean - everything)
        matvecs = "-"
        if "backward_matvecs" in sol.stats:
            matvecs = f"{np.mean(np.asarray(sol.stats['backward_matvecs'])[10:]):.1f}"
        rows.append(
            [
                name,
                n_steps,
                f"{acc:.4f}",
                f"{gap:.0f}",
                f"{precision:.2f}",
                f"{recall:.2f}",
                f"{auc:.3f}",
                f"{seconds:.2f}",
                matvecs,
            ]
        )
    print(
        f"Data hyper-cleaning, digits: {n} training samples (50% corrupted), "
        f"{task.data[2].shape[0]} validation, {X_test.shape[0]} test"
    )
    _table(
        rows,
        [
            "method",
            "steps",
            "test acc",
            "gap %",
            "precision",
            "recall",
            "AUC",
            "seconds",
            "bwd matvecs/step",
        ],
    )


# --- 3. hypergradient cost -----------------------------------------------------------


# Optimistix's implicit_jvp wants global functions that close over nothing.
_OPTX_TASK: dict = {}


def _optx_primal(inputs):
    _, y, _ = inputs
    return jax.lax.stop_gradient(y), None


def _optx_rewrite(root, residual, inputs):
    del residual
    x, _, data = inputs
    return jax.grad(_OPTX_TASK["lower"], argnums=1)(x, root, *data)


def hypergradient_cost(quick: bool):
    import jaxopt
    import lineax as lx
    from optimistix.internal import implicit_jvp

    task = hyper_cleaning(n_train=300, n_val=200)
    x = 0.3 * jax.random.normal(jax.random.PRNGKey(0), task.x0.shape)
    y = _train(task, x, 3000)
    data = task.data
    tol = 1e-10

    def optimality(y_, x_, *d):
        return jax.grad(task.lower, argnums=1)(x_, y_, *d)

    def given(y_init, x_, *d):  # the lower solution is precomputed: y
        del x_, d
        return y_init

    def outer(y_star):
        return lambda x_: task.upper(x_, y_star(x_), *data)

    fns = {}
    fns["bilevel.hypergradient (adjoint CG)"] = jax.jit(
        lambda x_: bilevel.hypergradient(
            task.upper, task.lower, x_, y, *data, rtol=tol
        )[0]
    )
    ys = bilevel.implicit_lower(
        task.lower, lambda x_, y_, *d: y_, solve_options={"rtol": tol}
    )
    fns["jax.grad via jaxsolve.custom_root(cg)"] = jax.jit(
        jax.grad(outer(lambda x_: ys(x_, y, *data)))
    )
    jaxopt_root = jaxopt.implicit_diff.custom_root(
        optimality, solve=lambda mv, b: jaxopt.linear_solve.solve_cg(mv, b, tol=tol)
    )(given)
    fns["jax.grad via jaxopt custom_root(solve_cg)"] = jax.jit(
        jax.grad(outer(lambda x_: jaxopt_root(y, x_, *data)))
    )

    _OPTX_TASK["lower"] = task.lower

    def optx_y(x_):
        tags = frozenset({lx.symmetric_tag, lx.positive_semidefinite_tag})
        root, _ = implicit_jvp(
            _optx_primal, _optx_rewrite, (x_, y, data), tags, lx.CG(rtol=tol, atol=tol)
        )
        return root

    fns["jax.grad via optimistix implicit_jvp(CG)"] = jax.jit(jax.grad(outer(optx_y)))
    reference = fns["bilevel.hypergradient (adjoint CG)"](x)
    ref_flat = jax.flatten_util.ravel_pytree(reference)[0]
    for fn in fns.values():
        jax.block_until_ready(fn(x))
    # Round-robin: one sample of each method per round, so background load
    # hits them alike; the median of the rounds.
    samples = {name: [] for name in fns}
    for _ in range(5 if quick else 25):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(x))
            samples[name].append(time.perf_counter() - t0)
    rows = []
    base = statistics.median(samples["bilevel.hypergradient (adjoint CG)"])
    for name, fn in fns.items():
        seconds = statistics.median(samples[name])
        g = jax.flatten_util.ravel_pytree(fn(x))[0]
        err = float(jnp.linalg.norm(g - ref_flat) / jnp.linalg.norm(ref_flat))
        rows.append(
            [name, f"{1e3 * seconds:.2f}", f"{seconds / base:.2f}", f"{err:.1e}"]
        )
    print(
        "Hypergradient at a fixed (x, y*(x)), hyper-cleaning 300 weights / 650 "
        f"parameters, CG to rtol {tol:g} (median ms)"
    )
    _table(rows, ["method", "ms", "ratio", "rel. diff"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["toy", "cleaning", "hypergradient"])
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}\n")
    if args.only in (None, "toy"):
        toy(args.quick)
    if args.only in (None, "cleaning"):
        cleaning(args.quick)
    if args.only in (None, "hypergradient"):
        hypergradient_cost(args.quick)


if __name__ == "__main__":
    main()
