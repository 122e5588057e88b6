"""Entropic OT benchmark: jaxsolve's Sinkhorn-Newton-Sparse (SNS) and log-domain
Sinkhorn against ott-jax, POT and regot, side by side.

Problem (float64)::

    min_{P 1 = a, P^T 1 = b}  <C, P> + epsilon sum_ij P_ij log P_ij,   eta = 1 / epsilon

Cases (``eta = --eta``, default 1200, for all of them):

* ``random``: the random-assignment case of Tang et al. (ICLR 2024, Table 1):
  ``n = --n`` (default 500), ``C_ij ~ U[0, 1]``, uniform marginals (the paper:
  SNS 20 + 9 iterations, Sinkhorn 56,199).
* ``digits-l2``, ``digits-l1``: the paper's MNIST cases, with scikit-learn's bundled
  ``load_digits`` in place of MNIST (which cannot be downloaded here): the first
  ``0`` and the first ``1`` of the set (8x8, grey levels 0..16), each upsampled to
  28x28 by bilinear interpolation (``scipy.ndimage.zoom(img, 3.5, order=1)``,
  corner-aligned, clipped at 0), so ``n = m = 784``. The marginals are the images
  plus a floor of ``--floor`` (default ``1e-6``) times the image's largest pixel,
  normalised to mass 1, the same marginals for every method: regot returns a NaN
  plan when a marginal has zero entries (jaxsolve, ott-jax and POT return finite
  plans; ``--floor 0`` keeps the zeros). The cost is the squared Euclidean
  (``l2``) or L1 (``l1``) distance between the pixel centres in the unit square
  (:func:`jaxsolve.solvers.ot.grid_cost`). The paper: SNS 20 + 33 and Sinkhorn
  2,041 iterations for L2; SNS 700 + 77 and Sinkhorn 5,748 for L1. SNS runs with
  its default warm-up (20 steps) on both: the paper's ``N1 = 700`` for L1 is no
  longer needed since Newton epsilon scaling (1.4 s against 1.8 s with 700).
* ``points``, ``points-N``: two 2-D point clouds (uniform on the unit square and a
  Gaussian blob, ``n = m = --n``, or ``N`` for ``points-N``), squared Euclidean
  cost, uniform marginals. The default list has ``points-2000`` and
  ``points-5000`` (whose dense cost matrix alone is 200 MB in float64). SNS keeps
  its default ``k = max(32, ceil(n / 20))`` entries per row (32, 100, 250 at
  ``n = 500, 2000, 5000``): a fixed ``k = 32`` stalls at ``n = 5000`` (200
  Newton steps, error 1e-4), since the number of points a row of the plan
  spreads over grows with ``n``.
* ``points-N-online`` (``points-20000-online`` in the default list): the clouds
  of ``points-N`` given to the jaxsolve solvers as a
  :class:`jaxsolve.solvers.ot.PointCloud`, so that neither ``C`` nor the plan is
  ever formed (a ``20000 x 20000`` matrix is 3.2 GB in float64): every pass over
  the plan runs over blocks of ``--block-size`` rows (default: the
  ``PointCloud``'s own, 52 at ``n = 20000``). The costs are normalised:
  ``epsilon = --online-eps`` (default ``1e-3``) times the largest cost (issue 12's
  target: ``eps = 1e-3`` after normalising), not ``1 / --eta``. Only
  ``jaxsolve-sns`` and ``jaxsolve-sinkhorn`` (capped at 20 steps: its row shows the
  cost per step) run; the other methods need the matrix and are skipped. ``err``
  is the solver's own marginal error (computed blockwise from the whole plan),
  ``|dP|`` is ``-``, and ``note`` adds the peak resident memory of the process so
  far (``ru_maxrss``, which includes what earlier cases used: run the case alone
  to measure it). SNS uses ``--online-k`` entries per row (default: its own
  ``max(32, ceil(n / 20))``, 1,000 at ``n = 20000``) and ``--online-warmup``
  Sinkhorn warm-up steps (default 20).

Methods:

* ``jaxsolve-sns``: :func:`jaxsolve.solvers.ot.sinkhorn_newton_sparse` (20
  Sinkhorn warm-up steps, then at most ``--max-newton-steps`` Newton steps with
  SNS's default ``k`` entries per row, ``max(32, ceil(n / 20))``; ``--warmup`` and
  ``--k`` override them for every case), jitted.
* ``jaxsolve-sinkhorn``: :func:`jaxsolve.solvers.ot.sinkhorn`, jitted.
* ``ott-sinkhorn``: ``ott.solvers.linear.sinkhorn.Sinkhorn`` (log domain, marginal
  error tested every 10 iterations), jitted.
* ``pot-sinkhorn_log``: ``ot.sinkhorn(..., method="sinkhorn_log")`` (NumPy).
* ``regot-ssns``, ``regot-newton``: ``regot.sinkhorn_ssns`` (safe and sparse
  Newton) and ``regot.sinkhorn_newton`` (dense Newton), C++.

Every method is asked for the same tolerance ``--tol`` in its own stopping rule and
capped at ``--max-steps`` iterations (``--pot-max-steps`` for POT, whose NumPy
iterations are slow); a capped method is marked ``no`` in ``conv``. Without these
options the caps are per case: for ``n <= 1000``, 20,000 (1,000 for POT); for
larger ``n``, smaller ones that keep each call to a minute or two on 2 CPU cores:
for ``1000 < n <= 3000`` (``points-2000``) 2,000 for the jitted Sinkhorns and 100
for POT, and for ``n > 3000`` (``points-5000``) 100 for the jitted Sinkhorns, with
POT, at several seconds per iteration, skipped (the reason is printed); regot's
Newton methods are capped at 1,000 iterations there. So on ``points-5000`` the
Sinkhorn rows are capped, not converged: their ``iters`` and ``wall s`` show the
cost per iteration, not the iteration count Sinkhorn needs. Giving ``--max-steps``
/ ``--pot-max-steps`` sets the caps for every case and method (the latter also
runs POT on ``points-5000``).

Columns: ``n``, ``iters`` (the method's own count; for SNS, Sinkhorn + Newton
steps, with the Newton and CG steps in ``note``), ``wall s`` (jitted methods are
compiled ahead of time, so compilation is excluded; a first call that takes longer
than 5 s is the one sample, otherwise the median of ``--repeats`` calls after that
warm-up call), ``err`` (the marginal error ``||P 1 - a||_1 + ||P^T 1 - b||_1`` of the
returned plan, recomputed here in the same way for every method), ``|dP|``
(max-abs difference of the plan from that of the first method in the list that
converged, SNS unless it failed; ``-`` if none did), ``conv`` (the method's own
verdict, and a finite plan).

Usage: ``python benchmarks/ot.py [--cases random digits-l2 ...] [--methods ...]``
(the defaults: every case above but ``points``, every method: about 15 minutes on
2 CPU cores). Needs ``pip install ott-jax pot regot scikit-learn scipy`` (a method
whose package is missing is skipped; the digits cases need scikit-learn and SciPy).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)
# This file is called ot.py: keep `import ot` (POT) from finding it.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

from jaxsolve.solvers.ot import (  # noqa: E402
    PointCloud,
    grid_cost,
    sinkhorn,
    sinkhorn_newton_sparse,
    sqeuclidean_cost,
)

METHODS = (
    "jaxsolve-sns",
    "jaxsolve-sinkhorn",
    "ott-sinkhorn",
    "pot-sinkhorn_log",
    "regot-ssns",
    "regot-newton",
)
CASES = (
    "random",
    "digits-l2",
    "digits-l1",
    "points-2000",
    "points-5000",
    "points-20000-online",
)
MAX_STEPS, POT_MAX_STEPS = 20_000, 1_000  # the caps up to n = 1000


@dataclasses.dataclass
class Case:
    C: np.ndarray | tuple  # a cost matrix, or the points (x, y) of an online case
    a: np.ndarray
    b: np.ndarray
    warmup: int = 20  # SNS Sinkhorn warm-up steps
    k: int | None = None  # SNS entries per row (None: SNS's default)
    max_steps: int = MAX_STEPS  # jaxsolve-sinkhorn, ott-sinkhorn
    pot_max_steps: int = POT_MAX_STEPS
    regot_max_steps: int = MAX_STEPS
    skip: dict = dataclasses.field(default_factory=dict)  # method -> reason
    online: bool = False  # C is (x, y): solved as a PointCloud
    eps: float | None = None  # the case's own epsilon (online cases)

    @property
    def n(self):
        return self.C[0].shape[0] if self.online else self.C.shape[0]


def _digit_marginal(image, floor):
    """An 8x8 ``load_digits`` image as a density on the 28x28 grid."""
    from scipy.ndimage import zoom

    img = np.clip(zoom(np.asarray(image, np.float64), 28 / 8, order=1), 0, None)
    assert img.shape == (28, 28)
    img = img + floor * img.max()
    return (img / img.sum()).reshape(-1)


def _largest_sqeuclidean(x, y):
    """``max_ij ||x_i - y_j||^2``, by blocks of rows (no ``n x m`` array)."""
    row_max = jax.jit(
        lambda x, y: jax.lax.map(
            lambda xi: jnp.max(jnp.sum((xi - y) ** 2, axis=-1)), x, batch_size=256
        )
    )(x, y)
    return float(jnp.max(row_max))


ONLINE_METHODS = ("jaxsolve-sns", "jaxsolve-sinkhorn")


def make_case(name: str, n: int, floor: float, online_eps: float = 1e-3) -> Case:
    key = jax.random.PRNGKey(0)
    if name.startswith("points-") and name.endswith("-online"):
        try:
            n = int(name.removeprefix("points-").removesuffix("-online"))
        except ValueError:
            raise ValueError(f"unknown case {name!r}") from None
        kx, ky = jax.random.split(key)
        x = jax.random.uniform(kx, (n, 2), jnp.float64)
        y = 0.5 + 0.15 * jax.random.normal(ky, (n, 2), jnp.float64)
        a = np.full(n, 1.0 / n)
        eps = online_eps * _largest_sqeuclidean(x, y)
        case = Case((x, y), a, a, online=True, eps=eps, max_steps=20)
        for method in METHODS:
            if method not in ONLINE_METHODS:
                case.skip[method] = "needs the n x m cost matrix"
        return case
    if name == "random":
        C = jax.random.uniform(key, (n, n), jnp.float64)
        a = np.full(n, 1.0 / n)
        return Case(np.asarray(C), a, a)
    if name in ("digits-l2", "digits-l1"):
        from sklearn.datasets import load_digits

        digits = load_digits()
        zero = np.flatnonzero(digits.target == 0)[0]
        one = np.flatnonzero(digits.target == 1)[0]
        a = _digit_marginal(digits.images[zero], floor)
        b = _digit_marginal(digits.images[one], floor)
        metric = "sqeuclidean" if name == "digits-l2" else "l1"
        C = np.asarray(grid_cost((28, 28), metric, jnp.float64))
        return Case(C, a, b)
    if name == "points" or name.startswith("points-"):
        if name != "points":
            try:
                n = int(name.removeprefix("points-"))
            except ValueError:
                raise ValueError(f"unknown case {name!r}") from None
        kx, ky = jax.random.split(key)
        x = jax.random.uniform(kx, (n, 2), jnp.float64)
        y = 0.5 + 0.15 * jax.random.normal(ky, (n, 2), jnp.float64)
        a = np.full(n, 1.0 / n)
        # SNS's default k, max(32, ceil(n / 20)), follows the plan's rows, which spread
        # over the points within ~sqrt(epsilon), a number that grows like n.
        case = Case(np.asarray(sqeuclidean_cost(x, y)), a, a)
        if n > 3000:
            case.max_steps, case.pot_max_steps, case.regot_max_steps = 100, 0, 1_000
            case.skip["pot-sinkhorn_log"] = (
                f"POT's NumPy sinkhorn_log takes seconds per iteration at n = {n}; "
                "give --pot-max-steps to run it"
            )
        elif n > 1000:
            case.max_steps, case.pot_max_steps, case.regot_max_steps = 2_000, 100, 1_000
        return case
    raise ValueError(f"unknown case {name!r}")


def marginal_error(P, a, b):
    P = np.asarray(P)
    return float(np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum())


def _jax_method(fn):
    """``prepare(C, a, b) -> call``: ``fn(C, a, b) -> (plan, iters, conv, note)``
    compiled ahead of time for these arrays, so that no call compiles."""

    def prepare(C, a, b):
        args = jax.tree_util.tree_map(jnp.asarray, (C, a, b))
        compiled = jax.jit(fn).lower(*args).compile()

        def call():
            plan, iters, converged, note = jax.block_until_ready(compiled(*args))
            return np.asarray(plan), int(iters), bool(converged), note

        return call

    return prepare


def build(method, eps, tol, case, max_newton_steps, block_size=None):
    """``prepare(C, a, b) -> call``, ``call() -> (plan, iters, conv, note)``.

    For an online case ``C`` is the points ``(x, y)`` and ``plan`` is the
    solver's own marginal error (the plan is never formed)."""
    max_steps, pot_max_steps = case.max_steps, case.pot_max_steps
    if case.online:
        eps = case.eps

    def geometry(C):
        if case.online:
            return PointCloud(*C, block_size=block_size, plan="sparse")
        return C

    def plan_of(sol):
        return sol.residual if case.online else sol.plan

    if method == "jaxsolve-sns":

        def fn(C, a, b):
            sol = sinkhorn_newton_sparse(
                geometry(C),
                a,
                b,
                epsilon=eps,
                tol=tol,
                warmup_steps=case.warmup,
                k=case.k,
                max_newton_steps=max_newton_steps,
                throw=False,
            )
            note = jnp.stack(
                [sol.stats[key] for key in ("newton_steps", "dense_steps", "cg_steps")]
            )
            return plan_of(sol), sol.num_steps, sol.succeeded, note

        return _with_note(_jax_method(fn), "Newton steps {} ({} dense), CG steps {}")
    if method == "jaxsolve-sinkhorn":

        def fn(C, a, b):
            sol = sinkhorn(
                geometry(C),
                a,
                b,
                epsilon=eps,
                tol=tol,
                max_steps=max_steps,
                throw=False,
            )
            return plan_of(sol), sol.num_steps, sol.succeeded, 0

        return _with_note(_jax_method(fn), "")
    if method == "ott-sinkhorn":
        from ott.geometry import geometry
        from ott.problems.linear import linear_problem
        from ott.solvers.linear import sinkhorn as ott_sinkhorn

        solver = ott_sinkhorn.Sinkhorn(
            threshold=tol, max_iterations=max_steps, lse_mode=True
        )

        def fn(C, a, b):
            geom = geometry.Geometry(cost_matrix=C, epsilon=eps)
            out = solver(linear_problem.LinearProblem(geom, a, b))
            return out.matrix, out.n_iters, out.converged, 0

        return _with_note(_jax_method(fn), "")
    if method == "pot-sinkhorn_log":
        import ot

        def prepare(C, a, b):
            def call():
                with warnings.catch_warnings():  # "did not converge": see `conv`
                    warnings.simplefilter("ignore")
                    P, log = ot.sinkhorn(
                        a,
                        b,
                        C,
                        eps,
                        method="sinkhorn_log",
                        stopThr=tol,
                        numItermax=pot_max_steps,
                        log=True,
                    )
                iters = int(log["niter"])
                return P, iters, iters < pot_max_steps - 1, ""

            return call

        return prepare
    if method in ("regot-ssns", "regot-newton"):
        import regot

        solve = regot.sinkhorn_ssns if method == "regot-ssns" else regot.sinkhorn_newton

        def prepare(C, a, b):
            C = np.asfortranarray(C)

            def call():
                res = solve(C, a, b, eps, tol=tol, max_iter=case.regot_max_steps)
                iters = int(res.niter)
                conv = iters < case.regot_max_steps
                return np.asarray(res.plan), iters, conv, ""

            return call

        return prepare
    raise ValueError(f"unknown method {method!r}")


def _with_note(prepare, template):
    def prepare_(C, a, b):
        call = prepare(C, a, b)

        def call_():
            plan, iters, conv, note = call()
            note = [int(v) for v in np.atleast_1d(note)]
            return plan, iters, conv, template.format(*note) if template else ""

        return call_

    return prepare_


def time_method(call, repeats):
    t0 = time.perf_counter()
    out = call()  # warm-up (jitted methods are already compiled)
    first = time.perf_counter() - t0
    if first > 5.0:
        return out, first  # slow runs: the first call is the sample
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = call()
        samples.append(time.perf_counter() - t0)
    return out, statistics.median(samples)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--n", type=int, default=500, help="for random and points")
    parser.add_argument("--eta", type=float, default=1200.0)
    parser.add_argument("--tol", type=float, default=1e-8)
    parser.add_argument(
        "--max-steps", type=int, default=None, help="default: per case (see above)"
    )
    parser.add_argument(
        "--pot-max-steps", type=int, default=None, help="default: per case"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--k", type=int, default=None, help="SNS entries per row (default: SNS's)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="SNS Sinkhorn warm-up steps (default 20)",
    )
    parser.add_argument("--max-newton-steps", type=int, default=200)
    parser.add_argument(
        "--online-eps",
        type=float,
        default=1e-3,
        help="online cases: epsilon relative to the largest cost",
    )
    parser.add_argument(
        "--online-k",
        type=int,
        default=None,
        help="online cases: SNS entries per row (default: SNS's own, "
        "max(32, ceil(n / 20)); a fixed 256 left points-20000-online at 49 "
        "Newton steps and 1,143 s, the default 1,000 at 8 and 54 s)",
    )
    parser.add_argument(
        "--online-warmup",
        type=int,
        default=20,
        help="online cases: SNS Sinkhorn warm-up steps",
    )
    parser.add_argument(
        "--block-size",
        type=int,
        default=None,
        help="online cases: rows per block (default: PointCloud's own, "
        "2^20 / n clipped to [8, 256])",
    )
    parser.add_argument(
        "--floor",
        type=float,
        default=1e-6,
        help="digits: pixel floor, relative to the largest pixel",
    )
    args = parser.parse_args(argv)
    eps = 1.0 / args.eta

    header = (
        f"{'case':19} {'n':>5} {'method':18} {'iters':>7} {'wall s':>8} "
        f"{'err':>9} {'|dP|':>9} {'conv':>4}  note"
    )
    print(f"eta = {args.eta:g} (epsilon = {eps:.3g}), tol = {args.tol:g}")
    print(header)
    print("-" * len(header), flush=True)
    for name in args.cases:
        case = make_case(name, args.n, args.floor, args.online_eps)
        if args.max_steps is not None:
            case.max_steps = case.regot_max_steps = args.max_steps
        if args.pot_max_steps is not None:
            case.pot_max_steps = args.pot_max_steps
            if not case.online:
                case.skip.pop("pot-sinkhorn_log", None)
        if args.k is not None:
            case.k = args.k
        if args.warmup is not None:
            case.warmup = args.warmup
        if case.online:
            case.k, case.warmup = args.online_k, args.online_warmup
        n = case.n
        prefix = f"{name:19} {n:5d}"
        rows = []  # printed once the case is done: |dP| needs the reference
        for method in args.methods:
            if method in case.skip:
                rows.append(f"{prefix} {method:18} skipped ({case.skip[method]})")
                continue
            try:
                prepare = build(
                    method, eps, args.tol, case, args.max_newton_steps, args.block_size
                )
            except ImportError as e:
                rows.append(f"{prefix} {method:18} skipped ({e.name} is not installed)")
                continue
            print(f"  ... {name} {method}", file=sys.stderr, flush=True)
            try:
                call = prepare(case.C, case.a, case.b)
                (plan, iters, conv, note), wall = time_method(call, args.repeats)
            except Exception as e:  # noqa: BLE001 - report and go on
                rows.append(f"{prefix} {method:18} failed ({type(e).__name__}: {e})")
                continue
            if case.online:
                err, plan = float(plan), None  # the solver's own error; no plan
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                note = f"{note}, " * bool(note) + f"eps {case.eps:.3g}, "
                note += f"peak RSS {peak:.0f} MB"
            else:
                err = marginal_error(plan, case.a, case.b)
            if not np.isfinite(err):
                conv, note = False, "non-finite plan"
            rows.append((prefix, method, iters, wall, err, plan, conv, note))
        reference = next(
            (r[5] for r in rows if not isinstance(r, str) and r[6] and not case.online),
            None,
        )
        for row in rows:
            if isinstance(row, str):
                print(row)
                continue
            prefix, method, iters, wall, err, plan, conv, note = row
            dp = "-" if reference is None else f"{np.max(np.abs(plan - reference)):.1e}"
            print(
                f"{prefix} {method:18} {iters:7d} {wall:8.3f} {err:9.1e} {dp:>9} "
                f"{'yes' if conv else 'no':>4}  {note}"
            )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
