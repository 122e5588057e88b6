"""The result type shared by every jaxsolve solver.

Every solver returns a :class:`Solution`: the solution value(s), a result code
(:class:`RESULTS`) carrying a human-readable message, and statistics. With
``throw=True`` a failed solve raises a clear runtime error (inside ``jit`` too, via
:func:`equinox.branched_error_if`); with ``throw=False`` the code is returned, so that
one bad element of a ``vmap``-ed batch does not abort the others.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, PyTree

__all__ = ["RESULTS", "Solution", "error_if_failed", "finalize"]


class RESULTS(eqx.Enumeration):
    """Result codes of every jaxsolve solver. ``RESULTS[code]`` is the message."""

    successful = ""
    max_steps_reached = (
        "the maximum number of steps was reached before the requested tolerance; "
        "increase `max_steps`, loosen `rtol`/`atol`, or use a preconditioner"
    )
    breakdown = (
        "the iteration broke down (a division by zero or a loss of progress); "
        "the system may be singular or badly conditioned"
    )
    stagnation = (
        "the residual stopped decreasing above the tolerance; the tolerance may be "
        "below the accuracy attainable in this dtype (loosen `rtol`/`atol`)"
    )
    not_positive_definite = (
        "the operator is not symmetric positive definite (p^T A p <= 0 was met), "
        "but this solver requires it; use gmres or bicgstab for indefinite systems"
    )
    nonfinite_input = "an input contains NaN or Inf"
    nonfinite_value = "a NaN or Inf appeared during the iteration"
    invalid_input = (
        "an input value is invalid (a negative tolerance, a negative or zero-mass "
        "marginal, a non-positive regularisation, ...)"
    )


class Solution(eqx.Module):
    """What every solver returns.

    Attributes:
        value: the solution (an array or a pytree of arrays).
        result: a :class:`RESULTS` code; ``RESULTS.successful`` when converged.
        num_steps: the number of iterations taken (int array).
        residual: the final residual norm in the solver's own stopping measure
            (for a linear solve ``||b - A x||_2``).
        stats: solver-specific extra statistics, a dict of arrays.
        aux: solver-specific auxiliary outputs (not differentiated).
    """

    value: PyTree[Array]
    result: RESULTS
    num_steps: Array
    residual: Array
    stats: dict[str, Array] = eqx.field(default_factory=dict)
    aux: Any = None

    @property
    def succeeded(self) -> Array:
        """Boolean array: whether the solve succeeded (batched under ``vmap``)."""
        return self.result == RESULTS.successful

    @property
    def message(self) -> str | list:
        """The human-readable message of a concrete (non-traced) result.

        For a batched result (after ``vmap``) a nested list of messages is returned.
        """
        codes = jnp.asarray(self.result._value)
        messages = RESULTS._index_to_message
        if codes.ndim == 0:
            return messages[int(codes)] or "success"
        return [messages[int(c)] or "success" for c in codes.reshape(-1)]


def error_if_failed(token, result: RESULTS, solver_name: str):
    """Return ``token``, raising a runtime error (under ``jit`` too) whose message
    names the solver and the reason when ``result`` is not ``successful``."""
    messages = [
        f"{solver_name}: {m}" if m else f"{solver_name}: success"
        for m in RESULTS._index_to_message
    ]
    failed = result != RESULTS.successful
    return eqx.branched_error_if(token, failed, result._value, messages)


def finalize(solution: Solution, throw: bool, solver_name: str) -> Solution:
    """Apply the ``throw`` policy: raise a runtime error naming the solver when the
    solve did not succeed (``throw=True``), else return the solution unchanged."""
    if not throw:
        return solution
    value = error_if_failed(solution.value, solution.result, solver_name)
    return eqx.tree_at(lambda s: s.value, solution, value)
