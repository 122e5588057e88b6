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
# # The Deep Conjugate Direction Method (DCDM)
#
# Kaneda et al. (ICML 2023) solve the pressure-Poisson systems of fluid simulation,
# `A x = b` with `A` sparse SPD, by a conjugate-direction iteration whose search
# directions come from a convolutional network `f ~ A^{-1}` applied to the residual:
#
# ```
# q = f(r / |r|);  q -= sum_{j in last 16} (q.A p_j)/(p_j.A p_j) p_j
# alpha = q.r / q.A q;  x += alpha q;  r -= alpha A q
# ```
#
# jaxsolve ships a 2-D network trained (unsupervised, on the obstacle-free 64x64
# Laplacian only) with `python -m jaxsolve.train_dcdm`. Here it solves systems with
# obstacles it never saw, at sizes it was not trained at.

# %%
# %matplotlib inline
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import scipy.sparse.linalg as spla

import jaxsolve
from jaxsolve.problems import obstacle_layout, obstacle_rhs, poisson_obstacles
from jaxsolve.solvers.linear._dcdm import default_model

model = default_model(2)
print(model.config(), "parameters:", sum(x.size for x in jax.tree.leaves(model)))

# %% [markdown]
# ## A problem with obstacles
#
# `poisson_obstacles(solid)` is `A = G^T G` on the fluid cells (no flux through the
# solids, `p = 0` outside the domain), identity rows on the solid cells; the
# right-hand side is the divergence of a random smooth velocity field.

# %%
n = 64
solid = obstacle_layout(n, "blobs", seed=31)
a = poisson_obstacles(solid)
b = obstacle_rhs(solid, seed=4)
fig, ax = plt.subplots(1, 2, figsize=(8, 3.6))
ax[0].imshow(solid, cmap="gray_r")
ax[0].set_title("solid cells")
lim = float(jnp.max(jnp.abs(b)))
ax[1].imshow(np.where(solid, np.nan, b), cmap="RdBu", vmin=-lim, vmax=lim)
ax[1].set_title("b (a divergence)")
for x in ax:
    x.axis("off")
plt.show()

# %% [markdown]
# ## Residual against iteration
#
# `jaxsolve.dcdm` runs the iteration in a jitted `lax.while_loop`. To draw its
# residual history we replay the same iteration in a few lines of eager JAX (the
# network jitted) and check that it takes as many steps as the solver; CG and
# Jacobi-PCG histories come from scipy's `cg` callback.

# %%
sol = jaxsolve.dcdm(a, b, rtol=1e-8)
print("dcdm:", int(sol.num_steps), "steps,", sol.stats)

net = jax.jit(lambda r: model(r))
fluid = a.fluid


def dcdm_history(a, b, tol, max_steps=500):
    x, r = jnp.zeros_like(b), b
    dirs = []  # (p, A p, p.A p) of the last 16 directions (the default depth)
    history = [1.0]
    for _ in range(max_steps):
        q = fluid * net(fluid * r / jnp.linalg.norm(r))
        for p, ap, pap in dirs:
            q = q - jnp.vdot(q, ap) / pap * p
        aq = a(q)
        qaq = jnp.vdot(q, aq)
        alpha = jnp.vdot(q, r) / qaq
        x, r = x + alpha * q, r - alpha * aq
        dirs = [(q, aq, qaq)] + dirs[:15]
        history.append(float(jnp.linalg.norm(r) / jnp.linalg.norm(b)))
        if history[-1] <= tol:
            break
    return history


def scipy_history(matrix, rhs, m=None, tol=1e-8):
    hist = [1.0]
    cb = lambda xk: hist.append(np.linalg.norm(rhs - matrix @ xk) / np.linalg.norm(rhs))  # noqa: E731
    spla.cg(matrix, rhs, rtol=tol, M=m, maxiter=2000, callback=cb)
    return hist


matrix = a.to_scipy()
rhs = np.asarray(b).ravel()
h_dcdm = dcdm_history(a, b, 1e-8)
h_cg = scipy_history(matrix, rhs)
h_jac = scipy_history(
    matrix, rhs, m=spla.LinearOperator(matrix.shape, lambda v: v / matrix.diagonal())
)
print(
    "replayed DCDM steps:",
    len(h_dcdm) - 1,
    "| CG:",
    len(h_cg) - 1,
    "| Jacobi-PCG:",
    len(h_jac) - 1,
)
plt.figure(figsize=(6, 4))
plt.semilogy(h_dcdm, label="DCDM")
plt.semilogy(h_cg, label="CG")
plt.semilogy(h_jac, label="Jacobi-PCG", ls="--")
plt.xlabel("iteration")
plt.ylabel("||b - A x|| / ||b||")
plt.title(f"{n}x{n}, blobs (unseen in training)")
plt.legend()
plt.show()

# %% [markdown]
# ## Iterations against grid size
#
# One model at every size (the network is a shared-weight V-cycle, one level more
# per doubling). CG's iterations grow like `N`; on these discs layouts DCDM's stay
# flat, as in the paper (on the benchmark's layouts they still vary, 14-30 from 64^2
# to 256^2: `benchmarks/dcdm.py`).

# %%
sizes = [32, 64, 128]
its = {"DCDM": [], "CG": []}
for m in sizes:
    s = obstacle_layout(m, "discs", seed=5)
    op, rhs_m = poisson_obstacles(s), obstacle_rhs(s, seed=6)
    its["DCDM"].append(int(jaxsolve.dcdm(op, rhs_m, rtol=1e-6).num_steps))
    its["CG"].append(
        len(scipy_history(op.to_scipy(), np.asarray(rhs_m).ravel(), tol=1e-6)) - 1
    )
print(its)
plt.figure(figsize=(5, 3.5))
for k, v in its.items():
    plt.plot(sizes, v, "o-", label=k)
plt.xscale("log", base=2)
plt.xlabel("N (grid N x N)")
plt.ylabel("iterations to 1e-6")
plt.legend()
plt.show()

# %% [markdown]
# ## The network's direction beside the residual
#
# After a few steps the residual is rough and concentrated along the obstacles; the
# network turns it into a smooth, global correction. It is only partly aligned with
# the exact `A^{-1} r` (the cosine in the A inner product is printed below): the
# line search and the A-orthogonalisation against the last 16 directions make up
# the rest, step after step.

# %%
x3 = jaxsolve.dcdm(a, b, max_steps=3, throw=False).value
r3 = b - a(x3)
q = fluid * net(fluid * r3 / jnp.linalg.norm(r3))
exact = spla.spsolve(matrix.tocsc(), np.asarray(r3).ravel()).reshape(n, n)
cos = float(
    jnp.vdot(q, a(jnp.asarray(exact)))
    / jnp.sqrt(jnp.vdot(q, a(q)) * jnp.vdot(exact, a(jnp.asarray(exact))))
)
fig, ax = plt.subplots(1, 3, figsize=(11, 3.6))
for axis, field, title in zip(
    ax,
    [r3, q, exact],
    ["residual r (step 3)", "network f(r)", "exact A^{-1} r"],
    strict=True,
):
    lim = float(np.max(np.abs(field)))  # centred colour scale: white is 0
    axis.imshow(np.where(solid, np.nan, field), cmap="RdBu", vmin=-lim, vmax=lim)
    axis.set_title(title)
    axis.axis("off")
plt.show()
# the sign of f(r) is irrelevant (the line search picks it): compare |cos|
print(f"|A-inner-product cosine| between f(r) and A^-1 r: {abs(cos):.3f}")
