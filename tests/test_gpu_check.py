"""benchmarks/gpu_check.py must run (here on the CPU) and pass every case."""

import importlib.util
import pathlib

import pytest

SCRIPT = pathlib.Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_passes_on_cpu(gpu_check, capsys):
    # One case (both dtypes) in the default run: the script's plumbing. The test
    # matrix runs every case on the CPU already; the full script is a slow test.
    status = gpu_check.main(["-k", "dense_solve"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "FAIL" not in out
    assert out.count("PASS") == 2


@pytest.mark.slow
def test_gpu_check_full_run(gpu_check, capsys):
    assert gpu_check.main([]) == 0, capsys.readouterr().out


# The test run compiles with XLA options that users do not (conftest.py: backend
# optimisation level 0, the older elemental emitters). These cases run the
# script's checks in a subprocess with XLA's defaults, so that the code users
# get is tested too: the most intricate solver of each family.
_DEFAULT_OPTION_CASES = [
    "sinkhorn_newton_sparse",
    "gcrodr/dense",
    "custom_root/logistic_newton",
]


@pytest.mark.parametrize("name", _DEFAULT_OPTION_CASES)
def test_gpu_check_under_xla_default_options(name):
    import os
    import subprocess
    import sys

    test_options = ("xla_backend_optimization_level", "xla_cpu_use_fusion_emitters")
    flags = os.environ.get("XLA_FLAGS", "").split()
    flags = [f for f in flags if not any(o in f for o in test_options)]
    env = {**os.environ, "XLA_FLAGS": " ".join(flags)}
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "-k", name],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert "FAIL" not in run.stdout
    assert run.stdout.count("PASS") == 2, run.stdout
