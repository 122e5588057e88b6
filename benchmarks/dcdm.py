"""DCDM benchmark: the learned solver against CG, Jacobi-PCG, incomplete-factorisation
PCG and pyamg's smoothed-aggregation multigrid PCG, side by side (issue 10).

Problems: the pressure-Poisson operator with obstacles
(``jaxsolve.problems.poisson_obstacles``, Dirichlet boundary) on 2-D grids 64^2,
128^2, 256^2 and 3-D grids 32^3, 64^3, with obstacle layouts never seen in training
(the shipped networks were trained on the obstacle-free Laplacian only, 64^2 in 2-D
and 16^3 then 32^3 in 3-D), a divergence right-hand side (``obstacle_rhs``),
relative residual 1e-6, float64 throughout.

Columns, per method: iterations, operator products (``matvecs``), wall-clock.

* ``dcdm``: ``jaxsolve.dcdm`` with the shipped model (one model at every size).
* ``cg``, ``jacobi-pcg``: ``jaxsolve.cg`` without and with the inverse diagonal.
* ``ic-pcg``: scipy ``cg`` preconditioned by incomplete Cholesky IC(0) (our own
  few lines below: scipy has no IC, and its ``spilu`` with limited fill is not
  symmetric, which breaks CG); its setup time is inside its column.
* ``pyamg``: ``pyamg.smoothed_aggregation_solver(A).solve(b, accel="cg")``, the
  outside multigrid reference; setup time reported separately.

Timing: jaxsolve functions are jitted and compiled ahead of time (compilation
excluded; a warm-up solve would double a 3-D run); every figure is the median of
``--repeats`` runs. The network's cost per call is timed on its own (``net ms``).
A CPU here is slow at convolutions: the network dominates DCDM's time;
``benchmarks/gpu_check.py`` times it on a GPU.

    python benchmarks/dcdm.py [--sizes2d 64 128 256] [--sizes3d 32 64] [--repeats 3]
        [--orthogonalize K] [--model2d FILE] [--model3d FILE]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import inspect  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse as sparse  # noqa: E402
import scipy.sparse.linalg as spla  # noqa: E402

import jaxsolve  # noqa: E402
from jaxsolve.problems import obstacle_layout, obstacle_rhs, poisson_obstacles  # noqa: E402

RTOL = 1e-6


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _jaxsolve_rows(a, b, model, repeats, max_steps, orthogonalize):
    rows = {}
    inv_diag = 1.0 / a.diagonal()
    methods = {
        "cg": lambda b: jaxsolve.cg(a, b, rtol=RTOL, max_steps=max_steps, throw=False),
        "jacobi-pcg": lambda b: jaxsolve.cg(
            a, b, rtol=RTOL, max_steps=max_steps, preconditioner=lambda v: inv_diag * v,
            throw=False,
        ),
    }  # fmt: skip
    if model is not None:
        methods = {
            "dcdm": lambda b: jaxsolve.dcdm(
                a,
                b,
                model=model,
                rtol=RTOL,
                max_steps=max_steps,
                throw=False,
                **orthogonalize,
            ),
            **methods,
        }
    for name, fn in methods.items():
        # compiled ahead of time, not by a first run: a 3-D DCDM solve on a CPU
        # takes minutes, and a warm-up solve would double it
        f = jax.jit(fn).lower(b).compile()
        seconds, sol = _median_time(lambda f=f: f(b), repeats)
        rel = float(jnp.linalg.norm(a(sol.value) - b) / jnp.linalg.norm(b))
        rows[name] = {
            "iters": int(sol.num_steps),
            "matvecs": int(sol.stats["matvecs"]),
            "seconds": seconds,
            "ok": bool(sol.succeeded) and rel <= 1.01 * RTOL,
            "rel": rel,
        }
    if model is not None:
        net = jax.jit(lambda r: model(r))
        r = b / jnp.linalg.norm(b)
        jax.block_until_ready(net(r))
        rows["dcdm"]["net_ms"] = 1e3 * _median_time(lambda: net(r), max(3, repeats))[0]
    return rows


def _ic0(m):
    """Incomplete Cholesky IC(0) of an SPD matrix with a 5/7-point pattern, as
    ``M = (D + L) D^-1 (D + L^T)`` (``L`` the strict lower triangle of ``A``): for
    these stencils IC(0) produces no fill, so only the pivots ``d_i = a_ii - sum_j
    a_ij^2 / d_j`` (``j < i`` neighbours) are computed. Returns ``v -> M^-1 v``
    (two sparse triangular solves)."""
    low = sparse.tril(m, -1).tocsr()
    diag = m.diagonal()
    d = diag.copy()
    indptr, indices, data = low.indptr, low.indices, low.data
    for i in range(m.shape[0]):
        s, e = indptr[i], indptr[i + 1]
        if e > s:
            d[i] = diag[i] - np.sum(data[s:e] ** 2 / d[indices[s:e]])
    lower = (low + sparse.diags(d)).tocsr()
    upper = lower.T.tocsr()

    def apply(v):
        y = spla.spsolve_triangular(lower, v, lower=True)
        return spla.spsolve_triangular(upper, d * y, lower=False)

    return apply


def _scipy_rows(a, b, repeats, max_steps):
    m = a.to_scipy().tocsc()
    rhs = np.asarray(b).ravel()
    nb = np.linalg.norm(rhs)
    rows = {}

    def ic_solve():
        apply = _ic0(m)
        prec = spla.LinearOperator(m.shape, apply)
        count = []
        x, info = spla.cg(
            m, rhs, rtol=RTOL, maxiter=max_steps, M=prec,
            callback=lambda xk: count.append(1),
        )  # fmt: skip
        return x, info, len(count)

    seconds, (x, info, iters) = _median_time(ic_solve, repeats)
    rows["ic-pcg"] = {
        "iters": iters, "matvecs": iters + 1, "seconds": seconds,
        "ok": info == 0, "rel": float(np.linalg.norm(m @ x - rhs) / nb),
    }  # fmt: skip
    try:
        import pyamg
    except ImportError:
        return rows
    mcsr = m.tocsr()
    setup, ml = _median_time(lambda: pyamg.smoothed_aggregation_solver(mcsr), repeats)

    def amg_solve():
        res = []
        x = ml.solve(rhs, tol=RTOL, accel="cg", maxiter=max_steps, residuals=res)
        return x, res

    seconds, (x, res) = _median_time(amg_solve, repeats)
    rel = float(np.linalg.norm(mcsr @ x - rhs) / nb)
    rows["pyamg"] = {
        "iters": len(res) - 1, "matvecs": None, "seconds": seconds, "setup": setup,
        "ok": rel <= 1.01 * RTOL, "rel": rel,
    }  # fmt: skip
    return rows


def run_case(dim, n, kind, seed, model, repeats, max_steps, orthogonalize):
    solid = obstacle_layout(n, kind, dim=dim, seed=seed)
    a = poisson_obstacles(solid)
    b = obstacle_rhs(solid, seed=seed + 1)
    rows = _jaxsolve_rows(a, b, model, repeats, max_steps, orthogonalize)
    rows.update(_scipy_rows(a, b, repeats, max_steps))
    return solid.mean(), rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes2d", type=int, nargs="*", default=[64, 128, 256])
    parser.add_argument("--sizes3d", type=int, nargs="*", default=[32, 64])
    parser.add_argument("--layouts", nargs="*", default=["discs", "blobs"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=5000)
    parser.add_argument("--model2d", default=None, help="weights (default: shipped)")
    parser.add_argument("--model3d", default=None, help="weights (default: shipped)")
    parser.add_argument(
        "--orthogonalize",
        type=int,
        default=None,
        help="DCDM's A-orthogonalisation depth (default: the solver's)",
    )
    args = parser.parse_args()

    from jaxsolve.solvers.linear._dcdm import default_model, load_model

    models = {2: load_model(args.model2d) if args.model2d else default_model(2)}
    models[3] = load_model(args.model3d) if args.model3d else None
    try:
        models[3] = models[3] or default_model(3)
    except ValueError:
        pass
    depth = args.orthogonalize
    if depth is None:
        depth = inspect.signature(jaxsolve.dcdm).parameters["orthogonalize"].default
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; rtol {RTOL}; "
          f"float64; median of {args.repeats}; DCDM orthogonalize={depth}")  # fmt: skip
    cases = [(2, n, k) for n in args.sizes2d for k in args.layouts]
    cases += [(3, n, k) for n in args.sizes3d for k in args.layouts[:1]]
    methods = ["dcdm", "cg", "jacobi-pcg", "ic-pcg", "pyamg"]
    header = f"{'problem':<18}{'solid':>6} | " + " | ".join(f"{m:>18}" for m in methods)
    print("iterations (matvecs) / wall-clock; * = did not reach rtol")
    print(header)
    print("-" * len(header))
    summary = []
    for dim, n, kind in cases:
        seed = 100 + n + (7 if kind == "blobs" else 0) + 1000 * (dim - 2)
        orthogonalize = {}
        if args.orthogonalize is not None:
            orthogonalize["orthogonalize"] = args.orthogonalize
        solid_frac, rows = run_case(
            dim, n, kind, seed, models[dim], args.repeats, args.max_steps,
            orthogonalize,
        )  # fmt: skip
        cells = []
        for m in methods:
            r = rows.get(m)
            if r is None:
                cells.append(f"{'n/a':>18}")
                continue
            mv = "" if r["matvecs"] is None else f"({r['matvecs']})"
            star = "" if r["ok"] else "*"
            cells.append(f"{r['iters']}{mv}{star} {1e3 * r['seconds']:.0f}ms".rjust(18))
        name = f"{n}^{dim} {kind}"
        print(f"{name:<18}{solid_frac:>6.2f} | " + " | ".join(cells), flush=True)
        summary.append((name, rows))
    print()
    print("DCDM against the targets (issue 10): iterations vs CG (<= 1/5 at 128^2),")
    print("vs pyamg (within 3x), network cost per call")
    for name, rows in summary:
        d = rows.get("dcdm")
        if d is None:
            print(f"  {name:<16} dcdm n/a (no model for this dimension)")
            continue
        ratio_cg = d["iters"] / max(1, rows["cg"]["iters"])
        amg = rows.get("pyamg")
        ratio_amg = d["iters"] / max(1, amg["iters"]) if amg else float("nan")
        per_iter = 1e3 * d["seconds"] / max(1, d["iters"])
        cg_per_iter = 1e3 * rows["cg"]["seconds"] / max(1, rows["cg"]["iters"])
        print(
            f"  {name:<16} dcdm/cg iterations {ratio_cg:.3f}, dcdm/pyamg "
            f"{ratio_amg:.1f}x; network {d['net_ms']:.1f} ms/call, "
            f"DCDM {per_iter:.1f} ms/iteration, CG {cg_per_iter:.2f} ms/iteration"
        )
    amg_setup = [
        f"{name}: {1e3 * rows['pyamg']['setup']:.0f}ms"
        for name, rows in summary
        if "pyamg" in rows
    ]
    print("pyamg setup (not in its column): " + ", ".join(amg_setup))


if __name__ == "__main__":
    main()
