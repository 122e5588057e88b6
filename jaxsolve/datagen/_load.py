"""Reading a data set back: every shard, checked, in the original system order."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from . import _shards
from ._shards import DatagenError

__all__ = ["load", "iter_shards"]

# Per-system arrays of a shard (leading axis = system), in the order returned.
FIELDS = ("params", "solutions", "ok", "results", "residuals", "matvecs", "steps")


def _records(folder: str) -> tuple[dict, list[tuple[str, dict]]]:
    """The run section and, per shard, ``(file name, record)``, after checking
    that the folder holds one complete run."""
    if not os.path.isdir(folder):
        raise DatagenError(f"{folder} is not a folder")
    manifests = _shards.read_manifests(folder)
    if not manifests:
        raise DatagenError(f"{folder} holds no datagen manifest")
    runs = {repr(sorted(m["run"].items())) for m in manifests.values()}
    plans = {m.get("plan_sha256") for m in manifests.values()}
    if len(runs) != 1 or len(plans) != 1:
        raise DatagenError(f"the manifests in {folder} disagree on the run or plan")
    run = next(iter(manifests.values()))["run"]
    records = {}
    for manifest in manifests.values():
        for name, record in manifest.get("shards", {}).items():
            records.setdefault(name, []).append(record)
    out, missing = [], []
    for s in range(run["num_shards"]):
        name = _shards.shard_name(s)
        if name not in records or not os.path.exists(os.path.join(folder, name)):
            missing.append(name)
            continue
        out.append((name, records[name]))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DatagenError(
            f"{folder} is incomplete: {len(missing)} of {run['num_shards']} shards "
            f"are not finished ({shown}); rerun the same datagen command to finish it"
        )
    return run, out


def iter_shards(folder: str, *, verify: bool = True) -> Iterator[dict]:
    """The shards of a finished data set one at a time (for sets larger than
    memory): dicts of NumPy arrays with ``"index"`` (``(K,)``, each system's
    position in the original order), the per-system arrays of :func:`load`, and
    ``"rhs"``. With ``verify`` each shard's sha256 is checked against the
    manifest first."""
    _, shards = _records(folder)
    for name, records in shards:
        path = os.path.join(folder, name)
        if verify:
            digest = _shards.sha256_file(path)
            if all(digest != r["sha256"] for r in records):
                raise DatagenError(
                    f"{path} does not match its manifest checksum (corrupted or "
                    "overwritten); delete it and rerun the datagen command to redo it"
                )
        with np.load(path) as data:
            yield {key: data[key] for key in data.files}


def load(folder: str, *, verify: bool = True) -> dict[str, np.ndarray]:
    """A finished data set, in the ORIGINAL system order (system ``i`` is the
    ``i``-th field the family's generator draws, whatever shard or device
    solved it).

    Returns a dict of NumPy arrays, ``S`` systems of an ``n x n`` grid:
    ``params`` ``(S, n, n)`` (the coefficient fields), ``solutions``
    ``(S, n, n)`` (NaN where a solve failed), ``ok`` ``(S,)`` (solved and
    checked: the recomputed ``||b - A x|| / ||b||`` within the run's
    ``accept_rtol``), ``results`` ``(S,)`` (the solver's :class:`jaxsolve.RESULTS`
    codes), ``residuals`` ``(S,)`` (the recomputed relative residuals),
    ``matvecs`` and ``steps`` ``(S,)``, ``shard`` ``(S,)`` (which shard holds
    each system) and ``rhs`` ``(n, n)`` (the shared right-hand side).

    The arrays are filled shard by shard (peak memory: the set plus one
    shard); use :func:`iter_shards` to stream a set that does not fit.
    """
    run, _ = _records(folder)
    out = None
    seen = np.zeros(run["systems"], bool)
    for s, shard in enumerate(iter_shards(folder, verify=verify)):
        index = shard["index"]
        if out is None:
            num = run["systems"]
            out = {
                key: np.empty((num,) + shard[key].shape[1:], shard[key].dtype)
                for key in FIELDS
            }
            out["shard"] = np.empty(run["systems"], np.int64)
            out["rhs"] = shard["rhs"]
        if seen[index].any():
            raise DatagenError(f"{folder}: a system appears in two shards")
        seen[index] = True
        for key in FIELDS:
            out[key][index] = shard[key]
        out["shard"][index] = s
    if not seen.all():
        raise DatagenError(f"{folder}: {int((~seen).sum())} systems are in no shard")
    return out
