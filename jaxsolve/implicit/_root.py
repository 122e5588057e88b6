"""Implicit differentiation of the solution of any solver.

If a solver returns ``x*(theta)`` with ``F(x*, theta) = 0``, the implicit function
theorem gives its derivative without looking at the solver's iterations:

    (dF/dx) dx = -(dF/dtheta) dtheta.

:func:`custom_root` attaches this rule to a solver as a ``jax.custom_jvp``. Forward
mode solves one linear system per tangent; reverse mode comes from JAX transposing
that rule, which transposes the linear solve (``jax.lax.custom_linear_solve``) into
``(dF/dx)^T w = cotangent``. Because the rule is itself differentiable, second order
(``jax.hessian``, ``jacfwd(jacrev(...))``) works too. The solver's loop is never
differentiated, so memory does not grow with its iteration count. (JAXopt's
``custom_root`` uses ``jax.custom_vjp`` and so has reverse mode only.)

Blondel et al., "Efficient and Modular Implicit Differentiation", NeurIPS 2022.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero
from jax.flatten_util import ravel_pytree

from .._checks import all_finite
from .._solution import RESULTS, error_if_failed, guard, poison_if_failed
from ..solvers.linear import linear_solve
from ..solvers.linear._krylov import linear_by_construction

__all__ = ["custom_root", "custom_fixed_point"]


def _zero_tangent(x):
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, dtype=jax.dtypes.float0)


def _reconcile(signature: inspect.Signature, solver: Callable, args, kwargs):
    """Map a call ``solver(init, *args, **kwargs)`` onto the reference signature.

    Returns ``(f_args, call_solver)``: ``f_args`` are the arguments of the
    optimality function after ``x``, positional and in its order (defaults
    filled in), and ``call_solver(init, *f_args)`` calls the solver with exactly
    the caller's arguments again (positional ones positionally, keyword ones by
    name), so that the decorator never changes what the solver computes, whatever
    its own parameter order (JAXopt's convention; a solver written as
    ``solver(init, **kw)`` works too). Arguments that cannot be placed in the
    reference signature raise a ``TypeError`` naming the signature."""
    params = list(signature.parameters.values())[1:]
    plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind not in plain for p in params):
        if not kwargs:  # F(x, *args) and the like: positional calls pass through
            return tuple(args), solver
        raise TypeError(
            f"keyword arguments {sorted(kwargs)} cannot be matched to the reference "
            f"signature {signature}: it has *args, **kwargs or keyword-only "
            "parameters; pass the arguments positionally, or give "
            "`reference_signature` a function with plain parameters"
        )
    try:
        bound = inspect.Signature(params).bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(
            f"the arguments of the decorated solver (after init) must fit the "
            f"reference signature {signature} of the optimality function (or "
            f"`reference_signature`): {e}"
        ) from e
    bound.apply_defaults()
    names = [p.name for p in params]
    f_args = tuple(bound.arguments[name] for name in names)
    n_positional = len(args)
    keyword_index = {name: names.index(name) for name in kwargs}

    def call_solver(init, *f_args):
        by_name = {name: f_args[i] for name, i in keyword_index.items()}
        return solver(init, *f_args[:n_positional], **by_name)

    return f_args, call_solver


def _check_like(out, x, what: str):
    """``out`` must have the structure and shapes of the solution ``x``."""
    fs, xs = jax.tree_util.tree_structure(out), jax.tree_util.tree_structure(x)
    shapes_f = [jnp.shape(leaf) for leaf in jax.tree_util.tree_leaves(out)]
    shapes_x = [jnp.shape(leaf) for leaf in jax.tree_util.tree_leaves(x)]
    if fs != xs or shapes_f != shapes_x:
        raise ValueError(
            f"`{what}` must return a pytree of the same structure and shapes as "
            f"the solution x; got {fs} with shapes {shapes_f} for x of {xs} with "
            f"shapes {shapes_x}"
        )


def _check_square(f_out, x):
    """F must map the solution space to itself: (dF/dx) is then square."""
    _check_like(f_out, x, "optimality_fn(x, *args)")


_NAME = "custom_root"
_MESSAGES = {
    "nonfinite_value": "the solver returned a solution containing NaN or Inf",
}


def _finite_code(x) -> RESULTS:
    return RESULTS.where(all_finite(x), RESULTS.successful, RESULTS.nonfinite_value)


def _closure_convert(fn, *example_args):
    """``fn`` as a function of ``(*args, *consts)`` with every array it closes
    over hoisted into ``consts`` (a custom_jvp must not close over tracers).

    Like ``jax.closure_convert``, except that integer and boolean tracers are
    hoisted too: ``closure_convert`` keeps them (they have no tangent) as
    constants of the converted function, and they then leak out of their trace
    when a jitted function is differentiated from outside (``grad(jit(f))``)."""
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*example_args)
    out_tree = jax.tree_util.tree_structure(out_shape)
    n_args = len(example_args)

    def converted(*args_and_consts):
        args, consts = args_and_consts[:n_args], args_and_consts[n_args:]
        flat = jax.tree_util.tree_leaves(args)
        out = jax.core.eval_jaxpr(closed.jaxpr, consts, *flat)
        return jax.tree_util.tree_unflatten(out_tree, out)

    return converted, list(closed.consts)


def _implicit_solution(
    solver, optimality_fn, has_aux, linear, preconditioner, throw, init, args
):
    # Arrays that `solver` or `optimality_fn` close over become explicit inputs
    # (closure conversion): a custom_jvp cannot see closed-over tracers, and this
    # way the ones in `optimality_fn` receive their gradients through the rule.
    solver_c, solver_consts = _closure_convert(solver, init, *args)
    out_shape = jax.eval_shape(solver_c, init, *args, *solver_consts)
    if has_aux and not (isinstance(out_shape, (tuple, list)) and len(out_shape) == 2):
        raise ValueError(
            "with `has_aux=True` the solver must return a pair (x, aux), but it "
            f"returned {jax.tree_util.tree_structure(out_shape)}"
        )
    x_shape = out_shape[0] if has_aux else out_shape
    x_example = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), x_shape)
    f_c, f_consts = _closure_convert(optimality_fn, x_example, *args)
    _check_square(jax.eval_shape(f_c, x_example, *args, *f_consts), x_shape)

    @jax.custom_jvp
    def solution(init, args, solver_consts, f_consts):
        return solver_c(init, *args, *solver_consts)

    def solution_jvp(primals, tangents):
        init, args, solver_consts, f_consts = primals
        _, d_args, _, d_f_consts = tangents
        out = solution(init, args, solver_consts, f_consts)
        x = out[0] if has_aux else out
        if throw:
            # Checked before the derivative solve uses x, so that a solver that
            # failed is named, rather than the linear solve its NaN would break.
            x = error_if_failed(x, _finite_code(x), _NAME, _MESSAGES)
        # The initial guess and the solver's own closed-over arrays get no
        # derivative: at a root, x* depends on theta only through F. Inputs
        # whose tangent is a symbolic zero (data not being differentiated) are
        # left out of the jvp of F, so they cost nothing.
        d_f = _jvp_of_active_inputs(
            lambda a, c: f_c(x, *a, *c), (args, f_consts), (d_args, d_f_consts)
        )
        if d_f is None:
            dx = jax.tree_util.tree_map(jnp.zeros_like, x)
        else:
            dx = _solve_dfdx(f_c, x, args, f_consts, d_f, linear, preconditioner, throw)
        if has_aux:
            return out, (dx, jax.tree_util.tree_map(_zero_tangent, out[1]))
        return out, dx

    solution.defjvp(solution_jvp, symbolic_zeros=True)
    # Arrays out, even where the solver returns a Python number unchanged.
    out = jax.tree_util.tree_map(
        jnp.asarray, solution(init, args, solver_consts, f_consts)
    )
    # A solution with NaN or Inf raises (throw=True) whichever output is used;
    # with throw=False its derivatives are NaN.
    return guard(out, _finite_code(out[0] if has_aux else out), _NAME, throw, _MESSAGES)


def _jvp_of_active_inputs(fn, primals, tangents):
    """``jax.jvp(fn, primals, tangents)[1]`` over the leaves whose tangent is not a
    symbolic zero; ``None`` when all are."""
    is_zero = lambda t: isinstance(t, SymbolicZero)  # noqa: E731
    leaves, treedef = jax.tree_util.tree_flatten(primals)
    d_leaves = jax.tree_util.tree_leaves(tangents, is_leaf=is_zero)
    active = [i for i, t in enumerate(d_leaves) if not is_zero(t)]
    if not active:
        return None

    def fn_of_active(*values):
        full = list(leaves)
        for i, v in zip(active, values, strict=True):
            full[i] = v
        return fn(*jax.tree_util.tree_unflatten(treedef, full))

    return jax.jvp(
        fn_of_active, [leaves[i] for i in active], [d_leaves[i] for i in active]
    )[1]


def _solve_dfdx(f_c, x, args, f_consts, d_f, linear, preconditioner, throw):
    """``u`` with ``(dF/dx) u = -d_f``, as flat vectors (pytrees are raveled)."""
    x_flat, unravel = ravel_pytree(x)
    rhs, _ = ravel_pytree(d_f)
    f_x = lambda x_: f_c(x_, *args, *f_consts)  # noqa: E731
    # Linearise once: the products with dF/dx inside the Krylov loop then reuse
    # the stored linearisation point instead of re-evaluating F each step.
    _, f_x_lin = jax.linearize(f_x, x)

    def matvec(v):
        return ravel_pytree(f_x_lin(unravel(v.astype(x_flat.dtype))))[0]

    method, options = linear
    if preconditioner is not None:
        # Built at the solution; it steers the Krylov method, not the answer, so
        # it is not differentiated (stop_gradient keeps it out of higher orders).
        x_fixed, args_fixed = jax.lax.stop_gradient((x, args))
        apply = preconditioner(x_fixed, *args_fixed)

        def precondition(v):
            return ravel_pytree(apply(unravel(v.astype(x_flat.dtype))))[0]

        options = {**options, "preconditioner": precondition}
    if isinstance(method, str) and "rtol" not in options:
        # Gradients should be as accurate as the dtype allows, not 1e-6.
        options = {**options, "rtol": float(jnp.finfo(x_flat.dtype).eps) ** 0.75}

    def solve(mv, r):
        # A failed solve (forward, or transposed in reverse mode) raises a
        # runtime error naming the method and the reason (throw=True) or gives
        # NaN (throw=False): never a finite wrong derivative.
        # `mv` is the linearisation of F (or its transpose): linear by
        # construction, so the Krylov core need not spend a product on A 0 = 0.
        sol = linear_solve(
            linear_by_construction(mv), r, method=method, throw=throw, **options
        )
        # (A failed solve reports its last iterate as its value: a derivative
        # takes NaN instead.)
        return sol.value if throw else poison_if_failed(sol.value, sol.result)

    # The linear solve sits inside custom_linear_solve: reverse mode transposes
    # the *equation* (dF/dx)^T w = g and calls `solve` on it, rather than
    # transposing the solver (whose checks are not linear maps).
    symmetric = method in ("cg", "dcdm")  # solvers of SPD systems
    u = jax.lax.custom_linear_solve(
        matvec,
        -rhs.astype(x_flat.dtype),
        solve,
        None if symmetric else solve,
        symmetric=symmetric,
    )
    return unravel(u)


def _one_of(value, jaxopt_value, name: str):
    """The function given as ``name`` or under JAXopt's keyword (``..._fun``)."""
    if (value is None) == (jaxopt_value is None):
        raise TypeError(
            f"give `{name}` (or JAXopt's `{name[:-3]}_fun`), exactly one of them"
        )
    if not callable(value if value is not None else jaxopt_value):
        raise TypeError(f"`{name}` must be a function")
    return value if value is not None else jaxopt_value


def _linear_options(solve, ridge, solve_options, preconditioner=None):
    if not (callable(solve) or isinstance(solve, str)):
        raise ValueError(f"`solve` must be a method name or a function, got {solve!r}")
    if preconditioner is not None:
        if not callable(preconditioner):
            raise ValueError(
                f"`preconditioner` must be a function, got {preconditioner!r}"
            )
        if not isinstance(solve, str) or solve == "dense":
            raise ValueError(
                "`preconditioner` needs an iterative `solve` ('cg', 'gmres' or "
                f"'bicgstab'), got {solve!r}"
            )
        if "preconditioner" in (solve_options or {}):
            raise ValueError(
                "give the preconditioner either as `preconditioner` or in "
                "`solve_options`, not both"
            )
    options = dict(solve_options or {})
    if ridge:
        options["ridge"] = ridge
    return solve, options


def custom_root(
    optimality_fn: Callable | None = None,
    has_aux: bool = False,
    solve: str | Callable | None = "gmres",
    reference_signature: Callable | None = None,
    *,
    ridge: float = 0.0,
    solve_options: dict | None = None,
    preconditioner: Callable | None = None,
    throw: bool = True,
    optimality_fun: Callable | None = None,
):
    r"""Decorator: differentiate a root-finding solver implicitly.

    ``solver(init, *args)`` must return ``x*`` with ``optimality_fn(x*, *args) = 0``
    (or ``(x*, aux)`` with ``has_aux=True``). The decorated solver returns the same,
    and its derivatives with respect to ``args`` come from the implicit function
    theorem, ``(dF/dx) dx = -(dF/dargs) dargs``: ``jax.jvp``, ``jax.vjp``/``grad``,
    ``jacfwd``, ``jacrev`` and ``hessian`` all work, under ``jit`` and ``vmap``.

    The calling convention is JAXopt's (``jaxopt.implicit_diff.custom_root``): replace
    the import to switch (its keyword names ``optimality_fun=`` and ``solve=None``
    are accepted). The solver is called with exactly the caller's arguments,
    positional and keyword; they are matched to ``optimality_fn``'s signature
    (or ``reference_signature``) only to call ``optimality_fn``. Arguments that
    do not fit it raise a ``TypeError``.

    Args:
        optimality_fn: ``F(x, *args)``, returning a pytree shaped like ``x``.
        has_aux: the solver returns ``(x, aux)``; ``aux`` gets zero derivative.
        solve: the linear solver for ``dF/dx`` systems: ``"gmres"`` (default, any
            non-singular ``dF/dx``), ``"cg"`` (when ``dF/dx`` is symmetric positive
            definite, e.g. ``F`` is the gradient of a strongly convex function),
            ``"bicgstab"``, ``"dense"`` (small systems), or a function
            ``solve(matvec, b) -> x`` (JAXopt's ``jaxopt.linear_solve`` functions fit).
        reference_signature: a function whose signature places keyword ``args``
            for ``optimality_fn`` (default: ``optimality_fn``'s).
        ridge: add ``ridge I`` to ``dF/dx`` (for singular systems, e.g. a null space).
        solve_options: options for the linear solver (``rtol``, ``atol``,
            ``max_steps``, ``preconditioner``, ...). Default ``rtol`` is
            ``eps ** 0.75`` of the solution's dtype (about 2e-12 in float64).
        preconditioner: ``preconditioner(x, *args) -> (v -> M^{-1} v)``, built at
            the solution ``x`` for the derivative solves, with ``M ~ dF/dx`` (SPD
            for ``"cg"``) and ``v`` shaped like ``x``; for systems whose
            conditioning depends on the solution (a fixed preconditioner goes in
            ``solve_options``). Not differentiated; positional ``args`` only.
        throw: with ``True`` (default) a solution containing NaN or Inf, or a
            derivative solve that fails, raises a runtime error (under ``jit``
            too, whichever output or derivative is used); with ``False`` nothing
            raises and the derivatives are NaN instead (so that one bad element
            of a ``vmap``-ed batch does not abort the others). A derivative is
            never a finite wrong number.

    Gradients with respect to closed-over arrays: arrays that ``optimality_fn``
    closes over receive gradients, as if they were arguments. Arrays that only the
    *solver* closes over receive none (the solution's dependence on theta is
    defined by ``F`` alone); ``init`` receives none.

    Example::

        def F(w, lam):                       # gradient of a ridge objective
            return X.T @ (X @ w - y) + lam * w

        @custom_root(F, solve="cg")
        def ridge(init, lam):
            return jaxsolve.cg(X.T @ X + lam * jnp.eye(d), X.T @ y).value

        jax.grad(lambda lam: loss(ridge(w0, lam)))(1.0)
    """
    optimality_fn = _one_of(optimality_fn, optimality_fun, "optimality_fn")
    signature = inspect.signature(reference_signature or optimality_fn)
    if solve is None:  # JAXopt's spelling of "the default"
        solve = "gmres"
    linear = _linear_options(solve, ridge, solve_options, preconditioner)

    def decorator(solver: Callable) -> Callable:
        @functools.wraps(solver)
        def wrapped(init, *args, **kwargs):
            args, call_solver = _reconcile(signature, solver, args, kwargs)
            return _implicit_solution(
                call_solver,
                optimality_fn,
                has_aux,
                linear,
                preconditioner,
                throw,
                init,
                args,
            )

        return wrapped

    return decorator


def custom_fixed_point(
    fixed_point_fn: Callable | None = None,
    has_aux: bool = False,
    solve: str | Callable | None = "gmres",
    reference_signature: Callable | None = None,
    *,
    ridge: float = 0.0,
    solve_options: dict | None = None,
    preconditioner: Callable | None = None,
    throw: bool = True,
    fixed_point_fun: Callable | None = None,
):
    r"""Decorator: differentiate a fixed-point solver implicitly.

    ``solver(init, *args)`` returns ``x*`` with ``x* = T(x*, *args)``; this is
    :func:`custom_root` with ``F(x, *args) = x - T(x, *args)``, so
    ``dF/dx = I - dT/dx``: non-symmetric in general (the default linear solver is
    GMRES), and positive definite when ``T`` is a contraction with a symmetric
    Jacobian (a gradient step, say), so that ``solve="cg"`` applies there.
    Same arguments and calling convention as JAXopt's ``custom_fixed_point``.
    """

    fixed_point_fn = _one_of(fixed_point_fn, fixed_point_fun, "fixed_point_fn")

    def optimality_fn(x, *args):
        t = fixed_point_fn(x, *args)
        _check_like(t, x, "fixed_point_fn(x, *args)")
        # x - T(x) rather than T(x) - x: the same root and derivative, but
        # dF/dx = I - dT/dx is positive definite for symmetric contractions.
        return jax.tree_util.tree_map(lambda x_, t_: x_ - t_, x, t)

    return custom_root(
        optimality_fn,
        has_aux=has_aux,
        solve=solve,
        reference_signature=reference_signature or fixed_point_fn,
        ridge=ridge,
        solve_options=solve_options,
        preconditioner=preconditioner,
        throw=throw,
    )
