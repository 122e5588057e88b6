import os

# Most of the test suite's time is XLA compiling many small programs. Two XLA
# CPU options cut it, and buy nothing at test sizes:
# - backend optimisation level 0: about three quarters of a CPU compilation were
#   the LLVM backend's optimisation passes (measured: test_matrix + test_implicit,
#   593 -> 496 s of CPU);
# - XLA's older elemental IR emitters in place of its MLIR fusion emitters
#   (`--xla_cpu_use_fusion_emitters=false`): with level 0, SNS compiles in 0.2-0.3
#   of the default options' time (benchmarks/README.md, ot_compile.py). Measured
#   on 2 cores, level 0 in both runs: test_matrix + test_ot 226 -> 118 s (216
#   tests). Their code runs more slowly (a Sinkhorn solve at 60 x 50: 68 -> 186
#   ms, 645 ms with level 0 too), which the tests' sizes do not feel.
# Results can differ in the last bits from the default options' (contractions
# into fused multiply-adds, the order of vectorised sums): a subprocess whose
# output is compared bit for bit with this process's must inherit XLA_FLAGS.
# Under the older emitters the last bits can also depend on the number of host
# devices, so test_datagen's four-device run and its one-device reference both
# drop the emitter option.
# JAXSOLVE_TEST_XLA_OPT=1 keeps XLA's defaults; the benchmarks never set these.
if os.environ.get("JAXSOLVE_TEST_XLA_OPT") != "1":
    _flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in _flags:
        _flags = f"{_flags} --xla_backend_optimization_level=0"
    if "xla_cpu_use_fusion_emitters" not in _flags:
        _flags = f"{_flags} --xla_cpu_use_fusion_emitters=false"
    os.environ["XLA_FLAGS"] = _flags.strip()

import jax  # noqa: E402  (XLA reads XLA_FLAGS when its backend starts)

# Tests run in float64; float32 cases ask for it explicitly.
jax.config.update("jax_enable_x64", True)


import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module.

    Every XLA CPU executable keeps memory mappings for its code while it is
    cached, and a process may hold at most ``vm.max_map_count`` (65,530 by
    default on Linux) mappings. A single-process run of the whole suite reached
    it (measured: 64,635 mappings at 4.5 GB, then a segfault or abort inside
    XLA's compiler in ``test_matrix.py``); two xdist workers each stay under it,
    but with a shrinking margin as the suite grows. Test modules share their
    compiled functions within the module, so clearing here recompiles little.
    (Training code that compiles thousands of programs in one process can hit
    the same limit: raise ``vm.max_map_count`` or call ``jax.clear_caches()``.)"""
    yield
    jax.clear_caches()
    gc.collect()
