# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Implicit differentiation with `jaxsolve`
#
# Many quantities are defined as the *solution* of a problem rather than by a formula:
# the minimiser of a training loss, the root of a system of equations, the equilibrium of
# a layer. To differentiate such a solution $x^\star(\theta)$ with respect to the
# parameters $\theta$ one can *unroll* the solver, i.e. let automatic differentiation
# run backwards through every iteration. That needs a differentiable solver, stores
# every iterate (memory grows with the number of iterations), and gives the derivative
# of the algorithm rather than of the solution.
#
# *Implicit differentiation* differentiates the **optimality condition** instead.
#
# ## The implicit function theorem
#
# Let $x^\star(\theta) \in \mathbb{R}^n$ be defined by $F(x^\star(\theta), \theta) = 0$
# for an *optimality function* $F : \mathbb{R}^n \times \mathbb{R}^p \to \mathbb{R}^n$
# (for a minimiser, $F = \nabla_x f$). Differentiating the identity gives
#
# $$
# \partial_x F \, dx + \partial_\theta F \, d\theta = 0
# \quad\Longrightarrow\quad
# A \, dx = -B \, d\theta,
# \qquad A = \partial_x F(x^\star, \theta) \in \mathbb{R}^{n \times n},
# \quad B = \partial_\theta F(x^\star, \theta) \in \mathbb{R}^{n \times p}.
# $$
#
# If $A$ is invertible, $x^\star$ is differentiable and $\partial x^\star / \partial\theta
# = -A^{-1} B$. Neither matrix is ever formed: $A v$ is a Jacobian-vector product of $F$
# in $x$, and $B \dot\theta$ one in $\theta$.
#
# * **Forward mode** (JVP): for a tangent $\dot\theta$, the tangent of the solution solves
#   $A \dot x = -B \dot\theta$: **one linear solve per tangent**.
# * **Reverse mode** (VJP): for a cotangent $\bar x$ (e.g. the gradient of a loss with
#   respect to $x^\star$), $\bar\theta = -B^\top A^{-\top} \bar x$: solve the **transposed
#   system** $A^\top u = \bar x$ once, then $\bar\theta = -B^\top u$ (a vector-Jacobian
#   product of $F$). One solve, however many parameters $\theta$ has.
#
# `jaxsolve.custom_root(F)` attaches this rule to *any* solver as a `jax.custom_jvp`, with
# the linear solve inside `jax.lax.custom_linear_solve`. JAX then derives reverse mode by
# transposing the rule (which turns the solve into the transposed solve above), and
# higher derivatives by differentiating the rule again. The solver's loop is never
# differentiated: it may be a `lax.while_loop` with early stopping, a warm-started method
# or anything else that returns the solution, and memory does not grow with its number
# of iterations.
#
# The calling convention is JAXopt's: decorate `solver(init, *args)` (returning
# $x^\star$) with `custom_root(F)`, where `F(x, *args) = 0` at the solution; derivatives
# flow to `args`, while `init` (the initial guess) gets none. `custom_fixed_point(T)`
# handles $x^\star = T(x^\star, \theta)$, i.e. $F = T(x) - x$. The argument `solve=` picks
# the linear solver for $A$: `"cg"` when $A$ is symmetric positive definite (e.g.
# $F = \nabla_x f$ with $f$ strongly convex), `"gmres"` (the default) or `"bicgstab"` for
# general $A$, `"dense"` for small systems.

# %%
# %matplotlib inline
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from jax import lax

import jaxsolve
from jaxsolve import custom_fixed_point, custom_root
from jaxsolve.problems import (
    logistic_loss,
    make_classification,
    ridge_logistic_objective,
)

jax.config.update("jax_enable_x64", True)  # float64: derivatives checked to ~1e-10
print("jax", jax.__version__, "| jaxsolve", jaxsolve.__version__)

# %% [markdown]
# ## 1. The gradient of a validation loss with respect to a ridge penalty
#
# Ridge regression on training data $(X, y)$:
#
# $$
# w^\star(\lambda) = \arg\min_w \tfrac12 \|X w - y\|^2 + \tfrac{\lambda}{2} \|w\|^2,
# \qquad
# F(w, \lambda) = X^\top (X w - y) + \lambda w = 0 .
# $$
#
# Here $A = X^\top X + \lambda I$ is symmetric positive definite (so `solve="cg"`) and
# $B = \partial_\lambda F = w$, hence $dw^\star / d\lambda = -(X^\top X + \lambda I)^{-1}
# w^\star$. We tune $\lambda$ on held-out data, with the validation loss
# $L(\lambda) = \frac{1}{2 m} \|X_{\rm val} w^\star(\lambda) - y_{\rm val}\|^2$.
#
# The inner solver runs `jaxsolve.cg` on the normal equations. Any solver would do:
# `custom_root` only needs the solution it returns.

# %%
rng = np.random.default_rng(0)
n_train, n_val, n_features = 40, 200, 30
w_true = rng.standard_normal(n_features)
X_train = rng.standard_normal((n_train, n_features))
X_val = rng.standard_normal((n_val, n_features))
y_train = X_train @ w_true + 3.0 * rng.standard_normal(n_train)  # noisy targets
y_val = X_val @ w_true + 3.0 * rng.standard_normal(n_val)
X_train, y_train, X_val, y_val = map(jnp.asarray, (X_train, y_train, X_val, y_val))


def ridge_optimality(w, lam):
    # F(w, lam): the gradient of the ridge objective, zero at the solution.
    return X_train.T @ (X_train @ w - y_train) + lam * w


@custom_root(ridge_optimality, solve="cg")
def ridge_solver(init, lam):
    A = X_train.T @ X_train + lam * jnp.eye(n_features)
    return jaxsolve.cg(A, X_train.T @ y_train, x0=init, rtol=1e-12).value


def validation_loss(lam):
    w = ridge_solver(jnp.zeros(n_features), lam)
    return 0.5 * jnp.mean((X_val @ w - y_val) ** 2)


def validation_loss_closed_form(lam):
    # Reference: differentiate straight through a dense solve.
    A = X_train.T @ X_train + lam * jnp.eye(n_features)
    w = jnp.linalg.solve(A, X_train.T @ y_train)
    return 0.5 * jnp.mean((X_val @ w - y_val) ** 2)


# %% [markdown]
# `jax.grad` of the validation loss now works through the CG solver, and composes with
# `jax.vmap` and `jax.jit`: one call gives the loss and its gradient for a whole grid of
# $\lambda$. We compare with differentiating the closed form and with central finite
# differences.

# %%
loss_and_grad = jax.jit(jax.vmap(jax.value_and_grad(validation_loss)))
grad_closed_form = jax.jit(jax.vmap(jax.grad(validation_loss_closed_form)))

lams = np.logspace(-2, 3, 21)
losses, grads = np.asarray(loss_and_grad(lams))
grads_reference = np.asarray(grad_closed_form(lams))
h = 1e-5 * lams  # central differences with a relative step
losses_plus, grads_plus = np.asarray(loss_and_grad(lams + h))
losses_minus, grads_minus = np.asarray(loss_and_grad(lams - h))
grads_fd = (losses_plus - losses_minus) / (2 * h)

print(f"{'lambda':>9} {'implicit':>13} {'closed form':>13} {'finite diff':>13}")
for i in range(0, len(lams), 4):
    print(
        f"{lams[i]:9.3g} {grads[i]:13.6e} {grads_reference[i]:13.6e} "
        f"{grads_fd[i]:13.6e}"
    )


def max_rel_err(a, b):
    return float(np.max(np.abs(a - b) / np.abs(b)))


print("max relative error vs closed form:   ", max_rel_err(grads, grads_reference))
print("max relative error vs finite diffs:  ", max_rel_err(grads, grads_fd))
np.testing.assert_allclose(grads, grads_reference, rtol=1e-8)
np.testing.assert_allclose(grads, grads_fd, rtol=1e-5)

# %%
best = int(np.argmin(losses))
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.5))
ax0.semilogx(lams, losses, "o-")
ax0.axvline(lams[best], color="gray", ls=":")
ax0.set(xlabel=r"$\lambda$", ylabel="validation loss", title=r"$L(\lambda)$")
ax1.semilogx(lams, lams * grads, "o-", label="implicit (custom_root + CG)")
ax1.semilogx(lams, lams * grads_reference, "k+", ms=10, label="closed form")
ax1.axhline(0, color="gray", lw=0.8)
ax1.axvline(lams[best], color="gray", ls=":")
ax1.set(
    xlabel=r"$\lambda$",
    ylabel=r"$\lambda \, dL/d\lambda$",
    title=r"$dL / d\log\lambda$ (zero at the optimum)",
)
ax1.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ### Forward mode and second order
#
# Because `custom_root` defines a **JVP** rule, forward mode works directly (`jax.jvp`,
# `jax.jacfwd`), and so does second order: JAX differentiates the rule, including its
# linear solve, once more. Below, `jax.jvp` of `jax.grad` (forward-over-reverse) returns
# the gradient together with its derivative $d^2L/d\lambda^2$, a Hessian-vector product.
# `jax.hessian(validation_loss)` gives the same number: it is `jacfwd(jacrev(...))`, this
# same product batched by `vmap` over a basis (here of size one), and takes about twice
# as long to compile. (JAXopt's `custom_root` is a `jax.custom_vjp`, which supports
# reverse mode only: `jax.jvp`, `jax.jacfwd` or `jax.hessian` through it raise
# `TypeError: can't apply forward-mode autodiff (jvp) to a custom_vjp function`.)

# %%
i0 = 12
lam0 = lams[i0]  # lambda = 10, a point of the grid above


@jax.jit
def grad_and_second(lam):
    return jax.jvp(jax.grad(validation_loss), (lam,), (1.0,))


grad0, second = grad_and_second(lam0)
second_fd = (grads_plus[i0] - grads_minus[i0]) / (2 * h[i0])

print(f"dL/dlam      forward-over-reverse: {grad0:.12e}")
print(f"             closed form:          {grads_reference[i0]:.12e}")
print(f"d2L/dlam2    forward-over-reverse: {second:.12e}")
print(f"             finite differences:   {second_fd:.12e}")
np.testing.assert_allclose(grad0, grads_reference[i0], rtol=1e-8)
np.testing.assert_allclose(second, second_fd, rtol=1e-5)

# %% [markdown]
# ## 2. Hyperparameter optimisation for logistic regression
#
# Now the inner problem has no closed form: $\ell_2$-regularised logistic regression,
#
# $$
# w^\star(\lambda) = \arg\min_w \; \ell_{\rm train}(w) + \tfrac{\lambda}{2}\|w\|^2,
# \qquad F(w, \lambda) = \nabla \ell_{\rm train}(w) + \lambda w,
# $$
#
# where $\ell$ is the mean binary cross-entropy (`jaxsolve.problems.logistic_loss`).
# $A = \nabla^2 \ell_{\rm train}(w^\star) + \lambda I$ is symmetric positive definite, so
# `solve="cg"` again. `F` is simply `jax.grad` of the objective; the data are passed as
# arguments of the solver and of `F` (so they could be differentiated too).
#
# The inner solver is plain gradient descent with step $1/L$,
# $L = \|X\|_2^2 / (4 n) + \lambda$, in a `lax.while_loop` that stops when
# $\|\nabla\| \le 10^{-10}$. A `while_loop` cannot be reverse-differentiated at all:

# %%
make_data = jax.jit(make_classification, static_argnums=(1, 2))
X, y = map(np.asarray, make_data(jax.random.PRNGKey(1), 200, 40))
Xc_train, yc_train = jnp.asarray(X[:80]), jnp.asarray(y[:80])  # 80 to train on
Xc_val, yc_val = jnp.asarray(X[80:]), jnp.asarray(y[80:])  # 120 to validate on
w0 = np.zeros(X.shape[1])

logistic_optimality = jax.grad(ridge_logistic_objective)  # F(w, lam, X, y)


def step_size(lam, X):
    # 1 / L, with L the smoothness constant of the regularised logistic loss.
    return 1.0 / (jnp.linalg.norm(X, 2) ** 2 / (4 * X.shape[0]) + lam)


def gradient_descent(init, lam, X, y):
    step = step_size(lam, X)

    def keep_going(state):
        k, _, g = state
        return (k < 20_000) & (jnp.linalg.norm(g) > 1e-10)

    def gd_step(state):
        k, w, g = state
        w = w - step * g
        return k + 1, w, logistic_optimality(w, lam, X, y)

    start = (0, init, logistic_optimality(init, lam, X, y))
    num_steps, w, _ = lax.while_loop(keep_going, gd_step, start)
    return w, num_steps


def unrolled_val_loss(lam):
    w, _ = gradient_descent(w0, lam, Xc_train, yc_train)
    return logistic_loss(w, Xc_val, yc_val)


try:
    jax.jit(jax.grad(unrolled_val_loss))(0.1)
except ValueError as err:
    print("ValueError:", err)

# %% [markdown]
# Decorating the *same* solver with `custom_root` makes it differentiable
# (`has_aux=True`: the solver also returns its number of steps, which gets no
# derivative). We optimise $\log\lambda$ (so that $\lambda$ stays positive) with Adam,
# warm-starting each inner solve at the previous solution: the initial guess receives no
# gradient, so this changes nothing in the hypergradient.

# %%
implicit_gd = custom_root(logistic_optimality, has_aux=True, solve="cg")(
    gradient_descent
)


def outer_objective(log_lam, init):
    w, num_steps = implicit_gd(init, jnp.exp(log_lam), Xc_train, yc_train)
    return logistic_loss(w, Xc_val, yc_val), (w, num_steps)


optimizer = optax.adam(0.3, b1=0.5)


@jax.jit
def outer_step(log_lam, opt_state, init):
    # One Adam step on log(lambda); the inner solver is warm-started at `init`.
    hypergradient = jax.value_and_grad(outer_objective, has_aux=True)
    (loss, (w, num_steps)), g = hypergradient(log_lam, init)
    updates, opt_state = optimizer.update(g, opt_state)
    log_lam_next = optax.apply_updates(log_lam, updates)
    return log_lam_next, opt_state, (loss, g, w, num_steps)


log_lam = np.log(1e-3)
opt_state = optimizer.init(log_lam)

# Check the hypergradient against central finite differences at lambda = 0.1.
loss_at = lambda log_lam: outer_step(log_lam, opt_state, w0)[2][0]
_, _, (_, g, _, _) = outer_step(np.log(0.1), opt_state, w0)
fd = (loss_at(np.log(0.1) + 1e-5) - loss_at(np.log(0.1) - 1e-5)) / 2e-5
print(f"dL/dlog(lambda): implicit {g:.10e}, finite differences {fd:.10e}")
np.testing.assert_allclose(g, fd, rtol=1e-6)

w = w0
history = []
for _ in range(25):
    lam = float(np.exp(log_lam))
    log_lam, opt_state, (loss, g, w, num_steps) = outer_step(log_lam, opt_state, w)
    history.append((lam, float(loss), int(num_steps)))

for i in range(0, len(history), 4):
    lam_i, loss_i, steps_i = history[i]
    print(
        f"outer step {i:2d}: lambda={lam_i:.4f}  val loss={loss_i:.4f}  "
        f"inner GD steps={steps_i}"
    )

# %%
lam_path, loss_path, _ = map(np.array, zip(*history, strict=True))
lam_grid = np.logspace(-3, 0.5, 15)
loss_grid = [float(loss_at(np.log(lam))) for lam in lam_grid]

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.5))
ax0.plot(loss_path, "o-")
ax0.set(xlabel="outer step", ylabel="validation loss", title="Adam on $\\log\\lambda$")
ax1.semilogx(lam_grid, loss_grid, "-", color="gray", label="validation loss")
ax1.scatter(
    lam_path, loss_path, c=np.arange(len(lam_path)), zorder=3, label="outer iterates"
)
ax1.set(xlabel=r"$\lambda$", ylabel="validation loss", title="path of $\\lambda$")
ax1.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. A fixed point: a small deep-equilibrium layer
#
# A deep-equilibrium layer outputs the fixed point of
# $z = T(z) = \tanh(W z + U x)$ for a batch of inputs $x$. If $\|W\|_2 < 1$ the map is a
# contraction ($|\tanh'| \le 1$), so the fixed-point iteration converges and
# $A = \partial_z T - I = \mathrm{diag}(1 - z^2)\, W - I$ is invertible. $A$ is not
# symmetric, so `custom_fixed_point` uses GMRES (its default). The solver is a plain
# fixed-point iteration in a `while_loop`; we check the gradient of a loss with respect
# to $W$ and $U$ against central finite differences in random directions.

# %%
rng = np.random.default_rng(2)
d_hidden, d_in, batch = 16, 4, 8
W = rng.standard_normal((d_hidden, d_hidden))
W = 0.8 * W / np.linalg.norm(W, 2)  # spectral norm 0.8: a contraction
U = rng.standard_normal((d_hidden, d_in)) / 2
x = rng.standard_normal((d_in, batch))
readout = rng.standard_normal(d_hidden)
targets = rng.standard_normal(batch)


def layer(z, W, U, x):  # T(z, W, U, x); z has shape (d_hidden, batch)
    return jnp.tanh(W @ z + U @ x)


@custom_fixed_point(layer)
def equilibrium(init, W, U, x):
    def keep_going(state):
        k, _, residual = state
        return (k < 1_000) & (residual > 1e-13)

    def iteration(state):
        k, z, _ = state
        z_next = layer(z, W, U, x)
        return k + 1, z_next, jnp.max(jnp.abs(z_next - z))

    _, z, _ = lax.while_loop(keep_going, iteration, (0, init, jnp.inf))
    return z


def deq_loss(W, U):
    z = equilibrium(jnp.zeros((d_hidden, batch)), W, U, x)
    residual = jnp.max(jnp.abs(layer(z, W, U, x) - z))
    return 0.5 * jnp.sum((readout @ z - targets) ** 2), residual


deq_value_and_grad = jax.jit(jax.value_and_grad(deq_loss, (0, 1), has_aux=True))
(loss, residual), (grad_W, grad_U) = deq_value_and_grad(W, U)
print(f"fixed-point residual max|T(z*) - z*| = {residual:.1e}")

dW = rng.standard_normal(W.shape)  # random directions
dU = rng.standard_normal(U.shape)
eps = 1e-6
deq_loss_at = lambda W, U: deq_value_and_grad(W, U)[0][0]
fd_W = (deq_loss_at(W + eps * dW, U) - deq_loss_at(W - eps * dW, U)) / (2 * eps)
fd_U = (deq_loss_at(W, U + eps * dU) - deq_loss_at(W, U - eps * dU)) / (2 * eps)
print(f"<grad_W, dW>: implicit {np.vdot(grad_W, dW):.10e}, finite diff {fd_W:.10e}")
print(f"<grad_U, dU>: implicit {np.vdot(grad_U, dU):.10e}, finite diff {fd_U:.10e}")
np.testing.assert_allclose(np.vdot(grad_W, dW), fd_W, rtol=1e-6)
np.testing.assert_allclose(np.vdot(grad_U, dU), fd_U, rtol=1e-6)


# %% [markdown]
# ## 4. Implicit versus unrolled differentiation
#
# Back to the logistic-regression hypergradient $dL/d\lambda$, now with an inner
# gradient descent of exactly $T$ steps, differentiated in two ways:
#
# * **implicit**: `custom_root` applied at the $T$-th iterate $w_T$. The number of steps
#   is passed as an (integer) argument of the solver that the optimality function
#   ignores, so **one compiled function serves every $T$**.
# * **unrolled**: reverse mode through a `lax.fori_loop` with a static trip count (a
#   `scan`), which stores every iterate for the backward pass: one compilation per $T$.
#
# We measure the run time of the compiled gradient (median of a few runs) and the
# scratch memory XLA allocates for it
# (`jax.jit(f).lower(...).compile().memory_analysis().temp_size_in_bytes`).


# %%
def gd_fixed_steps(init, lam, X, y, num_steps):
    step = step_size(lam, X)
    gd_step = lambda _, w: w - step * logistic_optimality(w, lam, X, y)
    return lax.fori_loop(0, num_steps, gd_step, init)


def optimality_ignoring_steps(w, lam, X, y, num_steps):
    del num_steps  # a setting of the solver, not a parameter of the problem
    return logistic_optimality(w, lam, X, y)


implicit_gd_T = custom_root(optimality_ignoring_steps, solve="cg")(gd_fixed_steps)


def val_loss_implicit(lam, num_steps):
    w = implicit_gd_T(w0, lam, Xc_train, yc_train, num_steps)
    return logistic_loss(w, Xc_val, yc_val)


def val_loss_unrolled(lam, num_steps):
    w = gd_fixed_steps(w0, lam, Xc_train, yc_train, num_steps)
    return logistic_loss(w, Xc_val, yc_val)


def median_time(f, *args, repeats=11):
    jax.block_until_ready(f(*args))  # warm
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


lam = 0.01
steps = [10, 30, 100, 300, 1000]
grad_implicit = jax.jit(jax.grad(val_loss_implicit)).lower(lam, steps[0]).compile()
memory_implicit = grad_implicit.memory_analysis().temp_size_in_bytes
g_reference = float(grad_implicit(lam, 20_000))  # GD converged to ~machine precision

results = []
for T in steps:
    grad_unrolled = (
        jax.jit(jax.grad(val_loss_unrolled), static_argnums=1).lower(lam, T).compile()
    )
    results.append(
        dict(
            T=T,
            g_implicit=float(grad_implicit(lam, T)),
            g_unrolled=float(grad_unrolled(lam)),
            time_implicit=median_time(grad_implicit, lam, T),
            time_unrolled=median_time(grad_unrolled, lam),
            memory_implicit=memory_implicit,
            memory_unrolled=grad_unrolled.memory_analysis().temp_size_in_bytes,
        )
    )

print(f"reference hypergradient (implicit, T=20000): {g_reference:.10e}")
print(
    f"{'T':>5} {'implicit':>13} {'unrolled':>13} {'t impl':>8} {'t unroll':>8}"
    f" {'mem impl':>9} {'mem unroll':>10}"
)
for r in results:
    print(
        f"{r['T']:5d} {r['g_implicit']:13.6e} {r['g_unrolled']:13.6e} "
        f"{1e3 * r['time_implicit']:6.2f}ms {1e3 * r['time_unrolled']:6.2f}ms "
        f"{r['memory_implicit'] / 1024:7.0f}kB {r['memory_unrolled'] / 1024:8.0f}kB"
    )
assert results[-1]["memory_unrolled"] > 5 * memory_implicit
np.testing.assert_allclose(results[-1]["g_unrolled"], g_reference, rtol=1e-6)

# %%
Ts = np.array([r["T"] for r in results])
col = {k: np.array([r[k] for r in results]) for k in results[0]}
fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(13, 3.6))
ax0.loglog(Ts, 1e3 * col["time_implicit"], "o-", label="implicit")
ax0.loglog(Ts, 1e3 * col["time_unrolled"], "s-", label="unrolled")
ax0.set(xlabel="inner GD steps $T$", ylabel="ms", title="time of the hypergradient")
ax1.loglog(Ts, col["memory_implicit"] / 1024, "o-", label="implicit")
ax1.loglog(Ts, col["memory_unrolled"] / 1024, "s-", label="unrolled")
ax1.set(xlabel="inner GD steps $T$", ylabel="kB", title="XLA temporary memory")
differences = {
    "|unrolled - implicit|": col["g_unrolled"] - col["g_implicit"],
    "|implicit - converged|": col["g_implicit"] - g_reference,
    "|unrolled - converged|": col["g_unrolled"] - g_reference,
}
for (label, diff), marker in zip(differences.items(), "dos", strict=True):
    ax2.loglog(Ts, np.abs(diff) / abs(g_reference), marker + "-", label=label)
ax2.set(
    xlabel="inner GD steps $T$",
    ylabel="relative difference",
    title="hypergradients as GD converges",
)
for ax in (ax0, ax1, ax2):
    ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# The unrolled gradient stores every iterate, so its memory grows linearly with $T$,
# while the implicit gradient's memory does not depend on $T$ at all (it is the same
# compiled program for every $T$). For large $T$ the implicit gradient is also faster:
# the backward pass costs one CG solve instead of $T$ reversed steps. Both hypergradients
# converge to the same value as gradient descent converges: the implicit one is exact at
# the exact solution and inherits the accuracy of $w_T$, the unrolled one is the exact
# derivative of an inexact algorithm.
#
# ## Summary
#
# * `custom_root(F)(solver)` / `custom_fixed_point(T)(solver)` make any solver
#   differentiable, in forward and reverse mode and to any order, under `jit` and `vmap`.
# * Choose `solve="cg"` when $\partial_x F$ is symmetric positive definite (gradients of
#   strongly convex objectives), otherwise `"gmres"` (default) or `"bicgstab"`. With
#   `custom_fixed_point`, $\partial_x F = \partial_x T - I$ is negative definite even
#   when $\partial_x T$ is symmetric (e.g. $T$ a gradient step), so keep GMRES there.
# * The derivative is that of the *solution*: it is as accurate as the solver's output
#   satisfies $F(x, \theta) = 0$. Solve tightly when you need accurate gradients.
# * Arrays that the optimality function closes over receive gradients, like arguments;
#   arrays that only the solver closes over, and `init`, receive none. When in doubt,
#   pass them as arguments.
