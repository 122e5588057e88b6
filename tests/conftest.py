import os

# Most of the test suite's time is XLA compiling many small programs, and about
# three quarters of a CPU compilation is the LLVM backend's optimisation passes,
# which buy nothing at test sizes: at level 0 the default run takes about a fifth
# less time (measured: test_matrix + test_implicit, 593 -> 496 s of CPU). The
# passes are not meant to change results (XLA:CPU uses no fast-math by default).
# JAXSOLVE_TEST_XLA_OPT=1 keeps XLA's default level; the benchmarks never set it.
if os.environ.get("JAXSOLVE_TEST_XLA_OPT") != "1":
    _flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in _flags:
        os.environ["XLA_FLAGS"] = f"{_flags} --xla_backend_optimization_level=0".strip()

import jax  # noqa: E402  (XLA reads XLA_FLAGS when its backend starts)

# Tests run in float64; float32 cases ask for it explicitly.
jax.config.update("jax_enable_x64", True)
