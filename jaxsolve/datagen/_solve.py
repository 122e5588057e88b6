"""Solving groups of systems in parallel, one group per device.

Each device receives one group's parameter fields, already in solve order, and
runs :func:`jaxsolve.solve_family` on them (``order="given"``): with GCRO-DR one
``lax.scan`` carrying that device's own recycle space from system to system. The
groups of a step are laid out along a one-axis device mesh and the solve is a
``shard_map`` over it, so every device runs the same single-group program
independently (no collective, no communication): the numbers a group gets do not
depend on how many devices share the work.

After the solve, each solution's residual ``||b - A x|| / ||b||`` is recomputed
with a fresh product, outside the solver (its own figure is a recurrence that
the data must not be taken on trust from).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ..solvers.linear import solve_family

__all__ = ["GroupSolver"]


def _solve_one_group(make_operator: Callable, method: str, options: dict):
    """``(params (K, n, n), b (n, n)) -> dict of (K, ...) arrays`` for one group."""

    def solve(params, b):
        sol = solve_family(
            make_operator, params, b, method=method, order="given", **options
        )
        residual = jax.vmap(lambda p, x: b - make_operator(p)(x))(params, sol.value)
        axes = tuple(range(1, residual.ndim))
        rel = jnp.sqrt(jnp.sum(residual**2, axis=axes)) / jnp.sqrt(jnp.sum(b**2))
        return {
            "solutions": sol.value,
            "results": sol.result._value.astype(jnp.int32),
            "matvecs": sol.stats["matvecs"].astype(jnp.int64),
            "steps": sol.num_steps.astype(jnp.int64),
            "residuals": rel,
        }

    return solve


class GroupSolver:
    """Solves ``len(devices)`` groups of ``size`` systems at a time.

    Args:
        make_operator: ``p -> matvec`` of the family (``(n, n) -> (n, n)``).
        b: the shared right-hand side, ``(n, n)``.
        size: systems per group (static; shorter groups are padded by the caller).
        devices: the devices to spread the groups over (this process's own).
        method: ``"gcrodr"`` or a :data:`jaxsolve.solvers.linear.LINEAR_METHODS`
            name.
        options: solver options (``rtol``, ``m``, ``k`` / ``restart``,
            ``max_steps``); ``throw`` is always ``False`` (a failed system is
            recorded with its code, not raised).
    """

    def __init__(self, make_operator, b, size, devices, method, options):
        self.devices = list(devices)
        self.mesh = Mesh(np.array(self.devices), ("group",))
        self.b = jax.device_put(b, NamedSharding(self.mesh, P()))
        self.size = size
        self._in = NamedSharding(self.mesh, P("group"))
        one = _solve_one_group(make_operator, method, {**options, "throw": False})

        def per_device(params, b):
            out = one(params[0], b)  # this device's block holds one group
            return jax.tree_util.tree_map(lambda x: x[None], out)

        # check_vma=False: the solvers run JAX transforms (linear_transpose,
        # eval_shape) on the operator, which mixes per-device and replicated
        # values; every device works alone, so there is nothing to check.
        step = jax.shard_map(
            per_device,
            mesh=self.mesh,
            in_specs=(P("group"), P()),
            out_specs=P("group"),
            check_vma=False,
        )
        self._step = jax.jit(step)
        self._compiled = None
        self.compile_seconds = 0.0

    @property
    def width(self) -> int:
        """Groups solved per call (the number of devices)."""
        return len(self.devices)

    def compile(self, n: int, dtype) -> None:
        """Compile ahead of the first call (its time is reported separately;
        zero when an earlier run of this session compiled it already)."""
        if self._compiled is not None:
            self.compile_seconds = 0.0
            return
        start = time.perf_counter()
        spec = jax.ShapeDtypeStruct(
            (self.width, self.size, n, n), dtype, sharding=self._in
        )
        self._compiled = self._step.lower(spec, self.b).compile()
        self.compile_seconds = time.perf_counter() - start

    def dispatch(self, params: np.ndarray):
        """Start solving ``params`` (``(width, size, n, n)``); returns the result
        pytree of device arrays without waiting (JAX dispatches asynchronously,
        so the host can write the previous step's shards meanwhile)."""
        if self._compiled is None:
            self.compile(params.shape[-1], params.dtype)
        return self._compiled(jax.device_put(params, self._in), self.b)
