"""``run``: drive a bilevel method for a number of steps, with a progress bar."""

from __future__ import annotations

import weakref

import jax
import jax.numpy as jnp
import numpy as np

from ..._checks import check_positive_int
from ..._solution import RESULTS, Solution, finalize
from ._problem import BilevelMethod, tree_norm, tree_where

__all__ = ["run"]

# One compiled init and chunk function per method object (a second `run` of the
# same method does not recompile).
_CHUNKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_INITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _chunk_fn(method: BilevelMethod, chunk: int):
    cache = _CHUNKS.setdefault(method, {})
    if chunk in cache:
        return cache[chunk]

    def advance(state, failed, n_active, data):
        # `chunk` steps in one compiled scan; steps >= n_active and steps after a
        # non-finite objective leave the state unchanged (the last finite iterate).
        def body(carry, i):
            state, failed = carry
            new = method.step(state, *data)
            value = method.objective(new, *data)
            finite = jnp.isfinite(value) & jnp.all(
                jnp.asarray(
                    [
                        jnp.all(jnp.isfinite(a))
                        for a in jax.tree_util.tree_leaves((new.x, new.y))
                    ]
                )
            )
            active = (i < n_active) & ~failed
            take = active & finite
            norm = tree_norm(
                jax.tree_util.tree_map(
                    lambda a, b: a - b, (new.x, new.y), (state.x, state.y)
                )
            )
            state = tree_where(take, new, state)
            failed = failed | (active & ~finite)
            record = (take, value, norm, new.info)
            return (state, failed), record

        (state, failed), records = jax.lax.scan(
            body, (state, failed), jnp.arange(chunk)
        )
        return state, failed, records

    fn = jax.jit(advance)
    cache[chunk] = fn
    return fn


def run(
    method: BilevelMethod,
    x0,
    y0,
    *data,
    steps: int,
    progress: bool = True,
    throw: bool = True,
    chunk: int = 25,
) -> Solution:
    r"""Run ``method`` from ``(x0, y0)`` for ``steps`` steps.

    The steps run in compiled chunks of ``chunk`` (one compilation per method and
    chunk size, reused by later calls), with a tqdm progress bar (``progress``).

    Returns a :class:`jaxsolve.Solution` with ``.value = (x, y)``, ``.num_steps``
    the steps taken, ``.residual`` the last step's norm ``||(x, y) - (x, y)_prev||``
    and ``.stats``: ``"upper"`` (the upper objective ``F(x, y)`` after each step),
    ``"step_norm"``, and the method's per-step ``info`` (e.g. ``"backward_matvecs"``
    for AID), each an array of length ``num_steps``. If the objective or an iterate
    turns NaN/Inf, the run stops there, ``.value`` is the last finite iterate and
    ``.result`` is ``RESULTS.nonfinite_value`` (a runtime error with ``throw=True``).
    ``.aux`` is the method's final state (to continue: ``method.step(sol.aux, ...)``).
    """
    if not isinstance(method, BilevelMethod):
        raise ValueError(
            f"`method` must be a jaxsolve.bilevel method (aid, lv_hba, bo_rep, itd), "
            f"got {type(method).__name__}"
        )
    steps = check_positive_int(steps, "steps")
    chunk = check_positive_int(chunk, "chunk")
    init = _INITS.get(method)
    if init is None:
        init = _INITS[method] = jax.jit(method.init)
    state = init(x0, y0, *data)
    advance = _chunk_fn(method, chunk)
    failed = jnp.asarray(False)
    records = []
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        tqdm = None
    bar = tqdm(total=steps, desc=method.name, disable=not progress) if tqdm else None
    done = 0
    while done < steps:
        n = min(chunk, steps - done)
        state, failed, rec = advance(state, failed, jnp.asarray(n), data)
        records.append(jax.device_get(rec))
        done += n
        if bar is not None:
            bar.update(n)
            bar.set_postfix(upper=f"{float(rec[1][n - 1]):.4g}")
        if bool(failed):
            break
    if bar is not None:
        bar.close()
    take = np.concatenate([r[0] for r in records])
    value = np.concatenate([r[1] for r in records])[take]
    norms = np.concatenate([r[2] for r in records])[take]
    info = {k: np.concatenate([r[3][k] for r in records])[take] for k in records[0][3]}
    num_steps = int(take.sum())
    stats = {"upper": jnp.asarray(value), "step_norm": jnp.asarray(norms)}
    stats.update({k: jnp.asarray(v) for k, v in info.items()})
    result = RESULTS.where(failed, RESULTS.nonfinite_value, RESULTS.successful)
    solution = Solution(
        value=(state.x, state.y),
        result=result,
        num_steps=jnp.asarray(num_steps),
        residual=jnp.asarray(norms[-1] if num_steps else jnp.nan),
        stats=stats,
        aux=state,
    )
    return finalize(solution, throw, method.name)
