"""One compiled program per eager call of a solver, cached across calls.

Called outside any JAX transformation, a solver's ``lax.while_loop``\\ s and
``lax.cond``\\ s are each compiled on their own (JAX's eager dispatch compiles a
control-flow primitive with its body), and their bodies are new closures on
every call, so that JAX's caches miss and *every* eager call compiles them
again: measured on one core, a second identical eager call took 3.1-3.3 s for
``sinkhorn_newton_sparse`` at 60 x 50, 0.6 s for ``cg`` and 1.7 s for ``gmres``
on a 30 x 30 system, where the compiled program runs in milliseconds.
:func:`compiled_when_eager` compiles such a call as one program instead
(``equinox.filter_jit``: arrays are traced, every other argument is static,
part of the cache key), once per configuration: the first call compiles about
as long as ``jax.jit`` of the solver does, the next ones run at once.

Inside ``jit``, ``vmap``, ``grad``, ... (any argument a tracer) the solver is
called as it is: the caller's transformation compiles it, and nothing of its
semantics changes. So is a call given a function (a matrix-free operator, a
preconditioner, ``custom_root``'s solver): ``jax.jit`` would key it by
identity (a new ``lambda`` on each call compiles again) and embed the arrays
it closes over in the program as constants (a copy of the matrix a
matrix-free operator wraps); eager dispatch passes them as arguments.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax

__all__ = ["compiled_when_eager"]


def _compile_whole(tree) -> bool:
    """Whether no leaf is a tracer (an eager call) or a function."""
    return not any(
        isinstance(x, jax.core.Tracer) or callable(x)
        for x in jax.tree_util.tree_leaves(tree)
    )


def compiled_when_eager(fn):
    """``fn``, compiled as one cached program when called outside a transformation
    and with no function among its arguments (see the module's docstring).

    Arrays (JAX or NumPy) become traced arguments and everything else is static,
    hashed into the cache key (so it must be hashable: Python numbers, strings,
    dtypes, functions, tuples and dicts of them). The compiled function is
    ``wrapper.compiled`` (``wrapper.compiled._cached._cache_size()`` counts its
    compilations in equinox's implementation).
    """
    compiled = eqx.filter_jit(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _compile_whole((args, kwargs)):
            return compiled(*args, **kwargs)
        return fn(*args, **kwargs)

    wrapper.compiled = compiled
    return wrapper
