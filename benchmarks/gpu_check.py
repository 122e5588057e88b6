"""Run every registered solver on whatever accelerator JAX finds, jitted, with
gradients, in float32 and float64, and print a pass/fail table.

    python benchmarks/gpu_check.py            # exit status 1 if any check fails

For each case of ``jaxsolve.testing.REGISTRY`` and each dtype it checks that the
jitted solve succeeds to the case's tolerance on the default device, that the
jitted reverse-mode gradient of ``sum(value**2)`` and a forward-mode jvp are
finite, and that (in float64) the jvp agrees with a central finite difference.
The test suite runs it on the CPU (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxsolve.testing import REGISTRY  # noqa: E402


def _direction(tree, seed=0):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef,
        [
            jax.random.normal(k, jnp.shape(x), jnp.asarray(x).dtype)
            for k, x in zip(keys, leaves, strict=True)
        ],
    )


def check_case(case, dtype) -> tuple[bool, str, float]:
    """Returns (passed, detail, seconds) for one case and dtype."""
    start = time.perf_counter()
    device = jax.devices()[0]
    inputs = jax.device_put(case.make_inputs(dtype), device)
    value = lambda *i: case.solve(*i).value  # noqa: E731
    loss = lambda *i: sum(jnp.sum(v**2) for v in jax.tree_util.tree_leaves(value(*i)))  # noqa: E731
    sol = jax.jit(lambda *i: case.solve(*i, throw=False))(*inputs)
    if not bool(sol.succeeded):
        return False, f"solve failed: {sol.message}", time.perf_counter() - start
    residual = float(case.residual(sol.value, *inputs))
    if not residual <= case.tolerance[jnp.dtype(dtype).name]:
        return (
            False,
            f"residual {residual:.1e} above tolerance",
            time.perf_counter() - start,
        )
    argnums = tuple(range(len(inputs)))
    grads = jax.jit(jax.grad(loss, argnums=argnums))(*inputs)
    if not all(
        bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads)
    ):
        return False, "non-finite gradient", time.perf_counter() - start
    direction = _direction(inputs)
    tangent = jax.jit(lambda i, d: jax.jvp(value, i, d)[1])(inputs, direction)
    detail = f"residual {residual:.1e}"
    if jnp.dtype(dtype) == jnp.float64:
        h = case.fd_step
        shift = lambda a: jax.tree_util.tree_map(
            lambda x, d: x + a * d, inputs, direction
        )  # noqa: E731
        plus, minus = jax.jit(value)(*shift(h)), jax.jit(value)(*shift(-h))
        errors = [
            float(
                np.max(
                    np.abs(np.asarray(t) - (np.asarray(p) - np.asarray(m)) / (2 * h))
                )
            )
            / (1e-12 + float(np.max(np.abs(np.asarray(t)))))
            for t, p, m in zip(
                jax.tree_util.tree_leaves(tangent),
                jax.tree_util.tree_leaves(plus),
                jax.tree_util.tree_leaves(minus),
                strict=True,
            )
        ]
        worst = max(errors)
        detail += f", jvp vs FD {worst:.1e}"
        if not worst <= 1e-4:
            return False, detail, time.perf_counter() - start
    return True, detail, time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only cases whose name contains this")
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    print(f"jaxsolve GPU check on {device.platform}: {device} (JAX {jax.__version__})")
    rows, failures = [], 0
    for name in sorted(REGISTRY):
        if args.k not in name:
            continue
        for dtype in (jnp.float32, jnp.float64):
            try:
                passed, detail, seconds = check_case(REGISTRY[name], dtype)
            except Exception as e:  # report, do not stop the table
                passed, detail, seconds = False, f"{type(e).__name__}: {e}"[:120], 0.0
            failures += not passed
            rows.append(
                (
                    name,
                    jnp.dtype(dtype).name,
                    "PASS" if passed else "FAIL",
                    f"{seconds:.1f}",
                    detail,
                )
            )
    widths = [
        max(len(r[i]) for r in rows + [("case", "dtype", "result", "s", "detail")])
        for i in range(5)
    ]
    header = ("case", "dtype", "result", "s", "detail")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    print(f"{len(rows) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
