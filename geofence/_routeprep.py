"""Turning one route line into the arena's vertex block and chunk table (see routes.py).

The chunk table of a route holds the leading pad chunk, the real chunks, the trailing pad
chunk, then one row per block of BLOCK real chunks; each row is a float32 bounding box in
degrees relative to the route's first vertex, the smallest metres per degree over it, and
(chunks only) the clearance.
"""

from __future__ import annotations

import numpy as np
import shapely
from numpy.typing import NDArray

from geofence._kernel import F32
from geofence.distance import distance_m, metres_per_degree, wrap_lon
from geofence.errors import GeometryError

CHUNK = 8
"""Segments per chunk; the window is three chunks (24 segments)."""
BLOCK = 16
"""Chunks per block: the whole-line search looks at blocks first, then at their chunks."""
CLEARANCE_CAP_M = 300.0
"""Clearances are measured up to this; a window answer is accepted up to half of it."""
CLEARANCE_SAFETY = 0.999  # float32 bounding boxes and scale rounding
# Chunk table columns.
MINX, MAXX, MINY, MAXY, KXMIN, KYMIN, CLEAR = range(7)


def prepare(
    line: NDArray[np.float64], key: str
) -> tuple[NDArray[np.float32], NDArray[np.float64], NDArray[np.float32], NDArray[np.float64]]:
    """Padded vertex block, along-route metres, chunk table and reference of one route.

    The chunk table holds the leading pad chunk, the real chunks, the trailing pad chunk, then
    one row per block of BLOCK real chunks.
    """
    lon, lat = line[:, 0], line[:, 1]
    ref = line[0].copy()
    # Longitudes continue across the antimeridian instead of jumping by 360°.
    dlon = np.concatenate([[0.0], np.cumsum(wrap_lon(np.diff(lon)))])
    if dlon.min() < -180.0 or dlon.max() >= 180.0:
        raise GeometryError("route reaches more than 180° of longitude from its start", key=key)
    nseg = line.shape[0] - 1
    nchunk = -(-nseg // CHUNK)
    npad = (nchunk + 2) * CHUNK + 1
    src = np.clip(np.arange(npad) - CHUNK, 0, nseg)  # pads repeat the end vertices
    kx, _ = metres_per_degree(lat)
    vtx = np.column_stack([dlon[src], (lat - ref[1])[src], kx[src]]).astype(F32)
    steps = distance_m(lon[:-1], lat[:-1], lon[1:], lat[1:])
    cum = np.concatenate([[0.0], np.cumsum(steps)])[src]
    # Chunk k spans padded vertices k*CHUNK .. (k+1)*CHUNK.
    spans = np.arange(nchunk + 2)[:, None] * CHUNK + np.arange(CHUNK + 1)
    x = vtx[spans, 0].astype(np.float64)
    y = vtx[spans, 1].astype(np.float64)
    minx, maxx, miny, maxy = x.min(1), x.max(1), y.min(1), y.max(1)
    lat_lo, lat_hi = ref[1] + miny, ref[1] + maxy
    # kx falls with |lat|: its minimum is at the edge farthest from the equator; ky rises with
    # |lat|: its minimum is at the latitude nearest the equator (0 if the chunk straddles it).
    kx_lo = np.minimum(metres_per_degree(lat_lo)[0], metres_per_degree(lat_hi)[0])
    near_eq = np.where(lat_lo * lat_hi <= 0, 0.0, np.minimum(np.abs(lat_lo), np.abs(lat_hi)))
    ky_lo = metres_per_degree(near_eq)[1]
    chunks = np.zeros((nchunk + 2, 8), np.float64)
    chunks[:, MINX], chunks[:, MAXX] = minx, maxx
    chunks[:, MINY], chunks[:, MAXY] = miny, maxy
    chunks[:, KXMIN], chunks[:, KYMIN] = kx_lo * 0.99999, ky_lo * 0.99999
    chunks[1:-1, CLEAR] = clearance(chunks[1:-1], vtx, float(ref[1]))
    # Blocks of BLOCK real chunks: union of their boxes, smallest scales.
    starts = np.arange(1, nchunk + 1, BLOCK)
    blocks = np.zeros((starts.shape[0], 8), np.float64)
    for col, ufunc in ((MINX, np.minimum), (MINY, np.minimum), (KXMIN, np.minimum),
                       (KYMIN, np.minimum), (MAXX, np.maximum), (MAXY, np.maximum)):  # fmt: skip
        blocks[:, col] = ufunc.reduceat(chunks[1:-1, col], starts - 1)
    return vtx, cum, np.concatenate([chunks, blocks]).astype(F32), ref


def clearance(
    chunks: NDArray[np.float64],
    vtx: NDArray[np.float32],
    ref_lat: float,
    cap: float = CLEARANCE_CAP_M,
) -> NDArray[np.float64]:
    """Per real chunk, a lower bound (m) of its distance to every chunk two or more away.

    Bounding boxes sort out the chunk pairs farther apart than ``cap``; the remaining pairs
    are measured exactly (shapely, in a local frame at the first chunk's start), and the
    result is capped at ``cap``. ``chunks`` holds the real chunks only; ``vtx`` is the padded
    vertex block, whose chunk k (pads counted) spans vertices k*CHUNK .. (k+1)*CHUNK.
    """
    n = chunks.shape[0]
    out = np.full(n, cap)
    # Boxes grown by cap/2 (in degrees at each chunk's smallest scale) meet when the chunks
    # may be nearer than cap: a superset of the close pairs, found by an STRtree.
    gx = np.minimum(0.5 * cap / np.maximum(chunks[:, KXMIN], 1e-9), 360.0)
    gy = 0.5 * cap / chunks[:, KYMIN]
    boxes = shapely.box(
        chunks[:, MINX] - gx, chunks[:, MINY] - gy, chunks[:, MAXX] + gx, chunks[:, MAXY] + gy
    )
    pi, pj = shapely.STRtree(boxes).query(boxes, predicate="intersects")
    keep = pj >= pi + 2  # each pair once, neighbours excluded
    pi, pj = pi[keep], pj[keep]
    if pi.size:
        span = np.arange(CHUNK + 1)
        va = vtx[(pi + 1)[:, None] * CHUNK + span].astype(np.float64)  # +1: skip the pad chunk
        vb = vtx[(pj + 1)[:, None] * CHUNK + span].astype(np.float64)
        o = va[:, :1, :]
        sx = o[:, :, 2]
        sy = metres_per_degree(o[:, :, 1] + ref_lat)[1]
        lines = []
        for v in (va, vb):
            x = (v[:, :, 0] - o[:, :, 0]) * sx
            y = (v[:, :, 1] - o[:, :, 1]) * sy
            coords = np.stack([x, y], axis=-1).reshape(-1, 2)
            owner = np.repeat(np.arange(pi.size), CHUNK + 1)
            lines.append(shapely.linestrings(coords, indices=owner))
        d = shapely.distance(lines[0], lines[1])
        np.minimum.at(out, pi, d)
        np.minimum.at(out, pj, d)
    return out * CLEARANCE_SAFETY
