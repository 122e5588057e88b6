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
# # Entropic optimal transport with `jaxsolve`: Sinkhorn and Sinkhorn-Newton-Sparse
#
# Given two probability vectors $a \in \mathbb{R}^n_{\ge 0}$, $b \in \mathbb{R}^m_{\ge 0}$
# (same total mass) and a cost matrix $C \in \mathbb{R}^{n \times m}$, **entropic optimal
# transport** looks for the plan
#
# $$
# P^\star = \arg\min_{P \ge 0,\; P \mathbf 1 = a,\; P^\top \mathbf 1 = b}
# \; \langle C, P\rangle + \varepsilon \sum_{ij} P_{ij} \log P_{ij} .
# $$
#
# Tang et al. (*Accelerating Sinkhorn Algorithm with Sparse Newton Iterations*, ICLR 2024,
# [arXiv 2401.12253](https://arxiv.org/abs/2401.12253)) write the regularisation as
# $1/\eta$: **$\varepsilon = 1/\eta$** (POT and regot call $\varepsilon$ `reg`). Large
# $\eta$ (small $\varepsilon$) gives a plan close to the unregularised one, and a harder
# problem.
#
# ## The dual
#
# With potentials $f \in \mathbb{R}^n$, $g \in \mathbb{R}^m$ the problem has the concave,
# unconstrained dual
#
# $$
# \max_{f, g}\; D(f, g) = \langle f, a\rangle + \langle g, b\rangle
# - \varepsilon \sum_{ij} P_{ij}(f, g),
# \qquad
# P_{ij}(f, g) = \exp\!\big((f_i + g_j - C_{ij})/\varepsilon - 1\big),
# $$
#
# whose gradient is the pair of **marginal residuals** and whose negative Hessian is
# $1/\varepsilon$ times a matrix built from the plan:
#
# $$
# \nabla D = \begin{pmatrix} a - P\mathbf 1 \\ b - P^\top \mathbf 1 \end{pmatrix},
# \qquad
# -\nabla^2 D = \frac{1}{\varepsilon}
# \begin{pmatrix} \operatorname{diag}(P\mathbf 1) & P \\ P^\top &
# \operatorname{diag}(P^\top \mathbf 1)\end{pmatrix} \succeq 0 .
# $$
#
# At the optimum $P(f^\star, g^\star) = P^\star$. The solvers report the **marginal
# error** $\|P\mathbf 1 - a\|_1 + \|P^\top \mathbf 1 - b\|_1 = \|\nabla D\|_1$ and stop
# when it falls below `tol`. ($D$ is flat along $(\mathbf 1, -\mathbf 1)$; `jaxsolve`
# returns the potentials in the gauge $\sum f = \sum g$.)
#
# ## Two solvers
#
# * **Sinkhorn** (`jaxsolve.solvers.ot.sinkhorn`) maximises $D$ exactly over $f$, then
#   over $g$, alternately (in the log domain, so $\varepsilon = 1/1200$ neither overflows
#   nor underflows). Each step costs $O(nm)$; its convergence is linear, with a rate that
#   degrades as $\varepsilon \to 0$.
# * **Sinkhorn-Newton-Sparse** (`sinkhorn_newton_sparse`, SNS) runs a few Sinkhorn steps
#   as a **warm-up** (the paper's 20), then **Newton steps** on $D$: the plan in the
#   Hessian is **sparsified** (here: the `k` largest entries of each row are kept, with
#   the exact row and column sums on the diagonal so that the matrix stays positive
#   semi-definite), the Newton system is solved inexactly by **conjugate gradients**
#   (`jaxsolve.cg`), and a backtracking line search on $D$ sets the step length. A Newton
#   step costs $O(nm)$ (forming $P$) plus $O(nk)$ per CG step: about the price of a
#   Sinkhorn step, but close to the solution the error is squared at every step.
#
# Both return an `OTSolution`: `.value = (f, g)`, `.plan`, `.cost` (the regularised cost),
# `.residual` (the marginal error), `.num_steps`, `.stats` (`sinkhorn_steps`,
# `newton_steps`, `cg_steps`, `line_search_steps`, `marginal_error`), `.result` and
# `.succeeded`. Both are differentiable through their optimality condition (section 4).

# %%
# %matplotlib inline
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import load_digits

import jaxsolve
from jaxsolve.solvers.ot import (
    grid_cost,
    grid_points,
    sinkhorn,
    sinkhorn_newton_sparse,
    sqeuclidean_cost,
)

# float64: at eta = 1200 the potentials are O(1) but the plan spans hundreds of
# orders of magnitude, and marginal errors near 1e-12 need double precision.
jax.config.update("jax_enable_x64", True)
print("jax", jax.__version__, "| jaxsolve", jaxsolve.__version__)


def timed(fn, *args):
    # Wall time of a jitted call, after a first call that compiles it.
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def summary(sol):
    s = {k: v.item() for k, v in sol.stats.items()}
    return (
        f"succeeded={bool(sol.succeeded)}, Sinkhorn steps={s['sinkhorn_steps']}, "
        f"Newton steps={s['newton_steps']} ({s.get('dense_steps', 0)} dense), "
        f"CG steps={s.get('cg_steps', 0)}, "
        f"marginal error={s['marginal_error']:.1e}"
    )


# %% [markdown]
# ## 2. The paper's random-assignment case
#
# $n = m = 500$, $C_{ij} \sim U[0, 1]$ i.i.d., uniform marginals, $\eta = 1200$ (Tang et
# al., Table 1: SNS needs 20 Sinkhorn + 9 Newton steps to machine accuracy, Sinkhorn
# 56,199 steps). At this $\eta$ the optimal plan is close to a permutation: each row puts
# most of its mass on one entry (printed below), which is what makes a very sparse
# Hessian (here `k = 32` entries per row, the default) a good approximation.
#
# First, one uninterrupted SNS solve to a marginal error of $10^{-12}$:

# %%
n = 500
eta = 1200.0
eps = 1 / eta
TOL = 1e-12
C = jax.random.uniform(jax.random.PRNGKey(0), (n, n), jnp.float64)
a = jnp.full(n, 1 / n)

solve_sns = jax.jit(
    lambda C: sinkhorn_newton_sparse(C, a, a, epsilon=eps, tol=TOL, throw=False)
)
sol_sns, time_sns = timed(solve_sns, C)
print(f"SNS: {summary(sol_sns)}, wall {time_sns:.2f} s (jitted, warmed up)")
top = float(jnp.mean(sol_sns.plan.max(1)) * n)
print(
    f"largest entry of each row of P, as a fraction of the row's mass: {top:.2f} (mean)"
)
assert sol_sns.succeeded

# %% [markdown]
# ### Error trajectories
#
# To plot the marginal error along the iterations we use only the public API and
# **warm starts**: in `jaxsolve`, both methods carry nothing from one step to the next
# but the potentials $(f, g)$ (the Sinkhorn update of $f$ reads only $g$; a Newton step
# reads only the current plan), so calling a solver again with `init=(f, g)` continues
# the *same* iteration (up to rounding: the returned potentials are shifted into the
# gauge $\sum f = \sum g$, which leaves the plan unchanged).
#
# * **Sinkhorn**: `sinkhorn(..., max_steps=20, init=(f, g))` called repeatedly, one point
#   per 20 steps. The first call is exactly the SNS warm-up.
# * **SNS**: from the potentials after those 20 warm-up steps,
#   `sinkhorn_newton_sparse(..., warmup_steps=0, max_newton_steps=1, init=(f, g))` called
#   repeatedly: one point per Newton step.
#
# Wall-clock times are those of the jitted, warmed-up calls (compilation excluded),
# accumulated along each chain; each call also pays a small fixed cost (input checks,
# forming the final plan). The uninterrupted SNS solve above is plotted as a star to
# show that the chain follows it. Sinkhorn is stopped after a fixed budget of steps, far
# from the tolerance.

# %%
SEGMENT = 20  # Sinkhorn steps per call; also the SNS warm-up length
SINKHORN_CALLS = 50  # Sinkhorn budget: 1000 steps


@jax.jit
def sinkhorn_segment(C, f, g):
    return sinkhorn(
        C, a, a, epsilon=eps, tol=TOL, max_steps=SEGMENT, init=(f, g), throw=False
    )


@jax.jit
def newton_step(C, f, g):
    return sinkhorn_newton_sparse(
        C,
        a,
        a,
        epsilon=eps,
        tol=TOL,
        warmup_steps=0,
        max_newton_steps=1,
        init=(f, g),
        throw=False,
    )


def trajectory(step_fn, f, g, max_calls):
    # Call step_fn repeatedly from (f, g); record (steps, seconds, marginal error).
    jax.block_until_ready(step_fn(C, f, g))  # compile
    steps, seconds, errors = [], [], []
    total_steps, total_seconds = 0, 0.0
    for _ in range(max_calls):
        start = time.perf_counter()
        sol = jax.block_until_ready(step_fn(C, f, g))
        total_seconds += time.perf_counter() - start
        total_steps += int(sol.num_steps)
        steps.append(total_steps)
        seconds.append(total_seconds)
        errors.append(float(sol.residual))
        f, g = sol.value
        if sol.succeeded:
            break
    return np.array(steps), np.array(seconds), np.array(errors), (f, g)


zero = jnp.zeros(n)
sk_steps, sk_time, sk_err, _ = trajectory(sinkhorn_segment, zero, zero, SINKHORN_CALLS)

# SNS = the first Sinkhorn segment (the warm-up, its point is shared), then Newton.
warm = sinkhorn_segment(C, zero, zero)
nt_steps, nt_time, nt_err, _ = trajectory(newton_step, *warm.value, max_calls=50)
sns_steps = np.concatenate([[SEGMENT], SEGMENT + nt_steps])
sns_time = np.concatenate([[sk_time[0]], sk_time[0] + nt_time])
sns_err = np.concatenate([[sk_err[0]], nt_err])

print(
    f"Sinkhorn: {sk_steps[-1]} steps in {sk_time[-1]:.2f} s, "
    f"marginal error {sk_err[-1]:.1e}"
)
print(
    f"SNS chain: {SEGMENT} + {nt_steps[-1]} steps in {sns_time[-1]:.2f} s, "
    f"marginal error {sns_err[-1]:.1e}"
)
print(
    f"SNS uninterrupted: {sol_sns.stats['sinkhorn_steps']} + "
    f"{sol_sns.stats['newton_steps']} steps in {time_sns:.2f} s, "
    f"marginal error {float(sol_sns.residual):.1e}"
)

# %% [markdown]
# Sinkhorn's error decreases linearly (a straight line against the iteration count on a
# log scale). Extrapolating its rate over the last half of the budget gives a rough idea
# of how far it still is from the tolerance. This is an *estimate*, not a run: measured
# separately (outside this notebook, on the same draw of $C$), Sinkhorn needed 7,942
# steps to reach $10^{-12}$ and 4,625 to reach $10^{-9}$. The paper's 56,199 steps are
# for its own random draw and a tolerance at machine accuracy.

# %%
half = len(sk_err) // 2
rate = np.polyfit(sk_steps[half:], np.log10(sk_err[half:]), 1)[0]  # decades per step
more = (np.log10(TOL) - np.log10(sk_err[-1])) / rate
per_step = (sk_time[-1] - sk_time[0]) / (sk_steps[-1] - sk_steps[0])
print(f"Sinkhorn rate: one decade per {-1 / rate:,.0f} steps")
print(
    f"estimated to reach {TOL:.0e}: about {sk_steps[-1] + more:,.0f} steps, "
    f"{(sk_steps[-1] + more) * per_step:,.0f} s"
)

# %%
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
for ax, sk_x, sns_x, star_x in (
    (ax0, sk_steps, sns_steps, int(sol_sns.num_steps)),
    (ax1, sk_time, sns_time, time_sns),
):
    ax.semilogy(sk_x, sk_err, "-", color="C0", label="Sinkhorn")
    ax.semilogy(
        sns_x, sns_err, "o-", color="C3", ms=4, label="SNS (20 Sinkhorn + Newton)"
    )
    ax.semilogy(
        [star_x],
        [float(sol_sns.residual)],
        "*",
        color="k",
        ms=12,
        label="SNS, one uninterrupted solve",
    )
    ax.axhline(TOL, color="gray", ls=":", lw=1)
    ax.set_ylabel(r"marginal error $\|P1 - a\|_1 + \|P^T 1 - b\|_1$")
    ax.legend()
ax0.set(
    xlabel="iterations (Sinkhorn or Newton steps)",
    xscale="log",
    title=r"random assignment, $n = 500$, $\eta = 1200$",
)
ax1.set(
    xlabel="wall-clock time [s] (jitted, warmed up)",
    xscale="log",
    title="error vs time",
)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Transporting one handwritten digit onto another
#
# The paper's second case transports one MNIST image onto another with the
# squared-Euclidean cost between pixel positions. MNIST cannot be downloaded here, so we
# take two $8 \times 8$ digits bundled with scikit-learn (`load_digits`), upsample them
# bilinearly to $28 \times 28$ (the MNIST size, $n = m = 784$) and normalise each to unit
# mass. The background pixels are **exactly zero**: the solvers take zero marginal entries
# out of the support (their rows and columns of the plan are zero). `grid_cost(28)` is
# the cost between the pixel centres of a $28 \times 28$ grid in the unit square, so a
# neighbouring pixel costs $1/28^2 \approx 1.3 \times 10^{-3} \approx 1.5\,\varepsilon$ at
# $\eta = 1200$.

# %%
SIDE = 28
digits = load_digits()


def digit_density(index):
    img = jnp.asarray(digits.images[index], jnp.float64)
    img = jnp.clip(jax.image.resize(img, (SIDE, SIDE), "bilinear"), 0)
    return (img / img.sum()).reshape(-1)


src_index = int(np.flatnonzero(digits.target == 3)[0])
dst_index = int(np.flatnonzero(digits.target == 8)[0])
a_img, b_img = digit_density(src_index), digit_density(dst_index)
C_img = grid_cost(SIDE)  # (784, 784), squared Euclidean
points = grid_points(SIDE)  # (784, 2): pixel centres, (row, column) in [0, 1]
zeros = (int((a_img == 0).sum()), int((b_img == 0).sum()))
print(f"cost matrix {C_img.shape}; zero pixels (source, target): {zeros}")

solve_digits = jax.jit(
    lambda C, a, b: sinkhorn_newton_sparse(C, a, b, epsilon=eps, tol=1e-10, throw=False)
)
sol_img, time_img = timed(solve_digits, C_img, a_img, b_img)
print(f"SNS: {summary(sol_img)}, wall {time_img:.2f} s")
assert sol_img.succeeded

# For comparison: plain Sinkhorn given 100 steps (compare the wall times).
solve_digits_sinkhorn = jax.jit(
    lambda C, a, b: sinkhorn(C, a, b, epsilon=eps, max_steps=100, throw=False)
)
sk_img, time_sk_img = timed(solve_digits_sinkhorn, C_img, a_img, b_img)
print(
    f"Sinkhorn, 100 steps: marginal error {float(sk_img.residual):.1e}, "
    f"wall {time_sk_img:.2f} s"
)

# %% [markdown]
# The plan moves mass between pixels; the **displacement interpolation** shows it in
# motion: every entry $P_{ij}$ is carried to $(1 - t) x_i + t y_j$ and spread back onto
# the grid (bilinearly), for $t$ from 0 (the source) to 1 (the target). (The pale
# streaks are where the map stretches the discrete source by more than a pixel.)

# %%
plan = np.asarray(sol_img.plan)
pts = np.asarray(points)  # (784, 2), (row, column)
a_np, b_np = np.asarray(a_img), np.asarray(b_img)


def interpolate(t):
    # Move each P_ij to (1 - t) x_i + t y_j; splat it bilinearly onto the grid.
    i, j = np.nonzero(plan > 1e-12)
    u = ((1 - t) * pts[i] + t * pts[j]) * SIDE - 0.5  # continuous pixel index
    lo = np.floor(u).astype(int)
    w = u - lo
    img = np.zeros((SIDE, SIDE))
    for dr in (0, 1):
        for dc in (0, 1):
            r, c = lo[:, 0] + dr, lo[:, 1] + dc
            weight = plan[i, j] * np.abs(1 - dr - w[:, 0]) * np.abs(1 - dc - w[:, 1])
            ok = (r >= 0) & (r < SIDE) & (c >= 0) & (c < SIDE)
            np.add.at(img, (r[ok], c[ok]), weight[ok])
    return img


times = [0, 0.25, 0.5, 0.75, 1]
fig, axes = plt.subplots(1, len(times), figsize=(14, 3))
for ax, t in zip(axes, times, strict=True):
    ax.imshow(interpolate(t), cmap="Purples")
    ax.set(title=f"t = {t}", xticks=[], yticks=[])
fig.suptitle(
    f"displacement interpolation, digit {digits.target[src_index]} -> "
    f"{digits.target[dst_index]}"
)
fig.tight_layout()
plt.show()

# %% [markdown]
# Left: the plan itself, restricted to the pixels with mass (rows: source pixels,
# columns: target pixels, both in row-major order; log colour scale, entries below
# $10^{-10}$ left white). A pixel sends its
# mass to a few nearby pixels, which in row-major order lie on a few bands. Right: the
# **barycentric map** $T(x_i) = \sum_j P_{ij} y_j / a_i$, the mean destination of the mass
# at source pixel $x_i$, as arrows from every other pixel of the source digit (blue) into
# the target digit (red).

# %%
rows, cols = a_np > 0, b_np > 0
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.8))
with np.errstate(divide="ignore"):
    log_plan = np.log10(plan[np.ix_(rows, cols)])
log_plan[log_plan < -10] = np.nan  # entries below 1e-10: white
im = ax0.imshow(log_plan, cmap="magma_r", aspect="auto", interpolation="nearest")
fig.colorbar(im, ax=ax0, label=r"$\log_{10} P_{ij}$")
ax0.set(xlabel="target pixel j (with mass)", ylabel="source pixel i (with mass)")
ax0.set_title(r"the plan $P$")

bary = plan @ pts / np.where(rows, a_np, 1)[:, None]  # T(x_i)
grid = np.indices((SIDE, SIDE)).reshape(2, -1).T  # (row, column) of each pixel
every_other = rows & (grid[:, 0] % 2 == 0) & (grid[:, 1] % 2 == 0)
src, dst = pts[every_other], bary[every_other]
extent = (0, 1, 1, 0)  # x = column, y = row, row 0 at the top
ax1.imshow(a_np.reshape(SIDE, SIDE), cmap="Blues", extent=extent, alpha=0.6)
ax1.imshow(b_np.reshape(SIDE, SIDE), cmap="Reds", extent=extent, alpha=0.4)
ax1.quiver(
    src[:, 1],
    src[:, 0],
    dst[:, 1] - src[:, 1],
    dst[:, 0] - src[:, 0],
    angles="xy",
    scale_units="xy",
    scale=1,
    width=0.004,
)
ax1.set(title="barycentric map $T(x_i)$", xticks=[], yticks=[])
fig.tight_layout()
plt.show()

# %% [markdown]
# ### A degenerate cost: L1 distances between pixels
#
# With the L1 (Manhattan) distance between pixel centres many destinations of a pixel
# cost the same, so a row of the plan spreads over many near ties: at $\eta = 1200$ the
# $k = 32$ largest entries of a row miss a few percent of its mass. Newton with that
# sparsified Hessian slows to a linear rate, and its Schur complement is so
# ill-conditioned that CG takes hundreds of steps per Newton step. At such steps the
# default `newton_solver="auto"` takes the **exact** Newton step instead (the dense
# Schur complement, factorised by Cholesky: $O(n m^2)$, cheap at $n = 784$);
# `newton_solver="cg"` keeps the paper's sparse steps. `stats["dropped_mass"]` is the
# fraction of the plan's mass the last sparse pattern missed.
#
# The L1 plan at this $\varepsilon$ is also nearly block diagonal: the Newton direction
# shifts whole weakly coupled blocks of pixels together, by orders of magnitude more
# than the line search's trust region allows (its linear model of $\exp$), and the
# trust region cuts each step to next to nothing. After
# two such steps SNS switches to **Newton epsilon scaling**: Newton stages at
# $32\varepsilon, 16\varepsilon, \dots, 2\varepsilon$ (each to $10^{-3}$) and then at
# $\varepsilon$, each started from the last; `stats["epsilon_levels"]` counts the
# levels. Both kinds of Newton step converge that way (before epsilon scaling,
# `"cg"` stopped at $2 \cdot 10^{-2}$ after 100 Newton steps and `"auto"` needed 73);
# the paper warms up with 700 Sinkhorn steps on this case, and the default 20 are
# enough.

# %%
C_l1 = grid_cost(SIDE, "l1")
for solver in ("cg", "auto"):
    solve_l1 = jax.jit(
        lambda C, a, b, solver=solver: sinkhorn_newton_sparse(
            C, a, b, epsilon=eps, tol=1e-9, newton_solver=solver, throw=False
        )
    )
    sol_l1, time_l1 = timed(solve_l1, C_l1, a_img, b_img)
    dropped = float(sol_l1.stats["dropped_mass"])
    levels = int(sol_l1.stats["epsilon_levels"])
    print(
        f"newton_solver={solver!r}: {summary(sol_l1)}, dropped mass {dropped:.1e}, "
        f"epsilon levels {levels}, wall {time_l1:.2f} s"
    )
assert sol_l1.succeeded

# %% [markdown]
# ## 4. Gradients
#
# The solvers are differentiable with respect to $C$, $a$, $b$ and $\varepsilon$ through
# their optimality condition $\nabla D(f, g) = 0$ (the implicit function theorem, with CG
# on the same Hessian as the Newton step), never by unrolling the iterations.
#
# For the regularised cost the answer is known in closed form. The cost equals the dual
# value at the optimum, $\mathrm{OT}_\varepsilon(C) = \max_{f,g} D(f, g; C)$, and by the
# envelope (Danskin) theorem its gradient is the partial derivative of $D$ at the
# maximiser:
#
# $$
# \frac{\partial\, \mathrm{OT}_\varepsilon}{\partial C} = P^\star .
# $$
#
# `jaxsolve` attaches this formula to `.cost` directly (no derivative solve for the cost;
# the plan and the potentials go through the implicit layer). We check `jax.grad` of
# `.cost` against `.plan` on two small point clouds:

# %%
kx, ky = jax.random.split(jax.random.PRNGKey(1))
x_small = jax.random.normal(kx, (100, 2))
y_small = jax.random.normal(ky, (120, 2)) + 1.0
C_small = sqeuclidean_cost(x_small, y_small)
eps_small = 0.05


def ot_cost(C):
    sol = sinkhorn_newton_sparse(C, epsilon=eps_small, tol=1e-12)
    return sol.cost, sol.plan  # differentiate the cost, return the plan too


(cost_small, plan_small), grad_C = jax.jit(jax.value_and_grad(ot_cost, has_aux=True))(
    C_small
)
print("max |d cost / dC - P|:", float(jnp.max(jnp.abs(grad_C - plan_small))))
print("max P:               ", float(jnp.max(plan_small)))
np.testing.assert_allclose(grad_C, plan_small, atol=1e-10)

# %% [markdown]
# ### Moving a point cloud onto a target
#
# The same gradient flows to anything that builds $C$. With $C_{ij} = \|x_i - y_j\|^2$,
# $\partial\,\mathrm{OT}_\varepsilon / \partial x_i = 2 \sum_j P^\star_{ij} (x_i - y_j)$.
# We move $150$ points $x$ (a Gaussian blob) towards a fixed target cloud $y$ (a ring) by
# minimising $\mathrm{OT}_\varepsilon(C(x))$ with Adam, one jitted `value_and_grad` per
# step. Each step solves an OT problem with SNS from scratch; JAX chains the envelope
# gradient $P^\star$ with the derivative of $C(x)$. (The regularised cost is not zero
# when the clouds coincide: it includes the entropy term,
# $\varepsilon \sum P \log P < 0$. The transport part $\langle C, P\rangle$ is
# reported alongside.)
#
# At $\varepsilon = 0.01$ this is where Newton pays off: measured separately (outside
# this notebook, 2-core CPU), the same loop with `sinkhorn` in place of SNS took minutes
# instead of seconds, and after about 50 Adam steps its solves hit the default cap of
# 10,000 Sinkhorn steps without reaching the tolerance.

# %%
n_points = 150
kx, kt, kr = jax.random.split(jax.random.PRNGKey(2), 3)
x0 = 0.3 * jax.random.normal(kx, (n_points, 2)) + jnp.array([-1.5, 0.5])
angle = jax.random.uniform(kt, (n_points,), maxval=2 * jnp.pi)
radius = 1 + 0.05 * jax.random.normal(kr, (n_points, 1))
target = radius * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)  # a ring
eps_train = 0.01
optimizer = optax.adam(0.05)


def loss(x):
    C = sqeuclidean_cost(x, target)
    sol = sinkhorn_newton_sparse(C, epsilon=eps_train, tol=1e-9)
    return sol.cost, jnp.vdot(C, sol.plan)


@jax.jit
def train_step(x, state):
    (value, transport), grad = jax.value_and_grad(loss, has_aux=True)(x)
    updates, state = optimizer.update(grad, state, x)
    return optax.apply_updates(x, updates), state, value, transport


x, state = x0, optimizer.init(x0)
history = []
start = time.perf_counter()
for _ in range(100):
    x, state, value, transport = train_step(x, state)
    history.append((float(value), float(transport)))
history = np.array(history)
print(f"100 steps in {time.perf_counter() - start:.1f} s (including compilation)")
print(f"OT cost: {history[0, 0]:.4f} -> {history[-1, 0]:.4f}")
print(f"<C, P>:  {history[0, 1]:.4f} -> {history[-1, 1]:.4f}")
assert history[-1, 1] < 0.05 * history[0, 1]

# %%
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
ax0.scatter(*np.asarray(target).T, s=10, c="C3", label="target $y$")
ax0.scatter(*np.asarray(x0).T, s=10, c="C0", alpha=0.4, label="start $x_0$")
ax0.scatter(*np.asarray(x).T, s=10, c="C0", marker="x", label="after 100 Adam steps")
ax0.set(aspect="equal", title="point clouds")
ax0.legend(loc="lower left", fontsize=8)
ax1.plot(history[:, 0], label=r"$\mathrm{OT}_\varepsilon$ (the loss)")
ax1.plot(history[:, 1], label=r"$\langle C, P^\star\rangle$")
ax1.axhline(0, color="gray", lw=0.8)
ax1.set(xlabel="Adam step", title=rf"loss, $\varepsilon = {eps_train}$")
ax1.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 5. Point clouds without the cost matrix, and batches
#
# A `PointCloud` stands in for `C`: the solvers then only ever reduce the plan
# block by block (rows of `C` recomputed from the points), so memory is
# `O(block_size m + (n + m) k)` instead of `O(n m)`, and the plan comes back as a
# `SparsePlan` (the largest entries of each row) when the dense one would be large.
# On a size where the dense matrix still fits, the two give the same solve.

# %%
rng = np.random.default_rng(3)
n_pts = 2000
xs = jnp.asarray(rng.uniform(size=(n_pts, 2)))
ys = jnp.asarray(rng.normal(0.5, 0.15, size=(n_pts, 2)))
eps_pc = 1e-2
cloud = jaxsolve.PointCloud(xs, ys, cost="sqeuclidean", plan="sparse", plan_k=16)
online = jax.jit(lambda g: sinkhorn_newton_sparse(g, epsilon=eps_pc, k=64, tol=1e-8))
dense = jax.jit(lambda C: sinkhorn_newton_sparse(C, epsilon=eps_pc, k=64, tol=1e-8))
sol_pc, t_pc = timed(online, cloud)
sol_dense, t_dense = timed(dense, sqeuclidean_cost(xs, ys))
print(f"point cloud: {summary(sol_pc)}, {t_pc:.2f} s")
print(f"dense C:     {summary(sol_dense)}, {t_dense:.2f} s")
gap = max(
    float(jnp.max(jnp.abs(u - v)))
    for u, v in zip(sol_pc.value, sol_dense.value, strict=True)
)
print(f"largest potential difference: {gap:.1e}")
for name, sol in (("point cloud", sol_pc), ("dense C", sol_dense)):
    steps = {key: int(sol.stats[key]) for key in ("sinkhorn_steps", "newton_steps")}
    print(f"{name}: {steps}, pattern selections {int(sol.stats['pattern_selections'])}")
print(
    f"sparse plan: indices {sol_pc.plan.indices.shape}, holding "
    f"{float(sol_pc.plan.values.sum()):.4f} of the mass with 16 entries per row"
)

# %% [markdown]
# The online solve takes the same steps as the dense one, to rounding. From 2048 x
# 2048 points on, a float64 cloud's Sinkhorn warm-up runs in float32 instead
# (`warmup_dtype`: three times cheaper a pass on CPU, where each pass recomputes the
# costs), and Newton, in float64, corrects its rounding; the paths then differ
# slightly, the solutions do not. The sparsity pattern is selected once and kept while it holds
# the plan's mass. The online form is meant for sizes where `C` does not fit: at
# $n = m = 20{,}000$ the dense `C` alone is 3.2 GB, and SNS solves the 2-D clouds
# of `benchmarks/ot.py` at $\varepsilon = 10^{-3}$ of the largest cost to
# $10^{-8}$ in under a minute on one core, in 1.9 GB. The sparse plan keeps only the largest entries of each row:
# at this epsilon a row spreads over many points, so 16 entries hold only part of
# the mass (printed above); raise `plan_k`, or ask for `plan="dense"` where it fits.
#
# A minibatch of problems, as in training code, is one `jax.vmap`. With
# `throw=False` each element gets its own result code: here element 1 has a NaN in
# its cost, and the others are solved as if it were not there.

# %%
batch_C = jnp.stack(
    [
        sqeuclidean_cost(
            jnp.asarray(rng.uniform(size=(100, 2))),
            jnp.asarray(rng.normal(0.5, 0.15, size=(100, 2))),
        )
        for _ in range(8)
    ]
)
batch_C = batch_C.at[1, 0, 0].set(jnp.nan)
batched = jax.jit(
    jax.vmap(lambda C: sinkhorn_newton_sparse(C, epsilon=1e-2, throw=False))
)
sols, t_batch = timed(batched, batch_C)
print(f"batch of 8 in {t_batch:.3f} s")
nonfinite = sols.result == jaxsolve.RESULTS.nonfinite_input
for i in range(8):
    code = "succeeded" if sols.succeeded[i] else "failed"
    code += ", nonfinite_input" if nonfinite[i] else ""
    print(f"element {i}: {code}, marginal error {float(sols.residual[i]):.1e}")

# %% [markdown]
# ### Compile time
#
# A first call's time is mostly XLA compiling the solver: a few seconds on a CPU,
# more than the solve itself at these sizes (the wall times above exclude it). Where
# a solve is compiled once and run a few times, as in this notebook or a script, two
# XLA CPU options passed to the outermost `jit` compile faster and run slower: XLA's
# older elemental emitters in place of its MLIR fusion emitters
# (`xla_cpu_use_fusion_emitters=False`) and backend optimisation level 0. Together
# they compile SNS in 0.2 to 0.3 of the default's time in `benchmarks/ot_compile.py`
# and run it 1.4 to 6.4 times slower (printed below for this size); in a training
# loop, which calls the same compiled solve many times, keep the defaults.

# %%
C_compile = jnp.asarray(np.random.default_rng(5).uniform(size=(300, 280)))


def sns_cost(C):
    return sinkhorn_newton_sparse(C, epsilon=1 / 1200).cost


def compile_then_run(**compiler_options):
    """Seconds to compile a jitted SNS solve, and to run it once compiled."""
    lowered = jax.jit(sns_cost).lower(C_compile)
    start = time.perf_counter()
    compiled = lowered.compile(compiler_options=compiler_options or None)
    t_compile = time.perf_counter() - start
    jax.block_until_ready(compiled(C_compile))
    start = time.perf_counter()
    jax.block_until_ready(compiled(C_compile))
    return t_compile, time.perf_counter() - start


older_emitters = {"xla_cpu_use_fusion_emitters": False}
level_0 = {"xla_backend_optimization_level": 0}
for label, options in (
    ("default", {}),
    ("older emitters", older_emitters),
    ("level 0", level_0),
    ("both", {**older_emitters, **level_0}),
):
    t_compile, t_run = compile_then_run(**options)
    print(f"{label:14s} compile {t_compile:5.2f} s, run {1e3 * t_run:6.1f} ms")

# %% [markdown]
# ## 6. Summary
#
# * On the paper's random-assignment case ($n = 500$, $\eta = 1200$) SNS reaches a
#   marginal error of $10^{-12}$ after its 20 Sinkhorn warm-up steps and a handful of
#   sparse Newton steps, in a fraction of a second; Sinkhorn, after 1000 steps and
#   many times that wall time, is still orders of magnitude away, and its linear rate
#   puts the tolerance thousands of steps further (the numbers printed above; the
#   paper, on its own random draw, reports 56,199 Sinkhorn steps to machine accuracy).
#   Close to the solution each Newton step roughly squares the error.
# * On two upsampled digits ($28 \times 28$, squared-Euclidean grid cost, zero background
#   pixels) SNS converges after a few dozen steps in all, while Sinkhorn given 100
#   steps, in a comparable wall time, is still far from the tolerance. With the L1
#   grid cost (many near ties in each row, and a nearly block-diagonal plan) the
#   sparsified Hessian misses a few percent of the plan's mass and the direct Newton
#   solve stalls; SNS then switches to Newton epsilon scaling and converges, with the
#   paper's sparse steps or (the default `newton_solver="auto"` where the sparse
#   pattern misses mass) exact, dense ones.
# * Both solvers are differentiable through their optimality condition:
#   $\partial\,\mathrm{OT}_\varepsilon / \partial C = P^\star$ holds to rounding, and a
#   jitted optax loop moves a point cloud onto a target by differentiating through SNS.
# * Called eagerly (outside `jax.jit`, as some cells here do), a solver compiles the
#   call as one program, once per shapes and options: a second call with new values
#   of the same shapes runs without compiling, as does an eager `jax.grad` or
#   `jax.vmap` of a solve; pass `epsilon` as an array to reuse the compilation
#   across values.
# * A first call spends seconds compiling. For a solve compiled once and run a few
#   times, `compiler_options={"xla_cpu_use_fusion_emitters": False,
#   "xla_backend_optimization_level": 0}` trades run time for compile time (the
#   rows printed above); a training loop should keep the defaults.
#
# The wall times above are from the machine that executed this notebook (jitted,
# compilation excluded); they are indicative only.
