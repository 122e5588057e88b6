"""The result type shared by every jaxsolve solver.

Every solver returns a :class:`Solution`: the solution value(s), a result code
(:class:`RESULTS`) carrying a human-readable message, and statistics. With
``throw=True`` a failed solve raises a clear runtime error (inside ``jit`` too, via
:func:`equinox.branched_error_if`), whichever output or derivative the caller uses;
with ``throw=False`` the code is returned, so that one bad element of a ``vmap``-ed
batch does not abort the others, and the derivatives of a failed solve are NaN
(never a finite wrong number). :func:`finalize` applies this policy.
"""

from __future__ import annotations

import functools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree

__all__ = [
    "RESULTS",
    "Solution",
    "error_if_failed",
    "finalize",
    "guard",
    "poison_if_failed",
    "restore_if_failed",
]


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
    nonlinear_operator = (
        "the operator is not linear: A 0 != 0 (an affine map x -> A x + c is not "
        "a linear operator; move the constant c to the right-hand side)"
    )
    not_symmetric = (
        "the operator is not symmetric (u^T A v != v^T A u for a random probe pair) "
        "but this solver requires a symmetric positive definite operator (its "
        "derivatives would use A for A^T); use gmres or bicgstab"
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


def _messages(solver_name: str, overrides: dict[str, str] | None) -> tuple[str, ...]:
    """One message per code, prefixed with the solver's name; ``overrides`` maps a
    code's name (``"stagnation"``, ...) to a message specific to this solver."""
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(RESULTS._name_to_item)
    if unknown:
        raise ValueError(f"unknown result codes in `messages`: {sorted(unknown)}")
    out = []
    for name, message in zip(
        RESULTS._name_to_item, RESULTS._index_to_message, strict=True
    ):
        message = overrides.get(name, message)
        out.append(f"{solver_name}: {message or 'success'}")
    return tuple(out)


def _is_inexact(x) -> bool:
    return eqx.is_array(x) and jnp.issubdtype(x.dtype, jnp.inexact)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _guard_derivatives(leaves, failed, code, messages):
    """The identity on ``leaves``; its derivative is the identity times a scalar
    that is NaN when ``failed`` (and that raises when ``messages`` is given)."""
    del code
    # Each leaf passes through a select on ``failed`` (XLA folds it away): under
    # ``vmap`` with a batched ``failed`` the leaves are then batched as their
    # tangents are (those depend on ``failed``). A primal batched unlike its
    # tangent breaks JAX's batching of the rule inside a differentiated ``jit``
    # (``jvp(vmap(jit(solve)))``: a shape error).
    return tuple(jnp.where(failed, leaf, leaf) for leaf in leaves)


@_guard_derivatives.defjvp
def _guard_derivatives_jvp(messages, primals, tangents):
    leaves, failed, code = primals
    # A scalar computed from the primal inputs only, so that the tangent stays
    # linear in the input tangents (and transposes for reverse mode). Reverse mode
    # multiplies the cotangents by it: the check is then part of the backward pass
    # and cannot be dropped as dead code, whichever output was differentiated.
    scale = jnp.where(failed, jnp.nan, 1.0)
    if messages is not None:
        scale = eqx.branched_error_if(scale, failed, code, messages)
    tangent_leaves = tuple(t * scale.astype(t.dtype) for t in tangents[0])
    return leaves, tangent_leaves


def guard(
    tree: PyTree,
    result: RESULTS,
    solver_name: str,
    throw: bool,
    messages: dict[str, str] | None = None,
) -> PyTree:
    """Tie the outcome ``result`` of a solve to every array of ``tree``.

    With ``throw=True`` a failed ``result`` raises a runtime error naming the solver
    and the reason, whichever leaf of ``tree`` the caller uses (under ``jit``, a check
    tied to one output only is dropped when that output is unused) and whichever
    derivative of it (forward or reverse mode: the check also rides on the
    tangents). With ``throw=False`` nothing raises, the values are returned as they
    are, and the *derivatives* of a failed solve are NaN: an inexact solve has no
    trustworthy derivative, and NaN is never mistaken for one (policy shared by
    every jaxsolve solver).

    ``messages`` maps code names to messages specific to this solver (for example
    what to loosen when it stagnates); the others keep :class:`RESULTS`'s.
    """
    msgs = _messages(solver_name, messages) if throw else None
    failed = result != RESULTS.successful
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    inexact = [i for i, leaf in enumerate(leaves) if _is_inexact(leaf)]
    if inexact:
        guarded = _guard_derivatives(
            tuple(leaves[i] for i in inexact), failed, result._value, msgs
        )
        for i, leaf in zip(inexact, guarded, strict=True):
            leaves[i] = leaf
    tree = jax.tree_util.tree_unflatten(treedef, leaves)
    if throw:
        tree = eqx.branched_error_if(tree, failed, result._value, msgs)
    return tree


def error_if_failed(
    token,
    result: RESULTS,
    solver_name: str,
    messages: dict[str, str] | None = None,
):
    """Return ``token``, raising a runtime error (under ``jit`` too) whose message
    names the solver and the reason when ``result`` is not ``successful``.

    The check rides on ``token`` alone (and not on its derivatives); use
    :func:`guard` (or :func:`finalize`) for the outputs a caller sees."""
    failed = result != RESULTS.successful
    msgs = _messages(solver_name, messages)
    return eqx.branched_error_if(token, failed, result._value, msgs)


def poison_if_failed(x, result: RESULTS):
    """``x``, or NaN where ``result`` failed: what a solve of a *derivative*
    returns with ``throw=False`` when it did not converge (a finite but wrong
    derivative would be taken for a right one)."""
    failed = result != RESULTS.successful
    return jax.tree_util.tree_map(lambda v: jnp.where(failed, jnp.nan, v), x)


@jax.custom_jvp
def restore_if_failed(x, last, failed):
    """``last`` where ``failed``, else ``x``; the derivative is that of ``x``,
    NaN where ``failed``: a failed solve reports its last iterate (``x`` itself
    is poisoned, :func:`poison_if_failed`), but its derivative is not finite."""
    return jnp.where(failed, last, x)


@restore_if_failed.defjvp
def _restore_if_failed_jvp(primals, tangents):
    x, last, failed = primals
    scale = jnp.where(failed, jnp.nan, 1.0).astype(tangents[0].dtype)
    return restore_if_failed(x, last, failed), tangents[0] * scale


def finalize(
    solution: Solution,
    throw: bool,
    solver_name: str,
    messages: dict[str, str] | None = None,
) -> Solution:
    """Apply the ``throw`` policy to a whole :class:`Solution` (:func:`guard`):
    with ``throw=True`` a failed solve raises, whichever of its outputs or of their
    derivatives is used; with ``throw=False`` it is returned with its code and the
    derivatives of a failed solve are NaN."""
    return guard(solution, solution.result, solver_name, throw, messages)
