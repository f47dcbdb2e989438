"""numpy kernels behind RouteSet and FenceSet: nearest points on runs of segments.

Coordinates reach these kernels in degrees relative to a route's reference vertex, with each
vertex's east-west scale kx (metres per degree of longitude at its latitude). A fix at (px, py)
measures a vertex v as ``x = (lon_v - px) * (kx_v + kx_p) / 2``, ``y = (lat_v - py) * ky_p``:
the ellipsoid's local radii at the mean latitude of fix and vertex, which keeps the error at a
few parts per million near the fix and below 0.1 % hundreds of km away (docs/geometry.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

F32 = np.float32
_TINY = F32(1e-30)
_BLOCK_ELEMENTS = 24_000


def point_segment(
    ax: NDArray[np.floating[Any]],
    ay: NDArray[np.floating[Any]],
    bx: NDArray[np.floating[Any]],
    by: NDArray[np.floating[Any]],
) -> tuple[NDArray[np.floating[Any]], NDArray[np.floating[Any]]]:
    """Squared distance from the origin to segments a->b, and the projection parameter t."""
    dx = bx - ax
    dy = by - ay
    den = dx * dx
    den += dy * dy
    # A zero-length segment (repeated vertex) has num = 0 too: t = 0, its vertex's distance.
    den += _TINY
    t = ax * dx
    t += ay * dy
    np.negative(t, out=t)
    t /= den
    np.clip(t, 0, 1, out=t)
    dx *= t
    dx += ax
    dy *= t
    dy += ay
    dx *= dx
    dy *= dy
    dx += dy
    return dx, t


def nearest_on_runs(
    vtx: NDArray[np.float32],
    start: NDArray[np.int64],
    nseg: int,
    px: NDArray[np.float32],
    py: NDArray[np.float32],
    kxp: NDArray[np.float32],
    kyp: NDArray[np.float32],
) -> tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.float32]]:
    """For each fix k, the nearest of the ``nseg`` segments from vertex ``start[k]`` on.

    ``vtx`` is the (V, 3) float32 vertex table (dlon, dlat, kx). Returns the squared distance
    in m², the index of the segment within the run, and the projection parameter on it.
    """
    m = start.shape[0]
    d2_out = np.empty(m, F32)
    j_out = np.empty(m, np.int64)
    t_out = np.empty(m, F32)
    # One gather of a contiguous block per fix (rows of 3 floats), not one per column.
    blocks = sliding_window_view(vtx.reshape(-1), 3 * (nseg + 1))[::3]
    # Blocks of fixes small enough that the temporaries stay in cache (3x faster than whole).
    step = max(1, _BLOCK_ELEMENTS // (nseg + 1))
    for a in range(0, m, step):
        b = slice(a, min(a + step, m))
        k = b.stop - a
        planes = blocks[start[b]].reshape(k, nseg + 1, 3).transpose(2, 0, 1).copy()
        x, y, scale = planes[0], planes[1], planes[2]
        x -= px[b, None]
        scale += kxp[b, None]
        scale *= F32(0.5)
        x *= scale
        y -= py[b, None]
        y *= kyp[b, None]
        d2, t = point_segment(x[:, :-1], y[:, :-1], x[:, 1:], y[:, 1:])
        j = np.argmin(d2, axis=1)
        rows = np.arange(k)
        d2_out[b] = d2[rows, j]
        j_out[b] = j
        t_out[b] = t[rows, j]
    return d2_out, j_out, t_out


def ragged_arange(counts: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(owner, position) for runs of ``counts``: owner k repeated counts[k] times, 0.. each."""
    counts = np.asarray(counts, dtype=np.int64)
    owner = np.repeat(np.arange(counts.shape[0]), counts)
    starts = np.cumsum(counts) - counts
    pos = np.arange(owner.shape[0], dtype=np.int64) - np.repeat(starts, counts)
    return owner, pos


def group_argmin(
    values: NDArray[Any], owner: NDArray[np.int64]
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Per run of equal ``owner`` (sorted, contiguous): (owner, index of its smallest value)."""
    if owner.shape[0] == 0:
        return owner, owner
    head = np.ones(owner.shape[0], dtype=bool)
    head[1:] = owner[1:] != owner[:-1]
    starts = np.flatnonzero(head)
    mins = np.minimum.reduceat(values, starts)
    counts = np.diff(np.append(starts, owner.shape[0]))
    hit = np.flatnonzero(values <= np.repeat(mins, counts))
    first = np.ones(hit.shape[0], dtype=bool)
    first[1:] = owner[hit[1:]] != owner[hit[:-1]]
    return owner[starts], hit[first]
