"""``bench/fuzz.py --quick``: generated and mutated device messages through the real parser and
pipeline (SQLite): no crash, every element stored or dead-lettered with a reason."""

from __future__ import annotations

from pathlib import Path

from bench import fuzz
from telemetry.ingest import RawMessage


def test_quick_fuzz_has_no_crash_and_loses_nothing(tmp_path: Path) -> None:
    report = fuzz.run(fuzz.QUICK, workdir=tmp_path)
    assert report.crashes == 0, report.examples
    assert report.messages == fuzz.QUICK
    assert report.stored > 0 and report.dead_letters > 0
    # every kind of rejection the mutations aim at was reached
    for reason in ("bad_json", "schema", "out_of_range", "topic_mismatch", "too_large"):
        assert report.reasons[reason] > 0, reason
    # what the pipeline stored or dead-lettered covers every element: duplicates (the
    # generator repeats earlier messages) are the only ones stored once for several
    assert report.stored + report.dead_letters <= report.elements


def test_the_generator_covers_the_edges() -> None:
    sample: list[RawMessage] = list(fuzz.messages(1, 3_000))
    sizes = {len(m.payload) for m in sample}
    assert {64 * 1024, 256 * 1024, 256 * 1024 + 1} <= sizes
    assert any(b"NaN" in m.payload or b"Infinity" in m.payload for m in sample)
    assert any(m.payload.startswith(b"[[[[[[[[[[") for m in sample)
    assert any(not m.topic.startswith("devices/") for m in sample)


def test_a_crash_is_counted() -> None:
    report = fuzz.Report()
    fuzz._check_parse(RawMessage("devices/fz-gps-1/position", b"[1, 2, 3]", 0), report)
    assert report.crashes == 0 and report.elements == 3
    report.crash("boom")
    assert report.crashes == 1 and report.examples == ["boom"]
