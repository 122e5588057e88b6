"""The one iteration pattern shared by jaxsolve's solvers.

A solver is written as a state, a ``step(state) -> state`` and a
``keep_going(state) -> bool``; :func:`iterate` runs it in a ``lax.while_loop`` with a
step counter and a static-shape carry, so it works under ``jit`` and ``vmap`` (under
``vmap`` the finished elements of a batch are frozen while the others go on).

Solvers are never differentiated through this loop: derivatives come from the
implicit layer (``jaxsolve.implicit``) or from ``jax.lax.custom_linear_solve``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

State = TypeVar("State")

__all__ = ["iterate"]


def iterate(
    step: Callable[[State], State],
    keep_going: Callable[[State], Array],
    init: State,
    max_steps: int | Array,
) -> tuple[State, Array]:
    """Apply ``step`` while ``keep_going(state)`` and fewer than ``max_steps`` steps.

    Returns the final state and the number of steps taken (an int32 array).
    """

    def cond(carry):
        k, state = carry
        return jnp.logical_and(k < max_steps, keep_going(state))

    def body(carry):
        k, state = carry
        return k + 1, step(state)

    num_steps, state = lax.while_loop(cond, body, (jnp.asarray(0, jnp.int32), init))
    return state, num_steps
