"""Store benchmark: ``insert_fixes`` throughput on TimescaleDB and SQLite.

Batches of 10,000 fixes (one per device, as the ingest pipeline writes them), one commit
each. Three cases per store: all rows new (the usual batch: direct binary COPY on
PostgreSQL, one ``executemany`` on SQLite), all rows already stored (a redelivered batch),
and half new (the slow path that has to find out which rows were new). Also the time to
build one COPY block in Python.

Prints one JSON object. Starts its own private TimescaleDB cluster (fsync on) unless
``--db`` is given.

    .venv/bin/python -m bench.store [--quick] [--db postgresql://...] [--batches N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from telemetry.models import Fix
from telemetry.store import Store, open_store
from telemetry.store import _pgcopy as pgcopy
from tests.services import PostgresServer

T0_MS = 1_795_334_400_000


def batch(k: int, size: int, prefix: str = "bench") -> list[Fix]:
    """Batch ``k``: one fix per device, 10 s after batch ``k - 1``; every tenth has extras."""
    return [
        Fix(
            f"{prefix}-{i:05d}",
            T0_MS + k * 10_000 + i % 1000,
            31.0 + i * 1e-6 + k * 1e-5,
            121.0 + k * 1e-5,
            speed_kmh=62.5,
            heading_deg=90.0,
            hdop=0.9,
            sats=11,
            battery_pct=88.0,
            seq=k,
            received_at=T0_MS + k * 10_000 + 500,
            extra={"odometer_km": k * 0.2} if i % 10 == 0 else None,
        )
        for i in range(size)
    ]


def _rate(
    store: Store, batches: list[list[Fix]], expect_new: Callable[[int], bool]
) -> tuple[float, float]:
    """(rows per second of wall time, rows per second of this process's CPU time).

    On a shared machine the wall figure moves with the neighbours' load; the CPU figure
    does not (for SQLite it is all the work but the fsyncs; for PostgreSQL, the client's).
    """
    rows = sum(len(b) for b in batches)
    t0, c0 = time.perf_counter(), time.process_time()
    for b in batches:
        mask = store.insert_fixes(b)
        if not expect_new(int(mask.sum())):
            raise RuntimeError(f"unexpected mask: {int(mask.sum())} new of {len(b)}")
    return rows / (time.perf_counter() - t0), rows / (time.process_time() - c0)


def measure(url: str, batches: int, size: int) -> dict[str, float]:
    store = open_store(url)
    try:
        new = [batch(k, size) for k in range(batches)]
        redelivered = new[: max(1, batches // 4)]
        half = [
            b[: size // 2] + batch(10_000 + k, size)[size // 2 :]
            for k, b in enumerate(new[: max(1, batches // 4)])
        ]
        out: dict[str, float] = {}
        for case, data, expect in (
            ("new", new, lambda n: n == size),
            ("duplicate", redelivered, lambda n: n == 0),
            ("half_new", half, lambda n: n == size - size // 2),
        ):
            wall, cpu = _rate(store, data, expect)
            out[f"{case}_rows_per_s"] = round(wall)
            out[f"{case}_rows_per_client_cpu_s"] = round(cpu)
        out["stored_rows"] = store.count_telemetry()["fixes"]
        return out
    finally:
        store.close()


def block_build_ms(size: int, repeat: int = 20) -> float:
    fixes = batch(0, size)
    t0 = time.perf_counter()
    for _ in range(repeat):
        pgcopy.fix_block(fixes)
    return (time.perf_counter() - t0) / repeat * 1000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small run, a few seconds")
    p.add_argument("--db", default=None, help="a PostgreSQL URL (default: a private cluster)")
    p.add_argument("--batches", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=10_000)
    args = p.parse_args(argv)
    batches = args.batches or (4 if args.quick else 20)
    size = args.batch_size
    result: dict[str, object] = {"benchmark": "store", "batch_size": size, "batches": batches}
    server = None
    try:
        db_url = args.db
        if not db_url:
            server = PostgresServer(durable=True).start()
            db_url = server.create_database("bench_store")
        result["timescaledb"] = measure(db_url, batches, size)
    finally:
        if server is not None:
            server.stop()
            shutil.rmtree(server.workdir, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="cw-bench-store-") as tmp:
        result["sqlite"] = measure(f"sqlite:///{Path(tmp) / 'bench.db'}", batches, size)
    result["copy_block_build_ms"] = round(block_build_ms(size), 2)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
