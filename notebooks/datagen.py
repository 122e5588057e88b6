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
# # Data generation for neural operators
#
# A neural operator learns the map from a PDE's parameter field to its solution
# from many `(parameter, solution)` pairs. `python -m jaxsolve.datagen` produces
# them with sorted Krylov recycling (SKR, Wang et al., ICLR 2024): the systems are
# split into groups along a space-filling curve, each group is sorted greedily
# and solved by GCRO-DR carrying its recycle space from system to system (one
# group per device), every residual is checked, and each group is written as one
# checksummed shard. Rerunning the command resumes an interrupted run.
#
# Here: 64 Darcy systems ($-\nabla\cdot(a\nabla u) = 1$, $a \in \{3, 12\}$) on a
# 32x32 grid, in shards of 16, then read back and plotted.

# %%
# %matplotlib inline
import os
import subprocess
import sys
import tempfile

import matplotlib.pyplot as plt

import jaxsolve.datagen

folder = os.path.join(tempfile.mkdtemp(), "darcy32")
command = [sys.executable, "-m", "jaxsolve.datagen", "darcy", "--systems", "64"]
command += ["--grid", "32", "--shard-size", "16", "--out", folder, "--no-progress"]
print(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
print(sorted(os.listdir(folder)))

# %% [markdown]
# The same command again finds every shard finished (its sha256 matches the
# manifest) and computes nothing:

# %%
print(subprocess.run(command, capture_output=True, text=True, check=True).stdout)

# %% [markdown]
# ## Reading it back
#
# `jaxsolve.datagen.load` returns NumPy arrays in the original system order
# (system `i` is the `i`-th field the generator drew, whichever shard solved it),
# with per-system checks: `ok` (solver succeeded and the recomputed relative
# residual is within the run's tolerance), the residuals, the products with $A$.

# %%
data = jaxsolve.datagen.load(folder)
print({key: value.shape for key, value in data.items()})
print(
    f"all ok: {data['ok'].all()}, max residual {data['residuals'].max():.1e}, "
    f"matvecs per system {data['matvecs'].mean():.0f}"
)

# %% [markdown]
# Products with $A$ per system, in each shard's solve order: the first system of a
# shard is solved cold, the later ones start from a recycle space built on their
# neighbours:

# %%
# A shard stores its systems in solve order; iter_shards streams them one by one.
shards = [shard["matvecs"] for shard in jaxsolve.datagen.iter_shards(folder)]
fig, ax = plt.subplots(figsize=(6, 3))
for s, mv in enumerate(shards):
    ax.plot(mv, marker="o", ms=3, label=f"shard {s}")
ax.set_xlabel("position in the shard's solve order")
ax.set_ylabel("products with A")
ax.legend()
plt.show()

# %% [markdown]
# ## A few pairs
#
# Coefficient field (input) above, solution (target) below.

# %%
fig, axes = plt.subplots(2, 4, figsize=(10, 5))
for j, i in enumerate([0, 1, 2, 3]):
    axes[0, j].imshow(data["params"][i], cmap="viridis")
    axes[0, j].set_title(f"a, system {i}")
    axes[1, j].imshow(data["solutions"][i], cmap="magma")
    axes[1, j].set_title(f"u, system {i}")
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
plt.tight_layout()
plt.show()
