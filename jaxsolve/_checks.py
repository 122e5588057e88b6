"""Input checks shared by the solvers.

Wrong shapes and dtypes are refused at trace time with a ``ValueError`` naming the
argument. Wrong *values* (NaN/Inf, negative tolerances) cannot be seen at trace time
under ``jit``; they become a result code (``throw=False``) or a runtime error
(``throw=True``). Concrete Python numbers are checked at once.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

__all__ = [
    "all_finite",
    "as_float_array",
    "check_nonnegative",
    "check_positive_int",
    "check_static_int",
]


def as_float_array(x, name: str) -> Array:
    """``x`` as a real floating JAX array; integers are promoted to the default float.

    Complex and boolean inputs are refused: the solvers here are real-valued.
    """
    if x is None:
        raise ValueError(f"`{name}` must be an array, got None")
    try:
        x = jnp.asarray(x)
    except TypeError as e:
        raise ValueError(f"`{name}` must be an array, got {type(x).__name__}") from e
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise ValueError(f"`{name}` must be real, got dtype {x.dtype}")
    if x.dtype == jnp.bool_:
        raise ValueError(f"`{name}` must be a floating array, got dtype bool")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def check_nonnegative(value, name: str) -> Array:
    """Refuse a concrete negative (or NaN) ``value`` at once; return the traced check
    ``value >= 0`` (a boolean array) for values only known at run time."""
    if isinstance(value, numbers.Real) or (
        isinstance(value, (np.ndarray, np.generic)) and np.ndim(value) == 0
    ):
        if not float(value) >= 0:
            raise ValueError(f"`{name}` must be >= 0, got {value}")
    elif not isinstance(value, jax.core.Tracer):
        v = np.asarray(value)
        if v.ndim != 0:
            raise ValueError(f"`{name}` must be a scalar, got shape {v.shape}")
        if not float(v) >= 0:
            raise ValueError(f"`{name}` must be >= 0, got {float(v)}")
    elif jnp.ndim(value) != 0:
        raise ValueError(f"`{name}` must be a scalar, got shape {jnp.shape(value)}")
    return jnp.asarray(value) >= 0


_INT32_MAX = 2**31 - 1


def check_static_int(value, name: str, minimum: int = 0) -> int:
    """A static Python (or NumPy) integer ``>= minimum``: shapes and loop bounds
    depend on it, so it cannot be traced. Step counters are int32 on every
    device, so values above ``2**31 - 1`` (which would wrap) are refused."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise ValueError(f"`{name}` must be a Python int, got {value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")
    if value > _INT32_MAX:
        raise ValueError(
            f"`{name}` must be <= 2**31 - 1 (step counters are int32), got {value}"
        )
    return int(value)


def check_positive_int(value, name: str) -> int:
    """A static positive integer."""
    return check_static_int(value, name, minimum=1)


def all_finite(*xs) -> Array:
    """True when every leaf of every argument is free of NaN and Inf."""
    leaves = jax.tree_util.tree_leaves(xs)
    ok = jnp.asarray(True)
    for leaf in leaves:
        ok = ok & jnp.all(jnp.isfinite(leaf))
    return ok
