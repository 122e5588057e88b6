r"""The DCDM network: a fully convolutional map ``r -> q ~ A^{-1} r`` (up to scale).

After Kaneda et al., "A Deep Conjugate Direction Method for Iteratively Solving
Linear Systems" (ICML 2023, arXiv 2205.10763): 3x3 (3x3x3 in 3-D) "same"
convolutions with ReLU in residual pairs, 2x average pooling to a coarser level,
nearest-neighbour upsampling added to the skip connection, and a final linear 1x1
convolution to one channel.

One change from the paper, for size independence: the paper's network has a fixed
number of levels (one coarse level), so its receptive field is fixed in cells and a
model trained at one size sees a different spectrum at another. Here the coarse
levels **share their weights** and recurse like a multigrid V-cycle down to a
coarsest grid of at most ``coarsest`` cells a side, so the number of levels grows
with the grid (``log2 N``) and the same weights apply at every size: a model trained
at 64^2 is a V-cycle of the same form at 256^2. A learned gain per level multiplies
the coarse correction (the inverse Laplacian amplifies a mode coarsened once by
about ``2^dim``). The convolutions have no bias, so ``f(c r) = c f(r)`` for ``c >
0`` (the network's answer does not depend on the residual's scale). Odd sizes are
zero-padded by one cell before pooling and cropped after upsampling (zero is the
Dirichlet value outside the domain), so every grid with at least 2 cells a side is
taken.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, PRNGKeyArray

__all__ = ["DCDMNet"]

_RELU_GAIN = math.sqrt(2.0)  # He initialisation for ReLU layers


class _Conv(eqx.Module):
    weight: Array  # (out, in, k, k[, k]), float32; no bias (homogeneity)

    def __call__(self, x: Array) -> Array:
        w = self.weight.astype(x.dtype)
        return lax.conv_general_dilated(
            x[None], w, (1,) * (x.ndim - 1), "SAME", precision=lax.Precision.HIGHEST
        )[0]


def _conv(key, out_c, in_c, dim, size=3, gain=_RELU_GAIN) -> _Conv:
    fan_in = in_c * size**dim
    w = jax.random.normal(key, (out_c, in_c) + (size,) * dim, jnp.float32)
    return _Conv(w * (gain / math.sqrt(fan_in)))


class _Pair(eqx.Module):
    """``h + relu(conv_b(relu(conv_a(h))))``: a residual pair of convolutions."""

    a: _Conv
    b: _Conv

    def __call__(self, h):
        return h + jax.nn.relu(self.b(jax.nn.relu(self.a(h))))


def _pool(h):
    """2x average pooling of ``(C, *spatial)``; odd sizes are zero-padded first."""
    c, *s = h.shape
    h = jnp.pad(h, [(0, 0)] + [(0, n % 2) for n in s])
    shape = [c]
    for n in h.shape[1:]:
        shape += [n // 2, 2]
    return h.reshape(shape).mean(axis=tuple(range(2, 2 * len(s) + 1, 2)))


def _upsample(h, shape):
    for axis in range(1, h.ndim):
        h = jnp.repeat(h, 2, axis=axis)
    return h[(slice(None),) + tuple(slice(0, n) for n in shape)]


class DCDMNet(eqx.Module):
    r"""``f: (N1, N2) -> (N1, N2)`` (or 3-D), the network that proposes DCDM's
    search directions. Parameters are stored in float32 and cast to the input's
    dtype.

    Args:
        dim: 2 or 3 (spatial dimensions).
        width: channels of the hidden convolutions (the paper: 16).
        coarsest: recursion stops at a grid of at most this many cells a side.
        key: PRNG key for the initialisation.

    Call ``net(r)`` with ``r`` of shape ``(N1, ..., N_dim)``, all ``N_i >= 2``.
    """

    dim: int = eqx.field(static=True)
    width: int = eqx.field(static=True)
    coarsest: int = eqx.field(static=True)
    inp: _Conv
    down: _Pair
    bottom: _Pair
    up: _Pair
    coarse_gain: Array
    out: _Conv

    def __init__(
        self, dim: int = 2, width: int = 16, coarsest: int = 4, *, key: PRNGKeyArray
    ):
        if dim not in (2, 3):
            raise ValueError(f"`dim` must be 2 or 3, got {dim}")
        if width < 1 or coarsest < 2:
            raise ValueError(
                f"need width >= 1 and coarsest >= 2, got {width}, {coarsest}"
            )
        self.dim, self.width, self.coarsest = dim, width, coarsest
        k = jax.random.split(key, 8)

        def pair(k1, k2):
            # the second convolution starts small: every pair starts near the
            # identity (stable training of the residual stack)
            return _Pair(
                _conv(k1, width, width, dim), _conv(k2, width, width, dim, gain=0.1)
            )

        self.inp = _conv(k[0], width, 1, dim)
        self.down = pair(k[1], k[2])
        self.bottom = pair(k[3], k[4])
        self.up = pair(k[5], k[6])
        self.coarse_gain = jnp.asarray(1.0, jnp.float32)
        self.out = _conv(k[7], 1, width, dim, size=1, gain=1.0)

    def config(self) -> dict:
        return {"dim": self.dim, "width": self.width, "coarsest": self.coarsest}

    def check_grid(self, shape: tuple, name: str = "b") -> None:
        """Raise a ``ValueError`` naming ``name`` if the network cannot take a grid
        of this shape (wrong number of axes, or fewer than 2 cells a side)."""
        if len(shape) != self.dim:
            raise ValueError(
                f"`{name}` must be a {self.dim}-D grid for this {self.dim}-D DCDM "
                f"model, got shape {shape}"
            )
        if min(shape) < 2:
            raise ValueError(
                f"`{name}` must have at least 2 cells along every axis, got {shape}"
            )

    def levels(self, shape: tuple) -> int:
        """The number of coarse levels the network uses on a grid of ``shape``."""
        levels, n = 0, max(shape)
        while n > self.coarsest:
            n = -(-n // 2)
            levels += 1
        return levels

    def _cycle(self, h, level):
        if level == 0:
            return self.bottom(h)
        h = self.down(h)
        coarse = self._cycle(_pool(h), level - 1)
        gain = self.coarse_gain.astype(h.dtype)
        return self.up(h + gain * _upsample(coarse, h.shape[1:]))

    def __call__(self, r: Array) -> Array:
        self.check_grid(r.shape, "r")
        h = jax.nn.relu(self.inp(r[None]))
        h = self._cycle(h, self.levels(r.shape))
        return self.out(h)[0]
