"""Shards and manifests on disk: written atomically, checked by checksum.

A data set is a folder holding ``shard-00000.npz``, ``shard-00001.npz``, ... and
one manifest per writing process (``manifest.json`` for process 0,
``manifest.p1.json``, ... for the others, so that no two processes ever write the
same file). A manifest holds the run's options (``"run"``, identical in every
manifest of a folder), the hash of the plan (which systems go in which shard, in
which order) and one record per finished shard: its sha256, who wrote it, counts.

Every file is first written to a temporary name in the same folder, flushed to
disk (``fsync``) and then renamed into place (``os.replace``, atomic on POSIX), and
the folder itself is synced: a crash leaves either the old file or the new one,
never half of one. A shard counts as finished only once its record is in a
manifest *and* its bytes still hash to the recorded sha256, so a shard cut off
mid-write (or renamed but not yet recorded) is simply computed again.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import io
import json
import os
import re

import numpy as np

__all__ = [
    "DatagenError",
    "shard_name",
    "write_shard",
    "read_manifests",
    "write_manifest",
    "manifest_name",
    "finished_shards",
    "sha256_file",
]

FORMAT = "jaxsolve.datagen/1"
_SHARD = re.compile(r"shard-(\d{5,})\.npz$")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DatagenError(RuntimeError):
    """A data-generation run cannot go on; the message says why and what to do."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.npz"


def manifest_name(process: int) -> str:
    return "manifest.json" if process == 0 else f"manifest.p{process}.json"


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: str, data: bytes, *, pause_midway: bool = False) -> None:
    """Write ``data`` to ``path`` and flush it to disk. (The one place bytes are
    written: tests replace it to simulate a full disk.) ``pause_midway`` is the
    test hook of :func:`write_shard`."""
    with open(path, "wb") as f:
        if pause_midway:
            f.write(data[: len(data) // 2])
            f.flush()
            _pause_for_kill(path)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _pause_for_kill(path: str) -> None:
    """Test hook: announce that a shard is half written and wait to be killed."""
    import sys
    import time

    print(f"datagen-test: paused writing {path}", file=sys.stderr, flush=True)
    while True:
        time.sleep(60)


def _atomic_write(folder: str, name: str, data: bytes, what: str, **hook) -> None:
    """``data`` to ``folder/name`` through a temporary file and a rename; a full
    disk becomes a :class:`DatagenError` saying so, with the temporary removed."""
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    try:
        _write_file(tmp, data, **hook)
        os.replace(tmp, os.path.join(folder, name))
        _fsync_dir(folder)
    except OSError as err:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if err.errno in _DISK_FULL:
            raise DatagenError(
                f"the disk is full (no space left on device) while writing {what} "
                f"to {folder}; every shard recorded in the manifest so far is complete "
                "and valid. Free some space and rerun the same command: it resumes "
                "where it stopped."
            ) from err
        raise DatagenError(f"cannot write {what} to {folder}: {err}") from err


def write_shard(folder: str, index: int, arrays: dict, **hook) -> str:
    """Write one shard (``arrays``: name -> NumPy array) atomically; returns the
    sha256 of the bytes written."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data = buffer.getvalue()
    name = shard_name(index)
    _atomic_write(folder, name, data, name, **hook)
    return hashlib.sha256(data).hexdigest()


def write_manifest(folder: str, process: int, manifest: dict) -> None:
    data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    name = manifest_name(process)
    _atomic_write(folder, name, data, f"the manifest {name}")


def read_manifests(folder: str) -> dict[str, dict]:
    """Every manifest in ``folder``, by file name (empty if none)."""
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, "manifest*.json"))):
        try:
            with open(path) as f:
                manifest = json.load(f)
        except (OSError, ValueError) as err:
            raise DatagenError(f"cannot read the manifest {path}: {err}") from err
        if manifest.get("format") != FORMAT:
            raise DatagenError(
                f"{path} is not a jaxsolve.datagen manifest (format "
                f"{manifest.get('format')!r}, expected {FORMAT!r})"
            )
        out[os.path.basename(path)] = manifest
    return out


def finished_shards(folder: str, manifests: dict[str, dict]) -> dict[int, dict]:
    """The shards recorded in any manifest whose file exists and still hashes to
    its record: shard index -> record (with ``"manifest"``, where it was found)."""
    done = {}
    for mname, manifest in manifests.items():
        for name, record in manifest.get("shards", {}).items():
            match = _SHARD.match(name)
            path = os.path.join(folder, name)
            if match is None or not os.path.exists(path):
                continue
            index = int(match.group(1))
            if index in done:
                continue
            if sha256_file(path) == record["sha256"]:
                done[index] = {**record, "manifest": mname}
    return done


def stale_temporaries(folder: str) -> list[str]:
    """Temporary files left by writers that were cut off."""
    return sorted(glob.glob(os.path.join(folder, ".*.tmp")))


def foreign_entries(folder: str) -> list[str]:
    """Entries of ``folder`` that no datagen run writes."""
    ours = re.compile(r"(shard-\d{5,}\.npz|manifest(\.p\d+)?\.json|\..+\.tmp)$")
    return sorted(e for e in os.listdir(folder) if not ours.match(e))
