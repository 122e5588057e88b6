"""Splitting a family of systems into independent groups (the shards).

SKR's recipe for many systems (Wang et al., ICLR 2024, Sec. 4): reduce each
parameter field to a few numbers, order the systems along a space-filling curve
through that reduced space, cut the curve into consecutive pieces, and sort and
solve each piece on its own. Neighbours on a Hilbert curve are neighbours in the
reduced space, so each piece holds similar systems (good recycling), and the
pieces are independent (they run in parallel, one device each).

Everything here is NumPy on the host and depends only on the parameters and the
shard size, never on the number of devices or processes: the same command gives
the same groups, hence the same data, on one device or many.
"""

from __future__ import annotations

import numpy as np

__all__ = ["reduced_features", "hilbert_index", "split_groups", "group_sizes"]

# Cosine modes per axis kept in the reduced features, and the curve's dimension
# and resolution (3 x 16 bits: a 48-bit index fits int64 with room to spare).
_MODES = 4
_CURVE_DIM = 3
_CURVE_BITS = 16


def reduced_features(params: np.ndarray, modes: int = _MODES) -> np.ndarray:
    r"""The low-frequency content of each field: ``(S, n, n) -> (S, modes^2)``.

    ``c_kl = sum_ij p_ij cos(pi k x_i) cos(pi l y_j) / n^2`` for ``k, l < modes``
    (the cosine modes the families' random fields are built from), so two
    fields with the same large-scale layout get nearby features.
    """
    params = np.asarray(params, np.float64)
    num, n = params.shape[0], params.shape[-1]
    x = np.arange(1, n + 1) / (n + 1)
    phi = np.cos(np.pi * np.outer(x, np.arange(modes)))  # (n, modes)
    coef = np.einsum("ik,sij,jl->skl", phi, params.reshape(num, n, n), phi)
    return coef.reshape(num, -1) / n**2


def _principal_coordinates(features: np.ndarray, dim: int) -> np.ndarray:
    """``(S, F) -> (S, dim)``: the features' coordinates on their ``dim`` leading
    principal axes, each axis's sign fixed (largest entry positive) so that the
    result is reproducible (an SVD's signs are arbitrary)."""
    centred = features - features.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    vt = vt[:dim]
    signs = np.sign(vt[np.arange(vt.shape[0]), np.argmax(np.abs(vt), axis=1)])
    coords = centred @ (vt * signs[:, None]).T
    if coords.shape[1] < dim:  # fewer systems or features than dimensions
        pad = np.zeros((coords.shape[0], dim - coords.shape[1]))
        coords = np.concatenate([coords, pad], axis=1)
    return coords


def hilbert_index(coords: np.ndarray, bits: int) -> np.ndarray:
    r"""Position along the ``d``-dimensional Hilbert curve of integer points.

    Args:
        coords: ``(S, d)`` non-negative integers below ``2^bits``.
        bits: resolution per axis; ``d * bits <= 63``.

    Returns:
        ``(S,)`` int64: consecutive values are neighbouring cells of the
        ``2^bits``-a-side grid. J. Skilling's transpose form ("Programming the
        Hilbert curve", AIP Conf. Proc. 707, 2004), vectorised over the points.
    """
    x = np.array(coords, dtype=np.uint64)
    num, dim = x.shape
    if dim * bits > 63:
        raise ValueError(f"a {dim}-D curve holds at most {63 // dim} bits per axis")
    top = np.uint64(1) << np.uint64(bits - 1)
    one = np.uint64(1)
    # Undo the curve's rotations and reflections, coarsest bit first.
    q = top
    while q > one:
        low = q - one
        for i in range(dim):
            hit = (x[:, i] & q) != 0
            x[:, 0] = np.where(hit, x[:, 0] ^ low, x[:, 0])
            swap = np.where(hit, np.uint64(0), (x[:, 0] ^ x[:, i]) & low)
            x[:, 0] ^= swap
            x[:, i] ^= swap
        q >>= one
    # Gray-code the transposed index.
    for i in range(1, dim):
        x[:, i] ^= x[:, i - 1]
    flip = np.zeros(num, np.uint64)
    q = top
    while q > one:
        flip = np.where((x[:, dim - 1] & q) != 0, flip ^ (q - one), flip)
        q >>= one
    x ^= flip[:, None]
    # Interleave: the index's bits, most significant first, are bit b of every axis.
    index = np.zeros(num, np.uint64)
    for b in range(bits - 1, -1, -1):
        for i in range(dim):
            index = (index << one) | ((x[:, i] >> np.uint64(b)) & one)
    return index.astype(np.int64)


def group_sizes(num: int, shard_size: int) -> list[int]:
    """Sizes of the ``ceil(num / shard_size)`` groups, as equal as possible (they
    differ by at most one, so padding the smaller ones costs at most one solve)."""
    count = -(-num // shard_size)
    base, extra = divmod(num, count)
    return [base + 1] * extra + [base] * (count - extra)


def split_groups(params: np.ndarray, shard_size: int) -> list[np.ndarray]:
    """The systems' indices, cut into groups of at most ``shard_size``
    consecutive systems along a Hilbert curve through the reduced features.

    ``params``: ``(S, n, n)``. Returns a list of int64 index arrays (the curve's
    order within each group; the solve order inside a group is set later by
    the greedy sort). Ties on the curve keep the original order.
    """
    num = params.shape[0]
    coords = _principal_coordinates(reduced_features(params), _CURVE_DIM)
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    cells = np.floor((coords - lo) / span * (2**_CURVE_BITS - 1) + 0.5)
    keys = hilbert_index(cells.astype(np.int64), _CURVE_BITS)
    order = np.argsort(keys, kind="stable")
    bounds = np.cumsum([0, *group_sizes(num, shard_size)])
    return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
