r"""What every bilevel method shares: the problem's functions, trace-time checks of
``x`` and ``y`` against them, and the ``BilevelMethod`` object.

A bilevel problem is

    min_x  F(x, y*(x))   with   y*(x) in argmin_y { f(x, y) : g(x, y) <= 0 },

given as plain functions ``upper(x, y, *data) = F``, ``lower(x, y, *data) = f``
(scalars) and optionally ``constraint(x, y, *data) = g`` (an array, feasible where
``<= 0``). ``x`` and ``y`` are pytrees of floating arrays (model parameters).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

__all__ = ["BilevelMethod", "check_variables", "tree_norm", "tree_where"]


@dataclasses.dataclass(frozen=True, eq=False)
class BilevelMethod:
    """An optax-style bilevel method: ``state = init(x0, y0, *data)``, ``state =
    step(state, *data)``, both jittable (``jax.jit(method.step)``); ``state.x`` and
    ``state.y`` are the current iterates and ``state.info`` a dict of per-step
    scalars (matvecs, inner steps, ...). ``objective(state, *data)`` is the upper
    objective ``F(x, y)`` at the state; :func:`jaxsolve.bilevel.run` drives it.
    """

    name: str
    init: Callable
    step: Callable
    objective: Callable
    hyperparameters: dict = dataclasses.field(default_factory=dict)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters.items())
        return f"{self.name}({args})"


def _describe(tree) -> str:
    shapes = jax.tree_util.tree_map(lambda a: tuple(jnp.shape(a)), tree)
    return str(shapes)


def _check_floating(tree, name: str, method: str):
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise ValueError(f"{method}: `{name}` has no arrays")
    for leaf in leaves:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"{method}: every leaf of `{name}` must be a real floating array "
                f"(it is optimised), got dtype {dtype} in {_describe(tree)}"
            )


def check_variables(
    method: str,
    x,
    y,
    data: tuple,
    upper: Callable,
    lower: Callable,
    constraint: Callable | None = None,
):
    """Refuse, at trace time, ``x``/``y`` that the functions cannot take.

    Raises ``ValueError`` naming the variable (non-floating leaves), or the
    function that failed and the structures of ``x`` and ``y`` it was given, or a
    function whose value is not a scalar (``upper``, ``lower``) / array
    (``constraint``). Returns the shape of ``constraint``'s value (or ``None``).
    """
    _check_floating(x, "x0", method)
    _check_floating(y, "y0", method)
    funcs = [("upper", upper), ("lower", lower)]
    if constraint is not None:
        funcs.append(("constraint", constraint))
    out_shape = None
    for name, fn in funcs:
        try:
            out = jax.eval_shape(fn, x, y, *data)
        except Exception as e:  # name which function and which structures
            raise ValueError(
                f"{method}: `{name}(x, y, *data)` cannot be evaluated with x of "
                f"shapes {_describe(x)} and y of shapes {_describe(y)} "
                f"(does the structure of x0/y0 fit `{name}`?): "
                f"{type(e).__name__}: {e}"
            ) from e
        if not isinstance(out, jax.ShapeDtypeStruct):
            raise ValueError(
                f"{method}: `{name}` must return an array, got "
                f"{jax.tree_util.tree_structure(out)}"
            )
        if name != "constraint" and out.shape != ():
            raise ValueError(
                f"{method}: `{name}(x, y, *data)` must return a scalar, got shape "
                f"{out.shape}"
            )
        if name == "constraint":
            out_shape = out.shape
    # The gradients must have x's and y's structures (a function that ignores part
    # of y is fine; one that flattens or reshapes it is caught above).
    return out_shape


def tree_norm(tree):
    return jnp.sqrt(
        sum(jnp.sum(jnp.abs(a) ** 2) for a in jax.tree_util.tree_leaves(tree))
    )


def tree_where(pred, a, b):
    return jax.tree_util.tree_map(lambda u, v: jnp.where(pred, u, v), a, b)


def ravel(tree):
    return ravel_pytree(tree)[0]
