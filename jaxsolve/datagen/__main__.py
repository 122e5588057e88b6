"""``python -m jaxsolve.datagen FAMILY --systems N --grid G --out DIR``: generate
(or resume) a data set of PDE solutions; see :mod:`jaxsolve.datagen`."""

from __future__ import annotations

import argparse
import os
import sys

DESCRIPTION = """\
Generate (parameter field, solution) pairs of a family of PDE systems for
training neural operators, by sorted Krylov recycling (GCRO-DR), as resumable
checksummed shards (shard-NNNNN.npz) plus a manifest (manifest.json).

Rerunning the same command resumes: finished shards (checked against the
manifest's sha256) are skipped, a shard cut off mid-write is redone; different
options in a folder holding a run are refused. Read the data back with
jaxsolve.datagen.load(DIR), in the original system order.

Several processes or hosts: give every process the same command plus
--num-processes P --process-id I (and --coordinator HOST:PORT to join them
through jax.distributed.initialize; --distributed detects SLURM/Open MPI/TPU
set-ups); process I writes shards I, I+P, ... and its own manifest
(manifest.json for process 0, manifest.pI.json otherwise)."""


def _parser() -> argparse.ArgumentParser:
    from ._run import FAMILIES, METHODS

    p = argparse.ArgumentParser(
        prog="python -m jaxsolve.datagen",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("family", help=f"the PDE family: {', '.join(sorted(FAMILIES))}")
    p.add_argument("--systems", type=int, required=True, help="number of systems")
    p.add_argument("--grid", type=int, required=True, help="interior points a side")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--seed", type=int, default=0, help="random-field seed (0)")
    p.add_argument(
        "--method",
        default="gcrodr",
        choices=METHODS,
        help="gcrodr: GCRO-DR recycling within each shard (default); the others "
        "solve each system alone (gmres: GMRES(--m))",
    )
    p.add_argument(
        "--order",
        default="sorted",
        choices=("sorted", "given"),
        help="solve order within a shard: greedy nearest-neighbour (default) or "
        "by index",
    )
    p.add_argument(
        "--shard-size",
        type=int,
        default=None,
        help="at most this many systems per shard; a shard is one group, solved "
        "with its own recycle space on one device (default: 100, or --systems "
        "if fewer)",
    )
    p.add_argument("--rtol", type=float, default=1e-8, help="||b-Ax|| <= rtol ||b||")
    p.add_argument(
        "--m",
        type=int,
        default=40,
        help="Krylov subspace per cycle (40; GMRES's restart with --method gmres)",
    )
    p.add_argument("--k", type=int, default=10, help="GCRO-DR recycle space (10)")
    p.add_argument(
        "--ritz-every",
        type=int,
        default=3,
        help="GCRO-DR: refresh the recycle space every N cycles and on the last "
        "(default 3; measured faster on Darcy 64x64 and 128x128 than every other "
        "cycle and than every cycle, Parks et al.)",
    )
    p.add_argument("--max-steps", type=int, default=None, help="per system")
    p.add_argument(
        "--work-dtype",
        choices=("float64", "float32"),
        default=None,
        help="GCRO-DR's Krylov work (basis, recycle space): float32 (the default "
        "for gcrodr) is mixed precision, the solutions still meet --rtol in "
        "float64 and are checked; float64 for systems too ill-conditioned for it "
        "(cond(A) beyond about 1e6)",
    )
    p.add_argument(
        "--devices",
        type=int,
        default=None,
        help="use only the first N local devices (default: all)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--num-processes", type=int, default=1, help="processes sharing")
    p.add_argument("--process-id", type=int, default=0, help="this process's index")
    p.add_argument(
        "--coordinator",
        default=None,
        help="HOST:PORT of process 0: call jax.distributed.initialize",
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() with auto-detection",
    )
    return p


def main(argv=None) -> dict:
    """Run the command line; returns the run's summary (see
    :func:`jaxsolve.datagen.generate`)."""
    # jax's CPU LAPACK calls (GCRO-DR's small eig/QR per cycle) go through scipy's
    # threaded OpenBLAS, whose threads cost far more than they save on these
    # sizes, and badly so with several (forced) CPU devices; set before it loads.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    args = _parser().parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    from ._run import RunOptions, generate
    from ._shards import DatagenError

    try:
        if args.coordinator or args.distributed:
            jax.distributed.initialize(
                coordinator_address=args.coordinator,
                num_processes=args.num_processes if args.coordinator else None,
                process_id=args.process_id if args.coordinator else None,
            )
            process, processes = jax.process_index(), jax.process_count()
        else:
            process, processes = args.process_id, args.num_processes
        devices = jax.local_devices()
        if args.devices is not None:
            if not 1 <= args.devices <= len(devices):
                raise DatagenError(
                    f"--devices must be in 1..{len(devices)} (the local devices)"
                )
            devices = devices[: args.devices]
        opts = RunOptions(
            family=args.family,
            systems=args.systems,
            grid=args.grid,
            seed=args.seed,
            method=args.method,
            order=args.order,
            shard_size=(
                min(100, args.systems) if args.shard_size is None else args.shard_size
            ),
            rtol=args.rtol,
            m=args.m,
            k=args.k,
            ritz_every=args.ritz_every,
            max_steps=args.max_steps,
            work_dtype=args.work_dtype,
        )
        return generate(
            args.out,
            opts,
            process=process,
            processes=processes,
            devices=devices,
            progress=not args.no_progress,
        )
    except DatagenError as err:
        print(f"datagen: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
