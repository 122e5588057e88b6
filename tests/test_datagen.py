"""Data generation (``python -m jaxsolve.datagen``): the plan, the data against
independent references, resuming after SIGKILL, device-count independence, bad
input and a full disk.

Small on purpose (16x16 Darcy, 24 systems, 3 shards): one in-process reference
run is shared by the module, and the subprocess runs share a persistent
compilation cache.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import jaxsolve.datagen as datagen
from jaxsolve.datagen import _groups, _shards
from jaxsolve.problems import darcy_family

pytestmark = pytest.mark.xdist_group("datagen")

OPTS = datagen.RunOptions(family="darcy", systems=24, grid=16, shard_size=8)
ARGS = ["darcy", "--systems", "24", "--grid", "16", "--shard-size", "8"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted one-device run, in this process."""
    folder = str(tmp_path_factory.mktemp("reference"))
    notes = []
    summary = datagen.generate(folder, OPTS, progress=False, log=notes.append)
    return folder, summary, notes


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Environment of the subprocess runs: one shared compilation cache, and
    this process's XLA options (the test run's optimisation level and
    emitters, see ``conftest.py``: the data are compared bit for bit, and both
    change the last bits) without any forced device count."""
    out = dict(os.environ)
    flags = os.environ.get("XLA_FLAGS", "").split()
    out["XLA_FLAGS"] = " ".join(f for f in flags if "device_count" not in f)
    out["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax-cache"))
    out["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    out["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return out


def _cli(folder, env, *extra, **kwargs):
    cmd = [sys.executable, "-m", "jaxsolve.datagen", *ARGS, "--out", str(folder)]
    return subprocess.run(
        [*cmd, "--no-progress", *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def _assert_same_data(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_hilbert_curve_steps_to_a_neighbour_every_time():
    for dim, bits in ((2, 4), (3, 3)):
        axes = np.meshgrid(*[np.arange(2**bits)] * dim, indexing="ij")
        cells = np.stack(axes, -1).reshape(-1, dim)
        index = _groups.hilbert_index(cells, bits)
        assert np.array_equal(np.sort(index), np.arange(len(cells)))  # a bijection
        path = cells[np.argsort(index)]
        assert np.all(np.abs(np.diff(path, axis=0)).sum(axis=1) == 1)


def test_groups_partition_the_systems_into_close_balanced_groups():
    params = np.asarray(darcy_family(60, 16, seed=3).params)
    groups = _groups.split_groups(params, 16)
    assert sorted(len(g) for g in groups) == [15, 15, 15, 15]
    assert np.array_equal(np.sort(np.concatenate(groups)), np.arange(60))
    # Systems of one group are closer (reduced features) than random groups.
    feats = _groups.reduced_features(params)
    spread = lambda gs: np.mean([feats[g].std(axis=0).sum() for g in gs])  # noqa: E731
    shuffled = np.random.default_rng(0).permutation(60).reshape(4, 15)
    assert spread(groups) < 0.8 * spread(shuffled)


def test_data_in_original_order_checked_against_scipy(reference):
    import scipy.sparse.linalg as spla

    folder, summary, notes = reference
    assert summary["shards_computed"] == 3 and summary["failed"] == 0
    assert "24 systems" in notes[-1] and "systems/s" in notes[-1]
    data = datagen.load(folder)
    fam = darcy_family(24, 16, seed=0)
    np.testing.assert_array_equal(data["params"], np.asarray(fam.params))
    np.testing.assert_array_equal(data["rhs"], np.asarray(fam.b))
    assert data["ok"].all() and (data["results"] == 0).all()
    b = np.asarray(fam.b).ravel()
    for i in range(24):  # an independent residual, from scipy's matrix
        matrix = fam.to_scipy(data["params"][i])
        x = data["solutions"][i].ravel()
        rel = np.linalg.norm(b - matrix @ x) / np.linalg.norm(b)
        assert rel <= 2e-8
        np.testing.assert_allclose(rel, data["residuals"][i], rtol=1e-3)
        if i % 8 == 0:  # and a direct solve
            exact = spla.spsolve(matrix.tocsc(), b)
            err = np.linalg.norm(x - exact) / np.linalg.norm(exact)
            assert err < 1e-6
    assert np.all(data["matvecs"] > 0)
    # The manifest's checksums are those of the files.
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    assert manifest["run"]["family"] == "darcy" and len(manifest["shards"]) == 3
    for name, record in manifest["shards"].items():
        sha = _shards.sha256_file(os.path.join(folder, name))
        assert sha == record["sha256"]
        assert record["process"] == 0 and record["systems"] == 8


def test_float64_work_run_equals_the_mixed_precision_default(tmp_path, reference):
    """The default run (``reference``) does GCRO-DR's Krylov work in float32;
    ``--work-dtype float64`` gives the same data to the tolerance, every saved
    solution of either meets rtol in float64 (an independent scipy residual),
    and the manifests say which: float32 recorded, float64 left out (as in
    manifests written before the option existed, which still resume)."""
    opts = datagen.RunOptions(
        family="darcy", systems=24, grid=16, shard_size=8, work_dtype="float64"
    )
    summary = datagen.generate(str(tmp_path), opts, progress=False)
    assert summary["failed"] == 0
    data, ref = datagen.load(str(tmp_path)), datagen.load(reference[0])
    assert data["ok"].all() and data["solutions"].dtype == np.float64
    fam = darcy_family(24, 16, seed=0)
    b = np.asarray(fam.b).ravel()
    for i in range(24):
        x = data["solutions"][i].ravel()
        rel = np.linalg.norm(b - fam.to_scipy(data["params"][i]) @ x)
        assert rel <= 2e-8 * np.linalg.norm(b)
        x_ref = ref["solutions"][i].ravel()
        assert np.linalg.norm(x - x_ref) <= 1e-6 * np.linalg.norm(x_ref)
    run = json.load(open(tmp_path / "manifest.json"))["run"]
    assert "work_dtype" not in run
    default = json.load(open(os.path.join(reference[0], "manifest.json")))["run"]
    assert default["work_dtype"] == "float32"


def test_rerun_skips_finished_shards_and_refuses_other_options(reference):
    folder = reference[0]
    before = {n: os.stat(os.path.join(folder, n)) for n in os.listdir(folder)}
    summary = datagen.generate(folder, OPTS, progress=False, log=lambda _: None)
    assert summary["shards_computed"] == 0 and summary["shards_skipped"] == 3
    for name, stat in before.items():
        if name.startswith("shard"):
            now = os.stat(os.path.join(folder, name))
            assert (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    other = datagen.RunOptions(**{**OPTS.__dict__, "rtol": 1e-6})
    with pytest.raises(datagen.DatagenError, match="another run's data.*rtol"):
        datagen.generate(folder, other, progress=False)


def test_bad_input_is_refused_with_a_clear_message(tmp_path, capsys):
    bad = [
        (["heatwave", "--systems", "4", "--grid", "8"], "unknown family 'heatwave'"),
        (["darcy", "--systems", "4", "--grid", "2"], "--grid must be >= 4"),
        (["darcy", "--systems", "4", "--grid", "8", "--shard-size", "0"], "shard"),
        (["darcy", "--systems", "4", "--grid", "8", "--shard-size", "9"], "exceeds"),
        (["darcy", "--systems", "4", "--grid", "8", "--k", "40"], "--k < --m"),
        (["darcy", "--systems", "0", "--grid", "8"], "--systems must be >= 1"),
        (["darcy", "--systems", "4", "--grid", "8", "--ritz-every", "0"], "ritz"),
        (
            ["darcy", "--systems", "4", "--grid", "8", "--method", "gmres"]
            + ["--work-dtype", "float32"],
            "needs --method gcrodr",
        ),
    ]
    for args, message in bad:
        with pytest.raises(SystemExit) as exit_info:
            datagen_main([*args, "--out", str(tmp_path / "x")])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("someone else's")
    with pytest.raises(datagen.DatagenError, match="not empty"):
        datagen.generate(str(tmp_path), OPTS, progress=False)


def datagen_main(argv):
    from jaxsolve.datagen.__main__ import main

    return main(argv)


def test_full_disk_keeps_finished_shards_valid(tmp_path, reference, monkeypatch):
    folder = str(tmp_path / "full")
    real = _shards._write_file
    calls = {"shards": 0}

    def filling_up(path, data, **kwargs):
        if os.path.basename(path).startswith(".shard-"):
            calls["shards"] += 1
            if calls["shards"] == 2:
                with open(path, "wb") as f:  # a part lands, then the disk is full
                    f.write(data[:100])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real(path, data, **kwargs)

    monkeypatch.setattr(_shards, "_write_file", filling_up)
    with pytest.raises(datagen.DatagenError, match="disk is full.*rerun the same"):
        datagen.generate(folder, OPTS, progress=False)
    assert not _shards.stale_temporaries(folder)  # the partial file is gone
    done = _shards.finished_shards(folder, _shards.read_manifests(folder))
    assert list(done) == [0]
    with pytest.raises(datagen.DatagenError, match="incomplete"):
        datagen.load(folder)
    monkeypatch.setattr(_shards, "_write_file", real)
    summary = datagen.generate(folder, OPTS, progress=False, log=lambda _: None)
    assert summary["shards_skipped"] == 1 and summary["shards_computed"] == 2
    _assert_same_data(datagen.load(folder), datagen.load(reference[0]))


def test_sigkill_mid_shard_then_resume_equals_uninterrupted_run(
    tmp_path, reference, env
):
    folder = tmp_path / "killed"
    pause = {**env, "JAXSOLVE_DATAGEN_TEST_PAUSE_IN_SHARD": "2"}
    cmd = [sys.executable, "-m", "jaxsolve.datagen", *ARGS, "--out", str(folder)]
    proc = subprocess.Popen(
        [*cmd, "--no-progress"], env=pause, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline, seen = time.monotonic() + 240, ""
        while "datagen-test: paused" not in seen:
            assert time.monotonic() < deadline and proc.poll() is None, seen
            ready, _, _ = select.select([proc.stderr], [], [], 1.0)
            if ready:
                seen += proc.stderr.readline()
        os.kill(proc.pid, signal.SIGKILL)  # mid-shard: shard 1 is half written
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert (folder / "shard-00000.npz").exists()
    assert not (folder / "shard-00001.npz").exists()
    assert len(_shards.stale_temporaries(str(folder))) == 1  # the torn file
    first = os.stat(folder / "shard-00000.npz")

    resumed = _cli(folder, env)
    assert resumed.returncode == 0, resumed.stderr
    assert "2 shards computed, 1 already done" in resumed.stdout
    assert not _shards.stale_temporaries(str(folder))
    now = os.stat(folder / "shard-00000.npz")  # not recomputed, not rewritten
    assert (now.st_ino, now.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    manifest = json.load(open(folder / "manifest.json"))
    assert manifest["shards"]["shard-00000.npz"]["pid"] == proc.pid
    assert manifest["shards"]["shard-00001.npz"]["pid"] != proc.pid
    _assert_same_data(datagen.load(str(folder)), datagen.load(reference[0]))


def test_four_devices_give_the_one_device_data(tmp_path, env):
    # Every device runs the same one-group program on its own (no collective)
    # and the groups do not depend on the device count: bit-identical data.
    # With XLA's default (MLIR) fusion emitters, as users run it: under the
    # older emitters that conftest.py selects for speed, the last bits of the
    # one- and four-device runs differed (up to 1e-8 relative). Both runs are
    # subprocesses with the same options.
    flags = [f for f in env["XLA_FLAGS"].split() if "fusion_emitters" not in f]
    one = {**env, "XLA_FLAGS": " ".join(flags)}
    four_devices = "--xla_force_host_platform_device_count=4"
    four = {**env, "XLA_FLAGS": " ".join([*flags, four_devices])}
    for name, run_env in (("one", one), ("four", four)):
        run = _cli(tmp_path / name, run_env)
        assert run.returncode == 0, run.stderr
    manifest = json.load(open(tmp_path / "four" / "manifest.json"))
    assert len(manifest["runs"][-1]["devices"]) == 4
    _assert_same_data(
        datagen.load(str(tmp_path / "four")), datagen.load(str(tmp_path / "one"))
    )


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("joined", [False, True], ids=["independent", "distributed"])
def test_two_processes_split_the_shards_and_load_merges_them(
    tmp_path, reference, env, joined
):
    # independent: two plain processes; distributed: joined through
    # jax.distributed.initialize (a coordinator on localhost).
    folder = tmp_path / "two"
    extra = ["--coordinator", f"localhost:{_free_port()}"] if joined else []
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "jaxsolve.datagen", *ARGS, "--out", str(folder)]
            + ["--no-progress", "--num-processes", "2", "--process-id", str(i)]
            + extra,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    m0 = json.load(open(folder / "manifest.json"))
    m1 = json.load(open(folder / "manifest.p1.json"))
    assert sorted(m0["shards"]) == ["shard-00000.npz", "shard-00002.npz"]
    assert sorted(m1["shards"]) == ["shard-00001.npz"]
    assert m1["shards"]["shard-00001.npz"]["process"] == 1
    _assert_same_data(datagen.load(str(folder)), datagen.load(reference[0]))


@pytest.mark.slow
def test_gmres_method_and_failed_systems_are_flagged(tmp_path):
    # GMRES(5) capped at 30 steps cannot reach 1e-8: every system fails, is
    # recorded with max_steps_reached, ok=False and a NaN solution.
    opts = datagen.RunOptions(
        family="darcy", systems=6, grid=8, shard_size=3, method="gmres", m=5,
        k=2, max_steps=30,
    )  # fmt: skip
    summary = datagen.generate(str(tmp_path), opts, progress=False, log=print)
    data = datagen.load(str(tmp_path))
    assert summary["failed"] == 6 and not data["ok"].any()
    assert np.isnan(data["solutions"]).all()
    assert (data["results"] == datagen_results().max_steps_reached._value).all()
    good = datagen.RunOptions(**{**opts.__dict__, "max_steps": None, "m": 20})
    datagen.generate(str(tmp_path / "good"), good, progress=False, log=print)
    data = datagen.load(str(tmp_path / "good"))
    assert data["ok"].all() and (data["residuals"] <= 2e-8).all()


def datagen_results():
    from jaxsolve import RESULTS

    return RESULTS
