"""Each solver call compiled as one program, cached across calls.

Called outside ``jax.jit`` (a notebook cell, a script, an eager ``jax.grad`` or
``jax.vmap``), a solver's ``lax.while_loop``\\ s and ``lax.cond``\\ s were each
compiled on their own (JAX's eager dispatch compiles a control-flow primitive
with its body), and their bodies are new closures on every call, so that JAX's
caches missed and *every* call compiled them again. Measured on one core
(``benchmarks/eager_calls.py``), a second call with new values took 3.1-3.9 s
for ``sinkhorn_newton_sparse`` at 60 x 50 (its eager gradient 3.3-4.6 s, a
``vmap`` over two problems 4.5-5.2 s), 0.76-0.89 s for ``cg`` and 1.6-1.9 s for
``gmres`` at n = 100, where the compiled program runs in milliseconds.
:func:`compiled_once` wraps the solver in ``equinox.filter_jit`` instead:
arrays and tracers are traced, every other argument is static, part of the
cache key, so a call compiles once per configuration, about as long as
``jax.jit`` of the solver takes, and the next ones with new values of the same
shapes run at once. Under the caller's ``jit`` the wrapper is a nested ``jit``,
which XLA inlines (the same kernels); its trace is cached by the arguments'
shapes and static values.

A call given a function (a matrix-free operator, a preconditioner) runs as it
is, unwrapped: ``jax.jit`` would key the function by identity (a new ``lambda``
on each call compiles again) and embed the arrays it closes over in the program
as constants (a copy of the matrix a matrix-free operator wraps), where eager
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


def _has_function(tree) -> bool:
    return any(callable(x) for x in jax.tree_util.tree_leaves(tree))


def compiled_once(fn):
    """``fn`` compiled as one cached program (``equinox.filter_jit``) unless a
    function is among its arguments (see the module's docstring).

    Arrays (JAX or NumPy) and tracers become traced arguments and everything else
    is static, hashed into the cache key (so it must be hashable: Python numbers,
    strings, dtypes, tuples and dicts of them). ``wrapper.compiled`` is the
    compiled function.
    """
    compiled = eqx.filter_jit(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _has_function((args, kwargs)):
            return fn(*args, **kwargs)
        return compiled(*args, **kwargs)

    wrapper.compiled = compiled
    return wrapper
