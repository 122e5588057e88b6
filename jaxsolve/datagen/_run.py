"""One data-generation run: plan, resume, solve, check, write, report.

The plan (which systems go in which shard, in which order) is a pure function of
the options: the family's seeded fields are split into groups along a Hilbert
curve (:mod:`._groups`), each group is chained by the greedy nearest-neighbour
sort (``order="sorted"``), and shard ``s`` is group ``s``. Process ``p`` of ``P``
owns the shards ``s = p, p + P, ...``; its devices solve them ``width`` at a time
(:class:`._solve.GroupSolver`), and the host writes each finished group as one
shard while the devices already work on the next step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import sys
import time

import jax
import numpy as np

from .. import __version__
from ..problems import families as _families
from . import _shards
from ._groups import split_groups
from ._shards import DatagenError
from ._solve import GroupSolver

__all__ = ["FAMILIES", "RunOptions", "generate"]

FAMILIES = {
    "darcy": _families.darcy_family,
    "poisson": _families.poisson_family,
    "heat": _families.heat_family,
    "helmholtz": _families.helmholtz_family,
}
METHODS = ("gcrodr", "gmres", "bicgstab", "cg")
# A solution is kept when its recomputed relative residual is at most this many
# times rtol: the solver stops on the same measure, so only rounding separates
# the two figures; anything beyond is a solve that must not be trusted.
ACCEPT_FACTOR = 2.0
MIN_GRID = 4

# Test hook: pause (to be killed) half-way through writing the N-th shard this
# process writes (1-based), so that a test can SIGKILL a run mid-shard.
_PAUSE_ENV = "JAXSOLVE_DATAGEN_TEST_PAUSE_IN_SHARD"


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Everything that determines the data (compared with the manifest on a
    rerun: a different value refuses to mix two runs in one folder)."""

    family: str
    systems: int
    grid: int
    seed: int = 0
    method: str = "gcrodr"
    order: str = "sorted"
    shard_size: int = 100
    rtol: float = 1e-8
    m: int = 40
    # GCRO-DR(40, 10) with the harmonic Ritz step every third cycle, its Krylov
    # work in float32 (gcrodr's work_dtype: mixed precision; the answers still
    # meet rtol in float64, and every one is checked below before it is saved).
    # On Darcy at 64x64 and 128x128 this gave the most systems/s: float32 work
    # about 1.5x float64's, and k = 10 beat 15 and 20 in float32 (a refresh
    # costs about as many flops as k + 1 products with the basis, so a smaller k
    # and rarer refreshes trade a few more products for cheaper cycles). In
    # float64, (40, 15) every third cycle was best (benchmarks/README.md,
    # datagen section).
    k: int = 10
    ritz_every: int = 3
    max_steps: int | None = None
    # None: float32 for gcrodr, float64 (the only choice) for the other methods.
    work_dtype: str | None = None

    def check(self) -> None:
        """Refuse options that cannot work, naming the option."""
        if self.family not in FAMILIES:
            raise DatagenError(
                f"unknown family {self.family!r}; choose one of {sorted(FAMILIES)}"
            )
        if self.method not in METHODS:
            raise DatagenError(f"--method must be one of {METHODS}, got {self.method}")
        if self.order not in ("sorted", "given"):
            raise DatagenError(f"--order must be sorted or given, got {self.order}")
        if self.systems < 1:
            raise DatagenError(f"--systems must be >= 1, got {self.systems}")
        if self.grid < MIN_GRID:
            raise DatagenError(
                f"--grid must be >= {MIN_GRID} (interior points a side), got "
                f"{self.grid}"
            )
        if self.shard_size < 1:
            raise DatagenError(f"--shard-size must be >= 1, got {self.shard_size}")
        if self.shard_size > self.systems:
            raise DatagenError(
                f"--shard-size {self.shard_size} exceeds --systems {self.systems}: "
                "a shard is one group of systems; use at most --systems"
            )
        if not 0 < self.rtol < 1:
            raise DatagenError(f"--rtol must lie in (0, 1), got {self.rtol}")
        if not 1 <= self.k < self.m:
            raise DatagenError(f"need 1 <= --k < --m, got k={self.k}, m={self.m}")
        if self.ritz_every < 1:
            raise DatagenError(f"--ritz-every must be >= 1, got {self.ritz_every}")
        if self.max_steps is not None and self.max_steps < 1:
            raise DatagenError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.work_dtype not in (None, "float64", "float32"):
            raise DatagenError(
                f"--work-dtype must be float64 or float32, got {self.work_dtype}"
            )
        if self.work_dtype == "float32" and self.method != "gcrodr":
            raise DatagenError("--work-dtype float32 needs --method gcrodr")

    @property
    def num_shards(self) -> int:
        return -(-self.systems // self.shard_size)

    @property
    def effective_work_dtype(self) -> str:
        if self.work_dtype is not None:
            return self.work_dtype
        return "float32" if self.method == "gcrodr" else "float64"

    def solver_options(self) -> dict:
        out = {"rtol": self.rtol, "max_steps": self.max_steps}
        if self.method == "gcrodr":
            out.update(m=self.m, k=self.k, ritz_every=self.ritz_every)
            if self.effective_work_dtype != "float64":
                out["work_dtype"] = self.effective_work_dtype
        elif self.method == "gmres":
            out["restart"] = self.m
        return out

    def record(self) -> dict:
        """The manifest's ``"run"`` section."""
        run = dataclasses.asdict(self)
        run["work_dtype"] = self.effective_work_dtype
        if run["work_dtype"] == "float64":
            # Left out, so that manifests written before the option existed
            # (all float64) still match a rerun with the same options.
            del run["work_dtype"]
        return {
            **run,
            "num_shards": self.num_shards,
            "dtype": "float64",
            "accept_rtol": ACCEPT_FACTOR * self.rtol,
        }


def _plan(opts: RunOptions, params: np.ndarray) -> list[np.ndarray]:
    """Shard ``s``'s systems (original indices) in the order they are solved."""
    from ..solvers.linear import greedy_order

    groups = split_groups(params, opts.shard_size)
    if opts.order == "given":
        return [np.sort(g) for g in groups]
    sort = jax.jit(greedy_order)
    out = []
    for g in groups:
        feats = params[g].reshape(len(g), -1)
        out.append(g[np.asarray(sort(feats))] if len(g) > 1 else g)
    return out


def _plan_hash(plan: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for g in plan:
        digest.update(np.asarray(len(g), np.int64).tobytes())
        digest.update(np.asarray(g, np.int64).tobytes())
    return digest.hexdigest()


# Compiled group solvers of this session, so that a second run with the same
# shapes (a resume, another seed) does not compile again. A family's operator
# and right-hand side depend only on its name and grid (its other arguments keep
# their defaults here), so these with the solver options and shapes are the key.
_SOLVERS: dict[tuple, GroupSolver] = {}


def _group_solver(opts: RunOptions, family, size: int, devices) -> GroupSolver:
    options = opts.solver_options()
    key = (opts.family, opts.grid, opts.method, tuple(sorted(options.items())))
    key += (size, tuple(devices))
    if key not in _SOLVERS:
        _SOLVERS[key] = GroupSolver(
            family.make_operator, family.b, size, devices, opts.method, options
        )
    return _SOLVERS[key]


def _check_folder(folder: str, opts: RunOptions) -> dict[str, dict]:
    """The folder's manifests, after refusing a folder that holds anything but
    an unfinished or finished run of these very options."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise DatagenError(f"--out {folder} exists and is not a folder")
    os.makedirs(folder, exist_ok=True)
    manifests = _shards.read_manifests(folder)
    if not manifests:
        foreign = _shards.foreign_entries(folder)
        if foreign:
            shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
            raise DatagenError(
                f"--out {folder} is not empty and holds no datagen manifest ({shown}); "
                "choose an empty or new folder"
            )
        return manifests
    want = opts.record()
    for name, manifest in manifests.items():
        have = manifest.get("run", {})
        diff = [
            f"{key}={have.get(key)!r} (this command: {want.get(key)!r})"
            for key in sorted(set(want) | set(have))
            if have.get(key) != want.get(key)
        ]
        if diff:
            raise DatagenError(
                f"--out {folder} holds another run's data ({name} differs: "
                + ", ".join(diff)
                + "). Rerun with the same options to resume it, or choose another "
                "--out folder."
            )
    return manifests


def _check_solutions(out: dict, accept: float) -> np.ndarray:
    """``ok`` per system: the solver reports success, the solution is finite,
    and its independently recomputed relative residual is within ``accept``."""
    axes = tuple(range(1, out["solutions"].ndim))
    finite = np.all(np.isfinite(out["solutions"]), axis=axes)
    residual = out["residuals"]
    return (out["results"] == 0) & finite & np.isfinite(residual) & (residual <= accept)


def generate(
    folder: str,
    opts: RunOptions,
    *,
    process: int = 0,
    processes: int = 1,
    devices=None,
    progress: bool = True,
    log=print,
) -> dict:
    """Generate (or resume) the data set of ``opts`` in ``folder``; returns this
    run's summary (also appended to the manifest's ``"runs"``).

    Args:
        folder: the output folder (created if missing).
        opts: the :class:`RunOptions`.
        process, processes: this process's index and the number of processes
            sharing the work (each owns the shards ``s % processes == process``
            and writes its own manifest).
        devices: the devices to spread this process's groups over (default: all
            its local devices).
        progress: show a tqdm bar.
        log: where the notes and the final summary line go.
    """
    opts.check()
    if not jax.config.jax_enable_x64:
        raise DatagenError(
            "datagen writes float64 data: enable it first with "
            'jax.config.update("jax_enable_x64", True)'
        )
    if not 0 <= process < processes:
        raise DatagenError(f"process {process} is not in 0..{processes - 1}")
    t_setup = time.perf_counter()
    manifests = _check_folder(folder, opts)

    family = FAMILIES[opts.family](opts.systems, opts.grid, seed=opts.seed)
    params = np.asarray(family.params)
    plan = _plan(opts, params)
    plan_hash = _plan_hash(plan)
    for name, manifest in manifests.items():
        if manifest.get("plan_sha256") != plan_hash:
            raise DatagenError(
                f"{name} in {folder} was written for a different split of the "
                "systems into shards (same options, different numbers: another "
                "NumPy/JAX version or machine?); finish it with the software that "
                "started it, or choose another --out folder"
            )

    done = _shards.finished_shards(folder, manifests)
    for manifest in manifests.values():
        for name in manifest.get("shards", {}):
            index = int(name[6:-4])
            if index not in done and index % processes == process:
                log(f"datagen: {name} is recorded but missing or corrupt; redoing it")
    mine = [s for s in range(opts.num_shards) if s % processes == process]
    todo = [s for s in mine if s not in done]
    for tmp in _shards.stale_temporaries(folder):
        base = os.path.basename(tmp)
        if any(base.startswith(f".{_shards.shard_name(s)}.") for s in todo) or (
            base.startswith(f".{_shards.manifest_name(process)}.")
        ):
            os.remove(tmp)  # a cut-off write of ours: its shard is redone

    own = manifests.get(_shards.manifest_name(process), {})
    manifest = {
        "format": _shards.FORMAT,
        "run": opts.record(),
        "plan_sha256": plan_hash,
        "jaxsolve_version": __version__,
        "jax_version": jax.__version__,
        "numpy_version": np.__version__,
        "process": process,
        "processes": processes,
        "shards": dict(own.get("shards", {})),
        "runs": list(own.get("runs", [])),
    }
    _shards.write_manifest(folder, process, manifest)

    devices = list(devices) if devices is not None else jax.local_devices()
    size = max(len(g) for g in plan)
    solver = _group_solver(opts, family, size, devices)
    if todo:
        solver.compile(opts.grid, params.dtype)
    setup_seconds = time.perf_counter() - t_setup
    rhs = np.asarray(family.b)
    accept = ACCEPT_FACTOR * opts.rtol
    pause_at = int(os.environ.get(_PAUSE_ENV, "0"))

    done_systems = sum(len(plan[s]) for s in mine if s in done)
    stats = {"systems": 0, "matvecs": 0, "cold": [], "failed": 0, "written": 0}
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=sum(len(plan[s]) for s in mine),
            initial=done_systems,
            unit="sys",
            desc=f"{opts.family} {opts.grid}x{opts.grid} {opts.method}",
            file=sys.stderr,
        )

    def batch_params(batch):
        """``(width, size, n, n)``: each group in solve order, a short group
        padded by repeating its last system, a missing group (the last step's
        spare devices) by repeating the first; padding is solved and dropped."""
        stack = []
        for s in batch + batch[:1] * (solver.width - len(batch)):
            g = plan[s]
            g = np.concatenate([g, np.repeat(g[-1:], size - len(g))])
            stack.append(params[g])
        return np.stack(stack)

    def finish(batch, handle):
        out = jax.device_get(handle)
        for j, s in enumerate(batch):
            g = plan[s]
            num = len(g)
            part = {key: np.asarray(value[j][:num]) for key, value in out.items()}
            ok = _check_solutions(part, accept)
            solutions = np.where(
                ok.reshape((num,) + (1,) * (part["solutions"].ndim - 1)),
                part["solutions"],
                np.nan,
            )
            arrays = {
                "index": g.astype(np.int64),
                "params": params[g],
                "solutions": solutions,
                "ok": ok,
                "results": part["results"],
                "residuals": part["residuals"],
                "matvecs": part["matvecs"],
                "steps": part["steps"],
                "rhs": rhs,
            }
            stats["written"] += 1
            digest = _shards.write_shard(
                folder, s, arrays, pause_midway=stats["written"] == pause_at
            )
            manifest["shards"][_shards.shard_name(s)] = {
                "sha256": digest,
                "systems": num,
                "failed": int(num - ok.sum()),
                "matvecs": int(part["matvecs"].sum()),
                "process": process,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            _shards.write_manifest(folder, process, manifest)
            stats["systems"] += num
            stats["matvecs"] += int(part["matvecs"].sum())
            stats["cold"].append(int(part["matvecs"][0]))
            stats["failed"] += int(num - ok.sum())
            if bar is not None:
                bar.update(num)
                bar.set_postfix_str(_postfix(stats), refresh=True)

    t_solve = time.perf_counter()
    try:
        pending = None
        for start in range(0, len(todo), solver.width):
            batch = todo[start : start + solver.width]
            handle = solver.dispatch(batch_params(batch))
            if pending is not None:
                finish(*pending)
            pending = (batch, handle)
        if pending is not None:
            finish(*pending)
    finally:
        if bar is not None:
            bar.close()
    solve_seconds = time.perf_counter() - t_solve

    summary = {
        "process": process,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "devices": [str(d) for d in devices],
        "shards_computed": len(todo),
        "shards_skipped": len(mine) - len(todo),
        "systems_computed": stats["systems"],
        "failed": stats["failed"],
        "matvecs": stats["matvecs"],
        "setup_seconds": round(setup_seconds, 3),
        "compile_seconds": round(solver.compile_seconds, 3),
        "solve_seconds": round(solve_seconds, 3),
    }
    manifest["runs"].append(summary)
    _shards.write_manifest(folder, process, manifest)
    log(_summary_line(opts, summary, stats, folder))
    return summary


def _postfix(stats: dict) -> str:
    per = stats["matvecs"] / max(stats["systems"], 1)
    text = f"{per:.0f} mv/sys"
    if len(stats["cold"]):
        text += f", saving {np.mean(stats['cold']) / max(per, 1e-9):.2f}x vs cold"
    if stats["failed"]:
        text += f", {stats['failed']} FAILED"
    return text


def _summary_line(opts, summary, stats, folder) -> str:
    n = summary["systems_computed"]
    secs = summary["solve_seconds"]
    line = (
        f"datagen: {opts.family} {opts.grid}x{opts.grid} {opts.method}: "
        f"{summary['shards_computed']} shards computed, "
        f"{summary['shards_skipped']} already done"
    )
    if n:
        line += (
            f"; {n} systems in {secs:.2f} s ({n / max(secs, 1e-9):.2f} systems/s, "
            f"compile {summary['compile_seconds']:.1f} s excluded), " + _postfix(stats)
        )
    if summary["failed"]:
        line += (
            f"; {summary['failed']} systems FAILED (ok=False, solution NaN, "
            "result code kept)"
        )
    return line + f"; data in {folder}"
