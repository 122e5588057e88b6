"""Each eager solver call compiled as one program, cached across calls.

Called outside any JAX transformation (a notebook cell, a script), a solver's
``lax.while_loop``\\ s and ``lax.cond``\\ s were each compiled on their own (JAX's
eager dispatch compiles a control-flow primitive with its body), and their
bodies are new closures on every call, so that JAX's caches missed and *every*
call compiled them again. Measured on one core, a second identical call took
3.1-3.9 s for ``sinkhorn_newton_sparse`` at 60 x 50, 0.6-0.8 s for ``cg`` and
1.6-1.7 s for ``gmres``, where the compiled program runs in milliseconds.
:func:`compiled_once` compiles such a call with ``equinox.filter_jit`` instead:
arrays are traced, every other argument is static, part of the cache key, so a
call compiles once per configuration, about as long as ``jax.jit`` of the solver
takes, and the next ones with new values of the same shapes run at once.

Inside a transformation (any argument a tracer: the caller's ``jit``, ``grad``,
``vmap``) the solver is called as it is. Wrapped there too (a nested ``jit``),
``jit(grad(vmap(sinkhorn)))`` failed in JAX's batching of the nested call (a
shape error between the batch and the marginals), so an eager ``grad`` or
``vmap`` of a solve still compiles its loops on every call: put it under
``jax.jit``.

A call given a function (a matrix-free operator, a preconditioner) runs as it
is too: ``jax.jit`` would key the function by identity (a new ``lambda`` on each
call compiles again) and embed the arrays it closes over in the program as
constants (a copy of the matrix a matrix-free operator wraps), where eager
dispatch passes them as arguments. Wrap such calls in your own ``jax.jit``.

Checks that refuse a concrete value at once (``ValueError``) see Python numbers
as before, since those stay static; an array argument is data, checked at run
time as under ``jit`` (a runtime error naming the argument, or the result code
with ``throw=False``).
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax

__all__ = ["compiled_once"]


def _eager_arrays(tree) -> bool:
    """Whether no leaf is a tracer (a call under a transformation) or a function."""
    return not any(
        isinstance(x, jax.core.Tracer) or callable(x)
        for x in jax.tree_util.tree_leaves(tree)
    )


def compiled_once(fn):
    """``fn`` compiled as one cached program (``equinox.filter_jit``) when called
    outside a transformation and with no function among its arguments (see the
    module's docstring).

    Arrays (JAX or NumPy) become traced arguments and everything else
    is static, hashed into the cache key (so it must be hashable: Python numbers,
    strings, dtypes, tuples and dicts of them). ``wrapper.compiled`` is the
    compiled function.
    """
    compiled = eqx.filter_jit(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _eager_arrays((args, kwargs)):
            return compiled(*args, **kwargs)
        return fn(*args, **kwargs)

    wrapper.compiled = compiled
    return wrapper
