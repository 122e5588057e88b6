"""The shared test matrix: every registered solver (``jaxsolve.testing.REGISTRY``)
goes through the same checks. A new solver joins by registering a case.

Compiled functions are cached per case (``_compiled``) so that the checks share
compilations: the suite's time is mostly XLA compile time.
"""

from __future__ import annotations

import functools
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsolve import RESULTS
from jaxsolve.testing import REGISTRY

# Each case's checks run in one xdist worker (--dist loadgroup), so that they share
# its compiled functions.
CASES = [
    pytest.param(n, marks=pytest.mark.xdist_group(n), id=n) for n in sorted(REGISTRY)
]


def _some_by_default(names):
    """All cases, those outside ``names`` marked slow: for the checks that
    compile the largest programs (a gradient under ``vmap``, derivatives of a
    jitted solve; 10-30 s a case), the default run covers one case of each
    kind of solver (Krylov on a stencil and on a matrix, a root, OT) and the
    slow run all of them."""
    unknown = set(names) - set(REGISTRY)
    assert not unknown, unknown
    return [
        pytest.param(
            n,
            marks=[pytest.mark.xdist_group(n)]
            + ([] if n in names else [pytest.mark.slow]),
            id=n,
        )
        for n in sorted(REGISTRY)
    ]


VMAP_OF_GRAD_CASES = _some_by_default(
    (
        "cg/stencil",
        "gmres/dense",
        "custom_root/logistic_newton",
        "sinkhorn_newton_sparse",
    )
)
# SNS's jitted derivatives also run by default in test_reliability.py.
DERIVATIVES_OF_JIT_CASES = _some_by_default(
    ("cg/stencil", "gmres/stencil", "custom_fixed_point/equilibrium", "sinkhorn/log")
)
DTYPES = [jnp.float64, jnp.float32]
tree_leaves = jax.tree_util.tree_leaves


def _is_float(x):
    return jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)


def _random_like(tree, seed):
    """A random direction in the floating leaves of ``tree`` (zeros elsewhere)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    out = [
        jax.random.normal(k, jnp.shape(x), jnp.asarray(x).dtype)
        if _is_float(x)
        else jnp.zeros_like(x)
        for k, x in zip(keys, leaves, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


def _axpy(a, x, y):
    return jax.tree_util.tree_map(lambda x_, y_: y_ + a * x_, x, y)


def _stack(items):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *items)


def _vdot(a, b):
    return sum(
        jnp.vdot(x, y)
        for x, y in zip(tree_leaves(a), tree_leaves(b), strict=True)
        if _is_float(x)
    )


class _Compiled:
    """The jitted functions of one case, shared by the checks."""

    def __init__(self, case):
        self.case = case
        self.n_inputs = len(case.make_inputs(jnp.float64))
        argnums = tuple(range(self.n_inputs))
        self.traces = 0

        def solve(*inputs):
            self.traces += 1
            return case.solve(*inputs, throw=False)

        def value(*inputs):
            return case.solve(*inputs).value

        def loss(*inputs, throw=True):
            sol = case.solve(*inputs, throw=throw)
            return sum(jnp.sum(v**2) for v in tree_leaves(sol.value))

        self.solve = jax.jit(solve)
        self.value = jax.jit(value)
        self.jvp = jax.jit(lambda i, d: jax.jvp(value, i, d)[1])
        self.vjp = jax.jit(lambda i, c: jax.vjp(value, *i)[1](c))
        self.grad = jax.jit(jax.grad(loss, argnums=argnums))
        self.vmap_solve = jax.jit(jax.vmap(solve))
        self.vmap_grad = jax.jit(jax.vmap(jax.grad(loss, argnums=argnums)))
        self.grad_of_vmap = jax.jit(
            jax.grad(lambda *i: jnp.sum(jax.vmap(loss)(*i)), argnums=argnums)
        )
        # Training code differentiates jitted functions: grad(jit(f)), jvp(jit(f)).
        self.grad_of_jit = jax.grad(
            lambda *i: sum(jnp.sum(v**2) for v in tree_leaves(self.value(*i))),
            argnums=argnums,
        )
        self.jvp_of_jit = lambda i, d: jax.jvp(self.value, i, d)[1]
        # One output alone: the throw check must ride on each of them.
        self.residual_only = jax.jit(lambda *i: case.solve(*i).residual)
        self.grad_nothrow = jax.jit(
            jax.grad(functools.partial(loss, throw=False), argnums=argnums)
        )

    def finite_difference(self, inputs, direction):
        h = self.case.fd_step
        plus = self.value(*_axpy(h, direction, inputs))
        minus = self.value(*_axpy(-h, direction, inputs))
        return jax.tree_util.tree_map(lambda p, m: (p - m) / (2 * h), plus, minus)


@functools.cache
def _compiled(name) -> _Compiled:
    return _Compiled(REGISTRY[name])


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("name", CASES)
def test_solves_to_tolerance(name, dtype):
    c = _compiled(name)
    inputs = c.case.make_inputs(dtype)
    sol = c.solve(*inputs)
    assert bool(sol.succeeded), sol.message
    assert all(leaf.dtype == jnp.dtype(dtype) for leaf in tree_leaves(sol.value))
    residual = float(c.case.residual(sol.value, *inputs))
    assert residual <= c.case.tolerance[jnp.dtype(dtype).name], residual


@pytest.mark.parametrize("name", CASES)
def test_jit_matches_eager_and_does_not_recompile(name):
    c = _compiled(name)
    inputs = c.case.make_inputs(jnp.float64)
    other = c.case.perturb(inputs, 0.5)
    first = c.solve(*inputs)
    traces = c.traces
    second = c.solve(*other)
    assert c.traces == traces, "a second call with same-shaped inputs retraced"
    assert bool(first.succeeded) and bool(second.succeeded)
    with jax.disable_jit(False):
        eager = c.case.solve(*other, throw=False)
    for a, b in zip(tree_leaves(eager.value), tree_leaves(second.value), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_vmap_matches_single_solves(name):
    c = _compiled(name)
    inputs = c.case.make_inputs(jnp.float64)
    batch = [c.case.perturb(inputs, s) for s in (0.0, 0.3, 0.7)]
    sols = c.vmap_solve(*_stack(batch))
    assert bool(jnp.all(sols.succeeded))
    for k, item in enumerate(batch):
        single = c.value(*item)
        for a, b in zip(tree_leaves(single), tree_leaves(sols.value), strict=True):
            np.testing.assert_allclose(b[k], a, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", CASES)
def test_jvp_matches_finite_differences(name):
    c = _compiled(name)
    inputs = c.case.make_inputs(jnp.float64)
    direction = _random_like(inputs, 0)
    tangent = c.jvp(inputs, direction)
    fd = c.finite_difference(inputs, direction)
    for t, d in zip(tree_leaves(tangent), tree_leaves(fd), strict=True):
        np.testing.assert_allclose(t, d, rtol=1e-5, atol=1e-7 * (1 + np.abs(d).max()))


@pytest.mark.parametrize("name", CASES)
def test_vjp_matches_finite_differences(name):
    """<vjp(c), v> must equal the finite difference <c, (f(x + h v) - f(x - h v))/2h>
    for random c and v (vjp is checked against finite differences, not against jvp)."""
    c = _compiled(name)
    inputs = c.case.make_inputs(jnp.float64)
    cot = _random_like(c.value(*inputs), 1)
    grads = c.vjp(inputs, cot)
    for seed in (2, 3):
        direction = _random_like(inputs, seed)
        fd = c.finite_difference(inputs, direction)
        np.testing.assert_allclose(
            _vdot(grads, direction), _vdot(cot, fd), rtol=1e-5, atol=1e-8
        )


def _batch_and_vmap_grad(c: _Compiled):
    """Two perturbed problems of a case, and ``vmap(grad)`` over them."""
    inputs = c.case.make_inputs(jnp.float64)
    batch = [c.case.perturb(inputs, s) for s in (0.0, 0.5)]
    return batch, c.vmap_grad(*_stack(batch))


@pytest.mark.parametrize("name", VMAP_OF_GRAD_CASES)
def test_vmap_of_grad_matches_single_gradients(name):
    c = _compiled(name)
    batch, per_item = _batch_and_vmap_grad(c)
    for k, item in enumerate(batch):
        single = c.grad(*item)
        for a, b in zip(tree_leaves(single), tree_leaves(per_item), strict=True):
            np.testing.assert_allclose(b[k], a, rtol=1e-7, atol=1e-10)


# The other order of the two transforms compiles one more large program per case
# (about 60 s of the default run's CPU time over all cases): a slow test.
@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_grad_of_vmap_matches_vmap_of_grad(name):
    c = _compiled(name)
    batch, per_item = _batch_and_vmap_grad(c)
    of_sum = c.grad_of_vmap(*_stack(batch))
    for a, b in zip(tree_leaves(per_item), tree_leaves(of_sum), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_float32_gradients_match_float64(name):
    c = _compiled(name)
    g32 = c.grad(*c.case.make_inputs(jnp.float32))
    g64 = c.grad(*c.case.make_inputs(jnp.float64))
    for a, b in zip(tree_leaves(g32), tree_leaves(g64), strict=True):
        assert a.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(a)))
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-3 * (1 + np.abs(b).max()))


BAD = [
    pytest.param(
        name, k, marks=pytest.mark.xdist_group(name), id=f"{name}-{bad.description}"
    )
    for name in sorted(REGISTRY)
    for k, bad in enumerate(REGISTRY[name].bad_inputs)
]


@pytest.mark.parametrize("name,k", BAD)
def test_bad_input(name, k):
    c = _compiled(name)
    bad = c.case.bad_inputs[k]
    inputs = bad.corrupt(c.case.make_inputs(jnp.float64))
    if isinstance(bad.expect, type) and issubclass(bad.expect, Exception):
        with pytest.raises(bad.expect):
            c.solve(*inputs)
        return
    assert isinstance(bad.expect, RESULTS)
    sol = c.solve(*inputs)
    assert bool(sol.result == bad.expect), sol.message
    assert not bool(sol.succeeded)
    # Under jax.jit an equinox error arrives wrapped in a JAX runtime error (or a
    # ValueError from the callback machinery); the message must be ours, and it
    # must come whichever output is used (an unused check would be dropped).
    errors = (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError, ValueError)
    message = re.escape(c.case.message(bad.expect)[:40])
    for fn in (c.value, c.residual_only):
        with pytest.raises(errors, match=message):
            jax.block_until_ready(fn(*inputs))
    # Derivatives too: jit(grad) raises with throw=True ...
    with pytest.raises(errors, match=message):
        jax.block_until_ready(c.grad(*inputs))
    # ... and with throw=False a failed solve's derivative is NaN, never a finite
    # (wrong) number.
    grads = c.grad_nothrow(*inputs)
    for g in tree_leaves(grads):
        if _is_float(g):
            assert not bool(jnp.any(jnp.isfinite(g))), g


@pytest.mark.parametrize("name", DERIVATIVES_OF_JIT_CASES)
def test_derivatives_of_jitted_functions(name):
    """grad(jit(f)) and jvp(jit(f)), the way training code calls a solver, agree
    with jit(grad(f)) and jit(jvp(f))."""
    c = _compiled(name)
    inputs = c.case.make_inputs(jnp.float64)
    for a, b in zip(
        tree_leaves(c.grad_of_jit(*inputs)), tree_leaves(c.grad(*inputs)), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    direction = _random_like(inputs, 0)
    for a, b in zip(
        tree_leaves(c.jvp_of_jit(inputs, direction)),
        tree_leaves(c.jvp(inputs, direction)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


LINEAR = [
    pytest.param(n, marks=pytest.mark.xdist_group(n), id=n)
    for n in sorted(REGISTRY)
    if REGISTRY[n].linear_operator is not None
]


@pytest.mark.parametrize("name", LINEAR)
def test_operator_is_checked(name):
    """A linear solver refuses operators that are not linear maps of ``b``'s
    space: wrong output shape or dtype at trace time, ``A 0 != 0`` (affine) with
    a code, and (for symmetric solvers) an asymmetric operator with a code."""
    case = REGISTRY[name]
    a, b = case.make_inputs(jnp.float64)[:2]
    if a.ndim != 2:  # the case's first input is not a matrix: use a diagonal one
        a = jnp.diag(jnp.arange(1.0, b.size + 1.0))
        b = b.reshape(-1)
    a = (
        (a + a.T) / 2 + a.shape[0] * jnp.eye(a.shape[0])
        if case.requires_symmetric
        else a
    )
    solve = case.linear_operator
    for wrong in (
        lambda x: (a @ x).astype(jnp.int32),  # an integer-valued matvec
        lambda x: (a @ x).astype(jnp.complex128),
        lambda x: jnp.sum(a @ x),  # a scalar, broadcast if unchecked
        lambda x: (a @ x).astype(jnp.float32),  # less precise than b
    ):
        with pytest.raises(ValueError, match="`operator`"):
            solve(wrong, b)
    affine = jax.jit(lambda a, b: solve(lambda x: a @ x + 1.0, b, throw=False))
    assert bool(affine(a, b).result == RESULTS.nonlinear_operator)
    errors = (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError, ValueError)
    residual = jax.jit(lambda a, b: solve(lambda x: a @ x + 1.0, b).residual)
    with pytest.raises(errors, match="not linear"):
        jax.block_until_ready(residual(a, b))
    if case.requires_symmetric:
        skew = a.at[0, 1].add(0.5)
        sol = jax.jit(lambda a, b: solve(lambda x: a @ x, b, throw=False))(skew, b)
        assert bool(sol.result == RESULTS.not_symmetric), sol.message
