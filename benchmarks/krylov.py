"""Krylov benchmark: the GMRES kernel, and sorted Krylov recycling (SKR) on
families of PDE systems, against scipy.sparse.linalg, side by side.

Sections (``--sections kernel darcy helmholtz``):

* ``kernel``: one convection-diffusion system on the demo's 64x64 grid (velocity
  (20, 10), rtol 1e-10): jaxsolve GMRES(30) and BiCGStab, scipy
  ``gmres(restart=30)``: wall-clock, products with A (``matvecs``) and time per
  product (issue 8, item 1: GMRES per product within 2x of BiCGStab, and at least
  2x faster than scipy's GMRES).
* ``darcy``: 40 Darcy systems (``jaxsolve.problems.darcy_family``, 80x80 grid,
  n = 6400, two-valued coefficient 12/3), rtol 1e-8, without and with a Jacobi
  preconditioner. Columns: jaxsolve GMRES(40) system by system; jaxsolve
  GCRO-DR(40, 20) through ``solve_family``, in the given order and sorted (and
  sorted with ``ritz_every=2`` and ``3``, the harmonic Ritz step every other or
  every third cycle, with ``work_dtype=float32`` (mixed precision, also with
  ``ritz_every=3``), and
  with ``ritz="iterate"``, the orthogonal-iteration Ritz step); scipy
  ``gmres(restart=40)`` system by system; scipy ``gcrotmk(m=40, k=20)`` reusing
  its ``CU`` list across the systems in the sorted order (SKR's CPU reference).
* ``helmholtz``: 20 Helmholtz systems (100x100 grid, variable wavenumber,
  ``omega = 20``, indefinite), rtol 1e-7, same columns; GMRES is capped at
  ``--helmholtz-cap`` products a system (reported as not converged).
* ``helmholtz-probe``: how far GMRES(40) is from converging on those systems
  (the cap above hides it): jaxsolve GMRES(40) on the first ``--probe-systems``
  Helmholtz systems with a cap of ``--probe-cap`` products each, its final
  relative residual, against the products GCRO-DR(40, 20) spends per system in
  the sorted chain (and alone, without recycling), for issue 8's "20x fewer
  products than GMRES(40)".

Timing: jaxsolve functions are jitted and run once first (compilation excluded);
every wall-clock figure is the median of ``--repeats`` calls (scipy's gmres, the
slow column, of ``--slow-repeats``), waited for with ``block_until_ready``.
scipy's products are counted by a counting ``LinearOperator`` in a separate, untimed
run (the timed runs use the CSR matrix). Speedups are relative to the scipy GMRES
column, and the paper's Table 1 (SKR vs PETSc GMRES(40)) is printed alongside.

``OPENBLAS_NUM_THREADS=1`` is set before anything imports NumPy/SciPy: jax's CPU
LAPACK calls (GCRO-DR's small QR/SVD/eig per cycle) go through scipy's threaded
OpenBLAS, whose threads only cost time on matrices this small (and a lot of it on
a loaded machine); scipy's own solvers run sparse products, which it does not use.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse as sparse  # noqa: E402
import scipy.sparse.linalg as spla  # noqa: E402

import jaxsolve  # noqa: E402
from jaxsolve.problems import (  # noqa: E402
    convection_diffusion_2d,
    darcy_family,
    helmholtz_family,
)
from jaxsolve.solvers.linear import solve_family  # noqa: E402

PAPER = """Paper (Wang et al., ICLR 2024), Table 1: SKR speedup over PETSc GMRES(40),
time / iterations, no preconditioner | Jacobi | ILU:
  Darcy n=6400, tol 1e-8:      2.70 / 19.1 | 3.09 / 22.9 | 3.70 / 17.2
  Thermal n=11063, tol 1e-8:   5.35 / 23.6 | 3.06 / 13.5 | 2.69 / 11.1
  Poisson n=71313, tol 1e-5:   1.27 / 4.69 | 1.28 / 4.68 | 0.98 / 3.92
  Helmholtz n=10000, tol 1e-7: 6.47 / 13.7 | 7.96 / 18.1 | 6.34 / 28.0"""


def _median_time(fn, repeats):
    times = []
    out = None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def _jax_timed(fn, args, repeats):
    jitted = jax.jit(fn)
    jax.block_until_ready(jitted(*args))  # compile + warm-up
    return _median_time(lambda: jitted(*args), repeats)


class _Counting(spla.LinearOperator):
    def __init__(self, a):
        super().__init__(a.dtype, a.shape)
        self.a, self.count = a, 0

    def _matvec(self, x):
        self.count += 1
        return self.a @ x


# ----------------------------------------------------------------------------
# The GMRES kernel.


def kernel(repeats):
    # Each solve takes milliseconds: many more repeats for a stable median.
    repeats = max(repeats, 25)
    from jaxsolve._demo import _grid_operator

    n, velocity, rtol = 64, (20.0, 10.0), 1e-10
    matvec, b = convection_diffusion_2d(n, velocity=velocity)
    rows = []
    for name, solver in (
        ("jaxsolve gmres(30)", jaxsolve.gmres),
        ("jaxsolve bicgstab", jaxsolve.bicgstab),
    ):
        sol, sec = _jax_timed(
            lambda b, s=solver: s(matvec, b, rtol=rtol), (b,), repeats
        )
        rows.append((name, int(sol.stats["matvecs"]), sec, bool(sol.succeeded)))
    a = _grid_operator(n, velocity).tocsr()
    bn = np.asarray(b).ravel()
    (x, info), sec = _median_time(
        lambda: spla.gmres(a, bn, rtol=rtol, restart=30, maxiter=1000), repeats
    )
    counting = _Counting(a)
    spla.gmres(counting, bn, rtol=rtol, restart=30, maxiter=1000)
    rows.append(("scipy gmres(30)", counting.count, sec, info == 0))
    print(f"\nGMRES kernel: convection-diffusion {n}x{n} (n = {n * n}), rtol {rtol}")
    print(f"{'solver':<22}{'matvecs':>9}{'ms':>10}{'us/matvec':>11}  converged")
    for name, mv, sec, ok in rows:
        print(f"{name:<22}{mv:>9}{sec * 1e3:>10.1f}{sec / mv * 1e6:>11.1f}  {ok}")
    per = {r[0]: r[2] / r[1] for r in rows}
    print(
        f"GMRES/BiCGStab time per matvec: "
        f"{per['jaxsolve gmres(30)'] / per['jaxsolve bicgstab']:.2f}x; "
        f"scipy gmres / jaxsolve gmres wall: {rows[2][2] / rows[0][2]:.2f}x"
    )


# ----------------------------------------------------------------------------
# Families.


def family_table(
    fam, rtol, m, k, precond, repeats, slow_repeats, cap, iterate_column=True
):
    params, b = fam.params, fam.b
    make_pre = (lambda p: lambda r: r / fam.jacobi(p)) if precond else None
    results = []

    def jax_column(label, method, order, **opts):
        def run(params):
            return solve_family(
                fam.make_operator,
                params,
                b,
                method=method,
                order=order,
                make_preconditioner=make_pre,
                rtol=rtol,
                throw=False,
                **opts,
            )

        sol, sec = _jax_timed(run, (params,), repeats)
        mv = int(jnp.sum(sol.stats["matvecs"]))
        ok = int(jnp.sum(sol.succeeded))
        results.append((label, mv, sec, ok))
        return sol

    jax_column("jaxsolve gmres(40)", "gmres", "given", restart=m, max_steps=cap)
    jax_column(f"jaxsolve gcrodr({m},{k}) given", "gcrodr", "given", m=m, k=k)
    sorted_sol = jax_column(
        f"jaxsolve gcrodr({m},{k}) sorted", "gcrodr", "sorted", m=m, k=k
    )
    order = np.asarray(sorted_sol.stats["order"])
    jax_column("  same, ritz_every=2", "gcrodr", "sorted", m=m, k=k, ritz_every=2)
    jax_column("  same, ritz_every=3", "gcrodr", "sorted", m=m, k=k, ritz_every=3)
    f32 = jnp.float32
    jax_column("  same, float32 work", "gcrodr", "sorted", m=m, k=k, work_dtype=f32)
    jax_column(
        "  same, float32, ritz_every=3",
        "gcrodr",
        "sorted",
        m=m,
        k=k,
        ritz_every=3,
        work_dtype=f32,
    )
    if iterate_column:
        jax_column(
            "  same, ritz='iterate'", "gcrodr", "sorted", m=m, k=k, ritz="iterate"
        )

    mats = [fam.to_scipy(p).tocsr() for p in params]
    pres = (
        [sparse.diags(1 / np.asarray(fam.jacobi(p)).ravel()) for p in params]
        if precond
        else [None] * len(mats)
    )
    bn = np.asarray(b).ravel()

    def scipy_gmres(count):
        oks, total = 0, 0
        for a, mpre in zip(mats, pres, strict=True):
            op = _Counting(a) if count else a
            x, info = spla.gmres(
                op, bn, rtol=rtol, restart=m, maxiter=max(1, cap // m), M=mpre
            )
            oks += info == 0
            total += op.count if count else 0
        return oks, total

    (oks, _), sec = _median_time(lambda: scipy_gmres(False), slow_repeats)
    _, mv = scipy_gmres(True)
    results.append((f"scipy gmres({m})", mv, sec, oks))

    def scipy_gcrot(count):
        cu, oks, total = [], 0, 0
        for i in order:
            op = _Counting(mats[i]) if count else mats[i]
            # discard_C: CU keeps U only, and gcrotmk recomputes C = A U for the
            # next (different) operator, as SKR does.
            x, info = spla.gcrotmk(
                op,
                bn,
                rtol=rtol,
                m=m,
                k=k,
                CU=cu,
                discard_C=True,
                M=pres[i],
                maxiter=1000,
            )
            oks += info == 0
            total += op.count if count else 0
        return oks, total

    (oks, _), sec = _median_time(lambda: scipy_gcrot(False), repeats)
    _, mv = scipy_gcrot(True)
    results.append((f"scipy gcrotmk({m},{k})+CU sorted", mv, sec, oks))
    return results


def helmholtz_probe(fam, rtol, m, k, systems, cap):
    """GMRES(m) with a large cap on the first ``systems`` systems, and GCRO-DR's
    products on the same systems (sorted chain over the whole family; alone)."""
    gm = jax.jit(
        jax.vmap(
            lambda p: jaxsolve.gmres(
                fam.make_operator(p),
                fam.b,
                restart=m,
                rtol=rtol,
                max_steps=cap,
                throw=False,
            )
        )
    )
    alone = jax.jit(
        jax.vmap(
            lambda p: jaxsolve.gcrodr(
                fam.make_operator(p), fam.b, m=m, k=k, rtol=rtol, throw=False
            )
        )
    )
    chain = jax.jit(
        lambda ps: solve_family(
            fam.make_operator, ps, fam.b, m=m, k=k, rtol=rtol, throw=False
        )
    )
    head = fam.params[:systems]
    bnorm = float(jnp.linalg.norm(fam.b))
    start = time.perf_counter()
    g = jax.block_until_ready(gm(head))
    g_sec = time.perf_counter() - start
    a = jax.block_until_ready(alone(head))
    c = jax.block_until_ready(chain(fam.params))
    chain_mv = np.asarray(c.stats["matvecs"])
    print(
        f"\nHelmholtz probe: GMRES({m}) capped at {cap} products on the first "
        f"{systems} of {fam.num} systems ({fam.n}x{fam.n}, rtol {rtol:g}; "
        f"GMRES wall {g_sec:.1f} s incl. compile)"
    )
    print(
        f"{'system':>6}{'gmres mv':>10}{'gmres rel res':>15}{'conv':>6}"
        f"{'gcrodr alone':>14}{'gcrodr sorted':>15}{'gmres / sorted':>16}"
    )
    for i in range(systems):
        g_mv = int(g.stats["matvecs"][i])
        ok = bool(g.succeeded[i])
        ratio = g_mv / int(chain_mv[i])
        print(
            f"{i:>6}{g_mv:>10}{float(g.residual[i]) / bnorm:>15.2e}"
            f"{'yes' if ok else 'no':>6}{int(a.stats['matvecs'][i]):>14}"
            f"{int(chain_mv[i]):>15}{('' if ok else '>') + f'{ratio:.1f}x':>16}"
        )
    print(
        f"sorted chain over all {fam.num} systems: {int(chain_mv.sum())} products "
        f"({chain_mv.mean():.0f} a system), {int(jnp.sum(c.succeeded))} converged"
    )


def print_family(title, results, num):
    ref_sec = next(r[2] for r in results if r[0].startswith("scipy gmres"))
    # Issue 8's wall-clock target: at most half of scipy gcrotmk+CU's.
    gcrot_sec = next(r[2] for r in results if r[0].startswith("scipy gcrotmk"))
    gm_mv = results[0][1]
    print(f"\n{title}")
    print(
        f"{'solver':<32}{'matvecs':>9}{'wall s':>9}{'vs scipy gmres':>16}"
        f"{'mv vs gmres(40)':>17}{'wall/gcrotmk':>14}  converged"
    )
    for name, mv, sec, ok in results:
        print(
            f"{name:<32}{mv:>9}{sec:>9.2f}{ref_sec / sec:>15.2f}x"
            f"{gm_mv / mv:>16.2f}x{sec / gcrot_sec:>14.2f}  {ok}/{num}"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sections", nargs="+", default=["kernel", "darcy", "helmholtz"]
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slow-repeats", type=int, default=1)
    parser.add_argument("--darcy-systems", type=int, default=40)
    parser.add_argument("--darcy-grid", type=int, default=80)
    parser.add_argument("--helmholtz-systems", type=int, default=20)
    parser.add_argument("--helmholtz-grid", type=int, default=100)
    parser.add_argument("--helmholtz-cap", type=int, default=4000)
    parser.add_argument("--probe-systems", type=int, default=2)
    parser.add_argument("--probe-cap", type=int, default=200000)
    parser.add_argument("--no-jacobi", action="store_true")
    args = parser.parse_args()
    print(
        f"jax {jax.__version__}, backend {jax.default_backend()}, "
        f"OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}"
    )
    if "kernel" in args.sections:
        kernel(args.repeats)
    precs = [False] if args.no_jacobi else [False, True]
    if "darcy" in args.sections:
        fam = darcy_family(args.darcy_systems, args.darcy_grid, seed=0)
        for pre in precs:
            res = family_table(
                fam, 1e-8, 40, 20, pre, args.repeats, args.slow_repeats, 20000
            )
            print_family(
                f"Darcy: {fam.num} systems, {fam.n}x{fam.n} (n = {fam.n**2}), "
                f"rtol 1e-8, {'Jacobi' if pre else 'no'} preconditioner",
                res,
                fam.num,
            )
    if "helmholtz" in args.sections:
        fam = helmholtz_family(args.helmholtz_systems, args.helmholtz_grid, seed=0)
        for pre in precs:
            res = family_table(
                fam,
                1e-7,
                40,
                20,
                pre,
                args.repeats,
                args.slow_repeats,
                args.helmholtz_cap,
            )
            print_family(
                f"Helmholtz: {fam.num} systems, {fam.n}x{fam.n} (n = {fam.n**2}), "
                f"omega 20, rtol 1e-7, {'Jacobi' if pre else 'no'} preconditioner "
                f"(GMRES capped at {args.helmholtz_cap} products a system)",
                res,
                fam.num,
            )
    if "helmholtz-probe" in args.sections:
        fam = helmholtz_family(args.helmholtz_systems, args.helmholtz_grid, seed=0)
        helmholtz_probe(fam, 1e-7, 40, 20, args.probe_systems, args.probe_cap)
    print("\n" + PAPER)


if __name__ == "__main__":
    main()
