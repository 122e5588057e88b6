"""``custom_root``/``custom_fixed_point`` as drop-in replacements for JAXopt's.

JAXopt's own ``tests/implicit_diff_test.py`` is the judge (run against jaxsolve by
swapping the decorators; it is not copied here). These are this project's tests of
each behaviour it relies on: the solver is called with the caller's own positional
and keyword arguments, the optimality function with them placed in its signature.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsolve import custom_fixed_point, custom_root

pytestmark = pytest.mark.xdist_group("jaxopt_dropin")


def _data():
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.normal(size=(12, 3))), jnp.asarray(rng.normal(size=12))


def objective(w, lam, X, y):
    return 0.5 * jnp.mean((X @ w - y) ** 2) + 0.5 * lam * jnp.sum(w**2)


def closed_form(lam, X, y):
    n, d = X.shape
    return jnp.linalg.solve(X.T @ X / n + lam * jnp.eye(d), X.T @ y / n)


def solver(init, lam, X, y):
    del init
    return closed_form(lam, X, y)


def d_closed_form(lam, X, y):
    return jax.jacobian(closed_form)(lam, X, y)


@pytest.mark.parametrize(
    "call",
    [
        lambda f, lam, X, y: f(None, lam, X, y),
        lambda f, lam, X, y: f(None, lam, X=X, y=y),
        lambda f, lam, X, y: f(None, y=y, lam=lam, X=X),
        lambda f, lam, X, y: jax.jit(f)(None, X=X, lam=lam, y=y),
    ],
    ids=["positional", "mixed", "keywords unordered", "jit keywords"],
)
def test_positional_and_keyword_calls(call):
    X, y = _data()
    decorated = custom_root(jax.grad(objective))(solver)
    np.testing.assert_allclose(call(decorated, 0.3, X, y), closed_form(0.3, X, y))
    grad = jax.jacobian(lambda lam: call(decorated, lam, X, y))(0.3)
    np.testing.assert_allclose(grad, d_closed_form(0.3, X, y), rtol=1e-8)


def test_solver_taking_only_keywords():
    X, y = _data()

    def keyword_solver(init, **kw):
        return closed_form(kw["lam"], kw["X"], kw["y"])

    decorated = custom_root(jax.grad(objective))(keyword_solver)
    for f in (decorated, jax.jit(decorated)):
        np.testing.assert_allclose(f(None, X=X, lam=0.3, y=y), closed_form(0.3, X, y))
    grad = jax.jit(jax.grad(lambda lam: decorated(None, lam=lam, X=X, y=y)[0]))(0.3)
    np.testing.assert_allclose(grad, d_closed_form(0.3, X, y)[0], rtol=1e-8)


def test_solver_with_another_parameter_order_is_never_changed():
    """A solver whose parameters come in another order than F's, called by
    keyword, computes what it computes without the decorator."""

    def F(x, a, b):
        return x * a - b  # root x = b / a

    def other_order(init, b, a):
        return b / a

    decorated = custom_root(F)(other_order)
    assert float(decorated(1.0, a=2.0, b=1.0)) == 0.5
    assert float(decorated(1.0, b=1.0, a=2.0)) == 0.5
    # derivative of b / a with respect to a: -b / a^2
    np.testing.assert_allclose(
        jax.grad(lambda a: decorated(1.0, a=a, b=1.0))(2.0), -0.25, rtol=1e-10
    )


def test_jaxopt_keyword_names():
    X, y = _data()
    decorated = custom_root(
        optimality_fun=jax.grad(objective), has_aux=False, solve=None
    )(solver)
    np.testing.assert_allclose(decorated(None, 0.3, X, y), closed_form(0.3, X, y))

    def T(w, lam, X, y):
        return w - jax.grad(objective)(w, lam, X, y)

    fixed = custom_fixed_point(fixed_point_fun=T, solve=None)(solver)
    grad = jax.jacobian(lambda lam: fixed(None, lam, X=X, y=y))(0.3)
    np.testing.assert_allclose(grad, d_closed_form(0.3, X, y), rtol=1e-8)
    with pytest.raises(TypeError, match="exactly one"):
        custom_root(jax.grad(objective), optimality_fun=jax.grad(objective))
    with pytest.raises(TypeError, match="exactly one"):
        custom_fixed_point()


def test_arguments_that_do_not_fit_the_signature_raise():
    X, y = _data()
    decorated = custom_root(jax.grad(objective))(solver)
    with pytest.raises(TypeError, match="reference signature"):
        decorated(None, 0.3, X, y, extra=1.0)
    with pytest.raises(TypeError, match="reference signature"):
        decorated(None, 0.3, X, y, 1.0, 2.0)  # too many

    def F_varargs(x, *args):
        return x - args[0]

    with pytest.raises(TypeError, match="keyword-only"):
        custom_root(F_varargs)(lambda init, t: t)(0.0, t=1.0)
    # positional calls need no signature at all
    assert float(custom_root(F_varargs)(lambda init, t: t)(0.0, 1.0)) == 1.0
