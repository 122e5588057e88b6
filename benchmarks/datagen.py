"""Data-generation benchmark: systems per second of ``python -m jaxsolve.datagen``
(sorted GCRO-DR, and ``--method gmres``) against a plain loop over
``scipy.sparse.linalg.spsolve``, on 1 and 4 (forced) CPU devices.

Cases (``--cases GRID:SYSTEMS ...``, default ``64:1000 128:200``): Darcy systems
(``jaxsolve.problems.darcy_family``, two-valued 12/3 coefficient, ``f = 1``) on a
``GRID x GRID`` interior grid, rtol 1e-8 (``--rtol``), shards of ``--shard-size``
systems (50: enough groups to keep 4 devices busy; the same split on 1 and 4
devices, so the data are identical).

Columns, per case:

* ``datagen gcrodr``: GCRO-DR(40, 10) refreshing its recycle space every third
  cycle with float32 Krylov work (the default command; also float64 work with
  the previous default (40, 15) and with Parks et al.'s (40, 20) every cycle),
  greedy-sorted within each shard, recycling from system to
  system, on 1 and on 4 devices
  (``XLA_FLAGS=--xla_force_host_platform_device_count=4``, a fresh subprocess);
* ``datagen gmres``: the same command with ``--method gmres`` (GMRES(40), each
  system alone);
* ``scipy spsolve``: SuperLU on each system's CSR matrix (``family.to_scipy``), in a
  Python loop; the matrix assembly is timed apart (``+ assembly`` row).

Every datagen run is a fresh process writing to a fresh folder; its systems/s is
read from the manifest: systems over the solve loop's wall-clock (compilation,
field generation and the plan excluded and printed apart; writing the shards and
checking every residual included). The median of ``--repeats`` runs is shown.
The 4-device runs share the machine's cores (forced CPU devices are threads of one
process), so they measure the scale-out machinery, not extra hardware. Each
datagen result is checked against spsolve on a few systems (relative error).
``OPENBLAS_NUM_THREADS=1`` as in ``krylov.py``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


def _datagen(grid, systems, method, devices, args, folder, extra=()) -> dict:
    """One datagen run in a fresh process; its manifest's last run summary."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    cmd = [sys.executable, "-m", "jaxsolve.datagen", "darcy"]
    cmd += ["--systems", str(systems), "--grid", str(grid), "--out", folder]
    cmd += ["--method", method, "--shard-size", str(args.shard_size)]
    cmd += ["--rtol", str(args.rtol), "--no-progress", *extra]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{run.stderr}")
    with open(os.path.join(folder, "manifest.json")) as f:
        return json.load(f)["runs"][-1]


# (label, extra options): GCRO-DR as datagen runs it by default ((40, 10), the
# harmonic Ritz step every third cycle, float32 Krylov work with float64
# answers), the previous default (float64 work, (40, 15) every third cycle) and
# Parks et al.'s (40, 20) every cycle in float64, then GMRES(40), each system
# alone.
VARIANTS = (
    ("gcrodr (default: float32 work, k 10, ritz-every 3)", ()),
    ("gcrodr --work-dtype float64 --k 15", ("--work-dtype", "float64", "--k", "15")),
    (
        "gcrodr --work-dtype float64 --k 20 --ritz-every 1",
        ("--work-dtype", "float64", "--k", "20", "--ritz-every", "1"),
    ),
    ("gmres", ()),
)


def _spsolve(grid, systems):
    """Seconds for assembly and for spsolve over every system, and the solutions
    of the first few (for the check)."""
    import scipy.sparse.linalg as spla

    from jaxsolve.problems import darcy_family

    fam = darcy_family(systems, grid)
    params = np.asarray(fam.params)
    b = np.asarray(fam.b).ravel()
    assemble = solve = 0.0
    kept = []
    for i in range(systems):
        t0 = time.perf_counter()
        matrix = fam.to_scipy(params[i]).tocsc()
        t1 = time.perf_counter()
        x = spla.spsolve(matrix, b)
        t2 = time.perf_counter()
        assemble += t1 - t0
        solve += t2 - t1
        if i < 5:
            kept.append(x)
    return assemble, solve, kept


def run_case(grid, systems, args) -> list[str]:
    rows = {}
    checks = []
    for method, extra in VARIANTS:
        for devices in args.devices:
            runs = []
            for _ in range(args.repeats):
                with tempfile.TemporaryDirectory() as folder:
                    runs.append(
                        _datagen(
                            grid,
                            systems,
                            method.split()[0],
                            devices,
                            args,
                            folder,
                            extra,
                        )
                    )
                    if not checks or len(runs) == 1:
                        from jaxsolve.datagen import load

                        checks.append((method, devices, load(folder)["solutions"][:5]))
            secs = statistics.median(r["solve_seconds"] for r in runs)
            rows[(method, devices)] = {
                "sps": runs[0]["systems_computed"] / secs,
                "secs": secs,
                "mv": runs[0]["matvecs"] / runs[0]["systems_computed"],
                "compile": statistics.median(r["compile_seconds"] for r in runs),
                "failed": runs[0]["failed"],
            }
    times = [_spsolve(grid, systems) for _ in range(args.repeats)]
    assemble = statistics.median(t[0] for t in times)
    solve = statistics.median(t[1] for t in times)
    exact = np.stack(times[0][2]).reshape(-1, grid, grid)
    errors = {
        (m, d): float(
            np.max(
                np.linalg.norm((s - exact).reshape(5, -1), axis=1)
                / np.linalg.norm(exact.reshape(5, -1), axis=1)
            )
        )
        for m, d, s in checks
    }

    out = [
        f"Darcy: {systems} systems, {grid}x{grid} (n = {grid * grid}), rtol "
        f"{args.rtol:g}, shards of {args.shard_size}; median of {args.repeats}",
        f"{'solver':50s} {'devices':>7s} {'systems/s':>10s} {'wall s':>8s} "
        f"{'mv/system':>10s} {'compile s':>10s} {'failed':>6s} {'err vs LU':>10s}",
    ]
    for (method, devices), r in rows.items():
        label = f"datagen {method}"
        out.append(
            f"{label:50s} {devices:7d} {r['sps']:10.2f} {r['secs']:8.2f} "
            f"{r['mv']:10.0f} {r['compile']:10.1f} {r['failed']:6d} "
            f"{errors.get((method, devices), float('nan')):10.1e}"
        )
    out.append(
        f"{'scipy spsolve loop':50s} {1:7d} {systems / solve:10.2f} {solve:8.2f} "
        f"{'-':>10s} {'-':>10s} {0:6d} {0:10.1e}"
    )
    out.append(
        f"{'  + assembly (to_scipy)':50s} {1:7d} {systems / (solve + assemble):10.2f} "
        f"{solve + assemble:8.2f}"
    )
    for d in args.devices:
        m = rows[("gmres", d)]
        for method, _ in VARIANTS[:-1]:
            g = rows[(method, d)]
            out.append(
                f"{d} device(s): {method} / gmres systems/s "
                f"{g['sps'] / m['sps']:.2f}x (matvecs {m['mv'] / g['mv']:.2f}x "
                f"fewer); {method} / spsolve {g['sps'] * solve / systems:.2f}x"
            )
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", default=["64:1000", "128:200"])
    p.add_argument("--quick", action="store_true", help="one small case: 32:100")
    p.add_argument("--devices", nargs="+", type=int, default=[1, 4])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--shard-size", type=int, default=50)
    p.add_argument("--rtol", type=float, default=1e-8)
    args = p.parse_args(argv)
    cases = ["32:100"] if args.quick else args.cases
    print(
        f"datagen benchmark: {os.cpu_count()} CPU cores, OPENBLAS_NUM_THREADS="
        f"{os.environ['OPENBLAS_NUM_THREADS']}"
    )
    for case in cases:
        grid, systems = (int(v) for v in case.split(":"))
        args.shard_size = min(args.shard_size, systems)
        print("\n".join(run_case(grid, systems, args)), flush=True)
        print()


if __name__ == "__main__":
    main()
