"""What the Krylov solvers share: argument checks, the start and finish of a solve,
and differentiation through ``jax.lax.custom_linear_solve``.

Each solver supplies only a *loop*: ``loop(matvec, b, x0, r0, precond, tol,
max_steps, input_code) -> (x, result, num_steps)`` on flat vectors (``r0 = b - A
x0``; ``precond`` is ``None`` or a function). A loop may return a fourth item, a
dict of extra outputs: its ``"matvecs"`` entry counts the loop's products with
``A`` (default: one a step), every other entry is passed through, undifferentiated,
as the ``Solution``'s ``aux`` (a recycled Krylov subspace, say). Every solution
reports ``stats["matvecs"]``, the operator products of the whole solve (the
loop's plus the residuals ``b - A x`` computed here). :func:`krylov_solve` wraps it so
that ``x = A^{-1} b`` is differentiable with respect to ``b`` and to every array the
operator closes over (forward and reverse mode, any order): JAX differentiates the
*equation* ``A x = b`` and calls the same loop on the tangent (or, transposed, on
the cotangent) system, never through the iterations.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from ..._checks import all_finite, as_float_array, check_nonnegative, check_positive_int
from ..._iterate import iterate
from ..._solution import (
    RESULTS,
    Solution,
    error_if_failed,
    finalize,
    poison_if_failed,
    restore_if_failed,
)
from ._operator import (
    FlatOperator,
    check_transposable,
    flat_operator,
    flat_preconditioner,
)

__all__ = [
    "checked_inside",
    "checked_outside",
    "krylov_solve",
    "linear_by_construction",
    "operator_checks",
    "symmetry_probe",
    "symmetry_result",
    "stall_result",
    "start_result",
    "finish_result",
    "norm",
]

_MAX_RESTARTS = 3


def norm(x: Array) -> Array:
    return jnp.sqrt(jnp.vdot(x, x).real)


def start_result(input_code: RESULTS, r0: Array) -> RESULTS:
    """The code a solve starts with: ``input_code`` (what the checks of the inputs
    found), else ``nonfinite_input`` if the first residual ``b - A x0`` is not
    finite (this is how NaN/Inf in a matrix-free operator is caught)."""
    finite = jnp.all(jnp.isfinite(r0))
    return RESULTS.where(
        input_code == RESULTS.successful,
        RESULTS.where(finite, RESULTS.successful, RESULTS.nonfinite_input),
        input_code,
    )


def stall_result(result: RESULTS, stalled: Array, residual: Array) -> RESULTS:
    """``result``, or the code of a restart cycle that made no progress above the
    tolerance: ``stagnation`` (``nonfinite_value`` if the residual overflowed)."""
    code = RESULTS.where(
        jnp.isfinite(residual), RESULTS.stagnation, RESULTS.nonfinite_value
    )
    return RESULTS.where(stalled, code, result)


def finish_result(
    result: RESULTS, converged: Array, residual: Array, num_steps, max_steps
) -> RESULTS:
    """Turn the loop's end state into a code. ``result`` holds any breakdown met
    during the loop (or an input error met at the start)."""
    unconverged = RESULTS.where(
        jnp.isfinite(residual),
        RESULTS.where(
            num_steps >= max_steps, RESULTS.max_steps_reached, RESULTS.stagnation
        ),
        RESULTS.nonfinite_value,
    )
    return RESULTS.where(
        result == RESULTS.successful,
        RESULTS.where(converged, RESULTS.successful, unconverged),
        result,
    )


def checked_inside(x, aux, result: RESULTS, name, throw, messages=None):
    """What the solve function given to ``lax.custom_linear_solve`` returns: ``x``
    and ``(aux, last iterate)``, with the ``throw`` policy applied *inside*.

    The solves of derivatives (the tangent systems, and the transposed ones of
    reverse mode) call the same function, so they are checked too. A failed solve
    raises (``throw=True``; the check rides on every output, ``x`` and the
    statistics alike, so it survives whichever one the caller uses) or returns
    NaN (``throw=False``: a derivative is never a finite wrong number; the primal
    solve's last iterate travels beside it and :func:`checked_outside` restores
    it). Checks outside the solve function would be transposed in reverse mode
    when a solve is called on tangents (inside a custom derivative rule), and
    error checks are not linear maps."""
    if throw:
        return error_if_failed((x, (aux, x)), result, name, messages)
    return poison_if_failed(x, result), (aux, x)


def checked_outside(solution: Solution, last, throw: bool, name, messages=None):
    """The :class:`Solution` of a linear solve, after :func:`checked_inside`:
    with ``throw=False`` a failed solve reports its last iterate, and its
    derivatives are NaN (even where a derivative's own solve succeeded)."""
    if throw:
        return solution
    failed = solution.result != RESULTS.successful
    value = restore_if_failed(solution.value, lax.stop_gradient(last), failed)
    solution = eqx.tree_at(lambda s: s.value, solution, value)
    return finalize(solution, False, name, messages)


def _probes(n: int, dtype) -> tuple[Array, Array]:
    """Two fixed pseudo-random vectors in ``[-1, 1)^n`` from an elementwise hash
    (``frac(sin(i c) 43758.5453)``): as good as random for a symmetry probe and
    far cheaper than a counter-based PRNG on every solve."""
    i = jnp.arange(1, n + 1, dtype=jnp.float32)
    u = jnp.sin(i * 12.9898) * 43758.5453
    v = jnp.sin(i * 78.233 + 0.5) * 43758.5453
    return tuple((2 * (w - jnp.floor(w)) - 1).astype(dtype) for w in (u, v))


def symmetry_probe(n: int, dtype) -> Array:
    """The fixed pseudo-random probe ``u`` of :func:`symmetry_result`."""
    return _probes(n, dtype)[0]


def symmetry_result(code: RESULTS, u: Array, au: Array, v: Array, av: Array):
    """``code``, or ``not_symmetric`` (when ``code`` is ``successful``) if
    ``|u^T A v - v^T A u| > sqrt(eps) (|u| |A v| + |v| |A u|)``.

    ``u`` must be pseudo-random (:func:`symmetry_probe`); ``v`` may be any vector
    (a Krylov method's own first direction, whose product it computes anyway):
    with a random ``u`` the scale ``|v| |A u|`` is of the order of ``|A| |u| |v|``,
    far above the rounding of either product, so a symmetric ``A`` passes."""
    gap = jnp.abs(jnp.vdot(u, av) - jnp.vdot(v, au))
    scale = norm(u) * norm(av) + norm(v) * norm(au)
    tol = jnp.sqrt(jnp.finfo(u.dtype).eps) * scale
    # NaN (an overflow in the probe) is not taken for an asymmetry.
    asymmetric = gap > tol
    return RESULTS.where(
        (code == RESULTS.successful) & asymmetric, RESULTS.not_symmetric, code
    )


_LINEAR_MARK = "_jaxsolve_linear_by_construction"


class _LinearByConstruction:
    """A function ``x -> A x`` known to be linear (see
    :func:`linear_by_construction`)."""

    def __init__(self, fn: Callable):
        self._fn = fn
        setattr(self, _LINEAR_MARK, True)

    def __call__(self, x):
        return self._fn(x)


def linear_by_construction(fn: Callable) -> Callable:
    """Mark ``fn`` as linear by construction (a ``jax.linearize`` or
    ``jax.linear_transpose`` of a function, as the implicit layer builds): the
    Krylov solvers then skip the ``A 0 = 0`` check, whose product would only
    confirm what the construction guarantees. (A NaN or Inf in such an operator
    is still caught: by the solve's first product.)"""
    return _LinearByConstruction(fn)


def operator_checks(
    op: FlatOperator, symmetric: bool, *, known_linear: bool = False
) -> tuple[RESULTS, int]:
    """Cheap run-time checks of a linear operator, and the products they cost.

    ``A 0`` must be exactly 0 (a linear map sends 0 to 0 in floating point too;
    NaN or Inf entries give NaN, ``0 * inf``) and finite: one product, skipped
    when ``known_linear``. With ``symmetric`` (CG, whose derivatives reuse ``A``
    for ``A^T``), ``u^T A v`` must equal ``v^T A u`` for a fixed random pair
    ``u, v`` (:func:`symmetry_result`): two products. A non-symmetric ``A`` can
    pass a Krylov solve and then give silently wrong derivatives."""
    if known_linear:
        finite, linear, products = jnp.asarray(True), jnp.asarray(True), 0
    else:
        a0 = op.matvec(jnp.zeros((op.size,), op.dtype))
        finite, linear, products = all_finite(a0), jnp.all(a0 == 0), 1
    if op.matrix is not None:
        finite = finite & all_finite(op.matrix)
    code = RESULTS.where(
        finite,
        RESULTS.where(linear, RESULTS.successful, RESULTS.nonlinear_operator),
        RESULTS.nonfinite_input,
    )
    if not symmetric:
        return code, products
    u, v = _probes(op.size, op.dtype)
    return symmetry_result(code, u, op.matvec(u), v, op.matvec(v)), products + 2


def krylov_solve(
    loop: Callable,
    name: str,
    operator,
    b,
    *,
    rtol,
    atol,
    max_steps: int | None,
    x0,
    preconditioner,
    throw: bool,
    symmetric: bool,
    default_max_steps: Callable[[int], int] = lambda n: 10 * n,
    transpose_loop: Callable | None = None,
    messages: dict[str, str] | None = None,
    loop_probes_symmetry: bool = False,
) -> Solution:
    """``transpose_loop``: the loop for the transposed systems of reverse mode
    (default ``loop``); its extra outputs must have the same structure.
    ``messages``: the method's own messages for result codes (see
    :func:`jaxsolve._solution.finalize`).

    Before the loop the operator is checked (:func:`operator_checks`): ``A 0 =
    0`` (linear, finite; skipped for an operator marked
    :func:`linear_by_construction`) and, when ``symmetric``, a random probe
    pair, unless ``loop_probes_symmetry``: then the loop itself checks symmetry
    on every solve it runs (with :func:`symmetry_result` on a product it
    computes anyway, such as its first direction's) and returns
    ``RESULTS.not_symmetric``."""
    known_linear = bool(getattr(operator, _LINEAR_MARK, False))
    op, b_flat = flat_operator(operator, b)
    if not symmetric and op.matrix is None:
        check_transposable(op, b_flat)
    valid = check_nonnegative(rtol, "rtol") & check_nonnegative(atol, "atol")
    max_steps = check_positive_int(
        default_max_steps(op.size) if max_steps is None else max_steps, "max_steps"
    )
    if x0 is None:
        x0_flat = jnp.zeros_like(b_flat)
    else:
        x0 = as_float_array(x0, "x0")
        if x0.shape != op.shape:
            raise ValueError(f"`x0` must have `b`'s shape {op.shape}, got {x0.shape}")
        x0_flat = x0.reshape(-1).astype(op.dtype)
    precond = flat_preconditioner(preconditioner, op)
    rtol = jnp.asarray(rtol, op.dtype)
    atol = jnp.asarray(atol, op.dtype)
    input_code, check_products = operator_checks(
        op, symmetric and not loop_probes_symmetry, known_linear=known_linear
    )
    input_code = RESULTS.where(
        input_code != RESULTS.successful,
        input_code,
        RESULTS.where(
            valid,
            RESULTS.where(
                all_finite(x0_flat), RESULTS.successful, RESULTS.nonfinite_input
            ),
            RESULTS.invalid_input,
        ),
    )
    zero_x0 = x0 is None

    def run(matvec, rhs, guess, m, zero_guess, loop=loop):
        tol = jnp.maximum(rtol * norm(rhs), atol)

        def call_loop(x, r, budget):
            out = loop(matvec, rhs, x, r, m, tol, budget, input_code)
            extras = dict(out[3]) if len(out) > 3 else {}
            return out[:3], extras.pop("matvecs", out[2]), extras

        # b = 0 has the exact answer x = 0 (whatever x0): no tolerance can be
        # met from elsewhere when it is 0 = max(rtol |b|, atol).
        guess = jnp.where(norm(rhs) == 0, 0, guess)
        # A 0 = 0 (checked, or linear by construction): solves from zero
        # need no product for r0.
        r0 = rhs if zero_guess else rhs - matvec(guess)

        # A loop stops when its *recursively updated* residual meets the
        # tolerance; rounding can leave the true residual b - A x above it. Then
        # the loop is restarted from x with the true residual (a few times at
        # most; if that does not help, the tolerance is below attainable
        # accuracy). The loop is traced once: the first pass is the first step.
        def attempt(state):
            x, r, steps, _, _, matvecs, _ = state
            (x, result, k), products, extras = call_loop(x, r, max_steps - steps)
            matvecs = matvecs + products + 1  # + the true residual below
            return (
                x,
                rhs - matvec(x),
                steps + k,
                result,
                jnp.asarray(False),
                matvecs,
                extras,
            )

        def again(state):
            _, r, steps, result, first, _, _ = state
            ok = result == RESULTS.successful
            return first | (ok & ~(norm(r) <= tol) & (steps < max_steps))

        steps = jnp.asarray(0, jnp.int32)
        # The extra outputs' initial value: zeros of the loop's output structure.
        shapes = jax.eval_shape(lambda x, r: call_loop(x, r, max_steps)[2], guess, r0)
        extras = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        matvecs = jnp.asarray(0 if zero_guess else 1, jnp.int32)
        state = (guess, r0, steps, input_code, jnp.asarray(True), matvecs, extras)
        state, _ = iterate(attempt, again, state, 2 + _MAX_RESTARTS)
        x, r, num_steps, result, _, matvecs, extras = state
        residual = norm(r)
        converged = jnp.isfinite(residual) & (residual <= tol)
        result = finish_result(result, converged, residual, num_steps, max_steps)
        aux = (result, num_steps, residual, matvecs, extras)
        return checked_inside(x, aux, result, name, throw, messages)

    def solve(matvec, rhs):
        return run(matvec, rhs, x0_flat, precond, zero_guess=zero_x0)

    def transpose_solve(vecmat, rhs):
        # The adjoint system A^T w = g is solved from zero with M^T as preconditioner.
        if precond is None:
            precond_t = None
        else:
            transposed = jax.linear_transpose(precond, rhs)
            precond_t = lambda v: transposed(v)[0]  # noqa: E731
        return run(
            vecmat,
            rhs,
            jnp.zeros_like(rhs),
            precond_t,
            zero_guess=True,
            loop=loop if transpose_loop is None else transpose_loop,
        )

    x, aux = lax.custom_linear_solve(
        op.matvec,
        b_flat,
        solve,
        None if symmetric else transpose_solve,
        symmetric=symmetric,
        has_aux=True,
    )
    (result, num_steps, residual, matvecs, extras), last = aux
    solution = Solution(
        value=op.unflatten(x),
        result=result,
        num_steps=num_steps,
        residual=residual,
        stats={"matvecs": matvecs + check_products},
        aux=extras or None,
    )
    return checked_outside(solution, op.unflatten(last), throw, name, messages)
