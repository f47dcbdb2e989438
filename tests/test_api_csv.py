"""The ledger and CSV (contract v2 §7): ``GET /v1/reports/ledger`` and, with
``Accept: text/csv``, the alarm list, the ledger and the KPI report as RFC 4180 CSV. Each CSV
is parsed back with ``csv`` and every row and column checked against the JSON answer."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest

from api.render import csv_cell
from rules.events import AlarmType
from tests.api_world import OWN, World

pytestmark = pytest.mark.asyncio(loop_scope="session")

CSV = {"Accept": "text/csv"}


def _cell(value: Any) -> str:
    """What a JSON value must read as in a cell (written independently of api.render)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


async def _both(w: World, path: str, role: str = "desk") -> tuple[Any, list[dict[str, str]]]:
    as_json = await w.client.get(path, headers=w.auth(role))
    as_csv = await w.client.get(path, headers={**w.auth(role), **CSV})
    assert as_json.status_code == as_csv.status_code == 200, as_csv.text
    assert as_csv.headers["content-type"] == "text/csv; charset=utf-8"
    text = as_csv.content.decode("utf-8")
    assert text.endswith("\r\n") and "\r\n" in text.split("\n")[0] + "\n"
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    return as_json.json(), rows


async def _seed(w: World) -> tuple[str, str]:
    """An alarm handled end to end with a formula-like note, and an exception."""
    desk = w.auth("desk")
    alarm_id = w.tenants[OWN].alarm_id
    w.clock.advance(60)
    await w.client.post(f"/v1/alarms/{alarm_id}/assign", json={"to": "desk-07"}, headers=desk)
    note = {"text": '=HYPERLINK("http://evil")', "contact": "carrier", "outcome": "-1 pallet"}
    assert (
        await w.client.post(f"/v1/alarms/{alarm_id}/notes", json=note, headers=desk)
    ).status_code == 200
    w.clock.advance(20 * 60)  # past the 5-minute critical ack deadline of pg's SLA
    await w.client.post(
        f"/v1/alarms/{alarm_id}/resolve",
        json={"cause": "theft_suspected", "action": "@police, called", "feedback": "ok, thanks"},
        headers=desk,
    )
    await w.client.post(
        f"/v1/alarms/{alarm_id}/feedback",
        json={"verdict": "accepted", "comment": "+1 quick"},
        headers=w.auth("shipper"),
    )
    r = await w.client.post(
        "/v1/exceptions",
        json={
            "trip_id": w.tenants[OWN].trip_id,
            "type": "quantity",
            "description": "3 cartons short",
        },
        headers=w.auth("shipper"),
    )
    w.raise_alarm(w.tenants[OWN], AlarmType.SPEEDING, speed_kmh=104.5)
    return alarm_id, r.json()["exception_id"]


async def test_the_ledger_has_deadlines_notes_and_feedback(world: World) -> None:
    alarm_id, exc_id = await _seed(world)
    r = await world.client.get("/v1/reports/ledger", headers=world.auth("shipper"))
    assert r.status_code == 200, r.text
    entries = {e["alarm_id"]: e for e in r.json()["entries"]}
    assert {e["shipper"] for e in entries.values()} == {OWN}
    handled = entries[alarm_id]
    assert handled["kind"] == "alarm" and handled["ack_met"] is False  # acked when resolved, late
    assert handled["resolve_met"] is True and handled["cause"] == "theft_suspected"
    assert [n["contact"] for n in handled["notes"]] == ["carrier"]
    assert handled["feedback"]["verdict"] == "accepted"
    reported = entries[exc_id]
    assert reported["kind"] == "exception" and reported["type"] == "quantity"
    assert reported["ack_met"] is None and reported["resolve_met"] is None  # still pending
    assert reported["description"] == "3 cartons short"
    everyone = (await world.client.get("/v1/reports/ledger", headers=world.auth("desk"))).json()
    assert len(everyone["entries"]) > len(entries)
    later = {"from": "2030-01-01T00:00:00Z"}
    r = await world.client.get("/v1/reports/ledger", params=later, headers=world.auth("desk"))
    assert r.json()["entries"] == []


async def test_kpi_counts_feedback_and_deadlines_per_severity(world: World) -> None:
    await _seed(world)
    kpi = (await world.client.get("/v1/reports/kpi", headers=world.auth("shipper"))).json()
    assert kpi["feedback"] == {"accepted": 1, "disputed": 0}
    assert kpi["exceptions"] == 1
    assert kpi["deadlines_by_severity"]["critical"] == {
        "ack_met": 0,
        "ack_missed": 1,
        "resolve_met": 1,
        "resolve_missed": 0,
    }


@pytest.mark.parametrize("path", ["/v1/alarms", "/v1/reports/ledger"])
async def test_csv_rows_match_the_json(world: World, path: str) -> None:
    await _seed(world)
    data, rows = await _both(world, path)
    items = data["entries"] if isinstance(data, dict) else data
    assert len(rows) == len(items) > 1
    for item, row in zip(items, rows, strict=True):
        expected = dict(item)
        resolution = item.get("resolution") or {}
        feedback = item.get("feedback") or {}
        expected.update(
            feedback_verdict=feedback.get("verdict"), feedback_comment=feedback.get("comment")
        )
        if path == "/v1/alarms":
            expected.update(
                cause=resolution.get("cause"),
                action=resolution.get("action"),
                resolution_feedback=resolution.get("feedback"),
            )
        else:
            expected["notes_count"] = len(item["notes"])
            expected["notes"] = "\n".join(
                f"{n['at']} {n['by']} ({n['contact'] or 'other'}): {n['text']}"
                + (f" -> {n['outcome']}" if n["outcome"] else "")
                for n in item["notes"]
            )
        for column, cell in row.items():
            assert cell == _cell(expected[column]), (column, cell, expected[column])
    cells = [cell for row in rows for cell in row.values()]
    assert "'@police, called" in cells and "'+1 quick" in cells
    assert not any(cell[:1] in ("=", "+", "-", "@") for cell in cells)


async def test_kpi_csv_is_one_row_per_figure(world: World) -> None:
    await _seed(world)
    data, rows = await _both(world, "/v1/reports/kpi", role="shipper")
    assert list(rows[0]) == ["metric", "value"]
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = value

    walk("", data)
    assert [r["metric"] for r in rows] == list(flat)
    for row in rows:
        assert row["value"] == _cell(flat[row["metric"]]), row


async def test_csv_is_for_whoever_may_read_the_json(world: World) -> None:
    r = await world.client.get(
        "/v1/reports/ledger", params={"shipper": "acme"}, headers={**world.auth("shipper"), **CSV}
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await world.client.get("/v1/alarms", headers={**world.auth("other_shipper"), **CSV})
    assert r.status_code == 200 and OWN not in r.text.split("\r\n", 1)[1]


async def test_formula_like_cells_are_quoted() -> None:
    for text in ("=1+2", "+1", "-1", "@SUM(A1)", "\tx", "\rx"):
        assert csv_cell(text) == "'" + text
    assert csv_cell(-1) == "-1" and csv_cell(2.5) == "2.5"  # numbers stay numbers
    assert csv_cell("plain") == "plain" and csv_cell(None) == "" and csv_cell(True) == "true"
    assert csv_cell({"b": 1, "a": "x"}) == '{"a":"x","b":1}'
