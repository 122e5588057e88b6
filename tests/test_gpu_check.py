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
