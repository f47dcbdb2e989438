"""The desk's handling workflow in a real headless Chromium against the real cargowatch
(contract v2 §5, §7; tests/desk_harness.py): sign-in by GET /v1/keys/me (no 404 probes),
assignment ("assign to me", to a name, the "mine" filter), the call log and the history
timeline, the carrier contact card (tel: and mailto:), the exception form (desk and shipper),
shipper feedback shown to the desk, and the reports view with the ledger, the KPI report and
CSV downloads parsed back. Every change made on the page is checked through the API.

CARGOWATCH_DESK_SCREENSHOTS=docs/img refreshes desk-handling.png and desk-reports.png.
"""

from __future__ import annotations

import csv
import io
import re
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests import desk_harness
from tests.desk_harness import (
    OPERATOR,
    World,
    _history,
    _trip,
    row,
    shots_dir,
    sign_in,
    tamper_message,
    wait_for_alarms,
)

pytestmark = [pytest.mark.browser, pytest.mark.services]

world, browser, page = desk_harness.world, desk_harness.browser, desk_harness.page

CARRIER = {
    "name": "Cairns Haulage",
    "contacts": [
        {
            "name": "Dispatch",
            "role": "dispatcher",
            "phone": "+61 7 4000 1234",
            "email": "dispatch@cairns-haulage.example",
        },
        {"name": "Kim Tran", "role": "driver", "phone": "+61 400 555 010", "email": None},
    ],
}


def _alarm(world: World, alarm_id: str) -> dict[str, Any]:
    with world.desk.client("admin") as c:
        r = c.get(f"/v1/alarms/{alarm_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())


def _carrier_trip_alarm(world: World) -> dict[str, Any]:
    """A trip of carrier ``cairns-haulage`` (PUT /v1/carriers) with a tamper alarm."""
    with world.desk.client("admin") as c:
        r = c.put("/v1/carriers/cairns-haulage", json=CARRIER)
        assert r.status_code in (200, 201), r.text
        now = int(time.time() * 1000)
        st = _trip(f"PG-CAR-{now % 100000}", "pg", "QLD 550-CRN", 10, now, f"car{now % 100000}")
        st.trip["carrier"] = "cairns-haulage"
        _history(st, now, until=10_000)
        r = c.post("/v1/trips", json=st.trip)
        assert r.status_code in (200, 201), r.text
    world.publisher.publish(st.messages)
    world.publisher.publish([tamper_message(st, int(time.time() * 1000))])
    return wait_for_alarms(world.desk, {st.trip_id: "LOCK_TAMPER"})[st.trip_id]


def test_sign_in_asks_who_the_key_is_and_probes_nothing(page: Page, world: World) -> None:
    missing: list[str] = []
    page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
    sign_in(page, world, "desk", "#/queue")
    expect(page.locator("#who")).to_contain_text(f"{OPERATOR} · desk")
    assert not missing, f"404s while signing in: {missing}"


def test_assignment_the_call_log_and_the_history_timeline(
    page: Page, world: World, tmp_path: Path
) -> None:
    pg1 = world.trip("PG-1")
    deviation = world.alarm(pg1.trip_id, "ROUTE_DEVIATION")
    alarm_id = deviation["alarm_id"]
    sign_in(page, world, "desk", f"#/queue/{alarm_id}")
    detail = page.locator("#queue-detail")
    expect(detail.locator("h3")).to_have_text("Route deviation")

    # Assign to me: the queue shows whose alarm it is, and the "mine" filter keeps it.
    detail.locator("#assign-me").click()
    expect(detail.locator("#detail-owner")).to_have_text(f"{OPERATOR} (me)")
    the_row = row(page, pg1.trip_id, "ROUTE_DEVIATION")
    expect(the_row.locator(".owner")).to_contain_text(OPERATOR)
    assert _alarm(world, alarm_id)["assigned_to"] == OPERATOR
    page.check("#f-mine")
    expect(page.locator("#queue-body tr")).to_have_count(1)
    expect(the_row).to_have_count(1)
    page.uncheck("#f-mine")

    # The call log: whom, what was said, the outcome; it lands in the history timeline.
    detail.locator("#note-contact").select_option("carrier")
    detail.locator("#note-text").fill("dispatch: driver took a detour round roadworks")
    detail.locator("#note-outcome").fill("driver back on route in 10 min")
    detail.locator("#call-log button[type=submit]").click()
    timeline = detail.locator("#detail-history")
    expect(timeline).to_contain_text("Call log · Carrier")
    expect(timeline).to_contain_text("dispatch: driver took a detour round roadworks")
    expect(timeline).to_contain_text("Outcome: driver back on route in 10 min")
    expect(detail.locator("#note-text")).to_have_value("")
    history = _alarm(world, alarm_id)["history"]
    note = [e for e in history if e.get("contact") == "carrier"]
    assert note and note[-1]["by"] == OPERATOR and note[-1].get("key_id"), history
    assert note[-1]["text"] == "dispatch: driver took a detour round roadworks"
    assert note[-1]["outcome"] == "driver back on route in 10 min"

    # Hand it to a colleague by name; then it is no longer "mine".
    detail.locator("#assign-to").fill("desk-12")
    detail.locator("#assign-form button[type=submit]").click()
    expect(detail.locator("#detail-owner")).to_have_text("desk-12")
    expect(timeline).to_contain_text("Assigned to desk-12")
    assert _alarm(world, alarm_id)["assigned_to"] == "desk-12"
    page.check("#f-mine")
    expect(the_row).to_have_count(0)


def test_the_carrier_card_is_on_every_alarm_of_the_trip(
    page: Page, world: World, tmp_path: Path
) -> None:
    alarm = _carrier_trip_alarm(world)
    sign_in(page, world, "desk", f"#/queue/{alarm['alarm_id']}")
    card = page.locator("#carrier-card")
    expect(card).to_contain_text("Cairns Haulage")
    expect(card.locator("a[href='tel:+61740001234']")).to_have_text("☎ +61 7 4000 1234")
    expect(card.locator("a[href='mailto:dispatch@cairns-haulage.example']")).to_be_visible()
    expect(card.locator("a.tel")).to_have_count(2)
    expect(card).to_contain_text("Kim Tran")

    # The picture for the docs: taken, a call logged, the timeline below.
    detail = page.locator("#queue-detail")
    detail.locator("#assign-me").click()
    expect(detail.locator("#detail-owner")).to_have_text(f"{OPERATOR} (me)")
    detail.locator("#note-contact").select_option("driver")
    detail.locator("#note-text").fill("driver: seal cut at a fuel stop, waiting for police")
    detail.locator("#note-outcome").fill("police on site in 15 min")
    detail.locator("#call-log button[type=submit]").click()
    expect(detail.locator("#detail-history")).to_contain_text("Call log · Driver")
    page.evaluate(
        "document.getElementById('toasts').replaceChildren();"
        "document.getElementById('queue-detail').scrollTop = 0"
    )
    page.screenshot(path=str(shots_dir(tmp_path) / "desk-handling.png"))


def test_an_exception_reported_by_the_desk_and_by_a_shipper(page: Page, world: World) -> None:
    pg2 = world.trip("PG-2")
    sign_in(page, world, "desk", "#/reports")
    page.click("#btn-new-exception")
    page.fill("#exc-trip", pg2.trip_id)
    page.select_option("#exc-type", "damage")
    page.fill("#exc-description", "pallet 3 crushed, photos taken at the dock")
    page.click("#form-exception button[type=submit]")
    expect(page.locator("#dlg-exception")).to_be_hidden()
    listed = page.locator("#exceptions-list li", has_text="pallet 3 crushed")
    expect(listed).to_contain_text("Damage")
    expect(listed).to_contain_text(pg2.trip_id)
    with world.desk.client("admin") as c:
        found = [
            x
            for x in c.get("/v1/exceptions").json()
            if x.get("description") == "pallet 3 crushed, photos taken at the dock"
        ]
    assert found and found[0]["type"] == "damage" and found[0]["trip_id"] == pg2.trip_id

    # The shipper reports on its own trip, from one of its alarms.
    page.click("#btn-signout")
    battery = world.alarm(pg2.trip_id, "LOW_BATTERY")
    sign_in(page, world, "pg", f"#/queue/{battery['alarm_id']}")
    page.locator("#queue-detail button[data-act=exception]").click()
    expect(page.locator("#exc-trip")).to_have_value(pg2.trip_id)
    page.select_option("#exc-type", "quantity")
    page.fill("#exc-description", "2 cartons short at delivery")
    page.click("#form-exception button[type=submit]")
    expect(page.locator("#dlg-exception")).to_be_hidden()
    with world.desk.client("pg") as c:
        mine = c.get("/v1/exceptions").json()
    assert any(x.get("description") == "2 cartons short at delivery" for x in mine), mine


def test_shipper_feedback_is_given_on_a_resolved_alarm_and_shown_to_the_desk(
    page: Page, world: World
) -> None:
    ac1 = world.trip("ACME-1")
    speeding = world.alarm(ac1.trip_id, "SPEEDING")
    alarm_id = speeding["alarm_id"]
    with world.desk.client("desk") as c:
        r = c.post(
            f"/v1/alarms/{alarm_id}/resolve",
            json={"by": OPERATOR, "cause": "other", "action": "driver warned"},
        )
        assert r.status_code == 200, r.text
    sign_in(page, world, "acme", f"#/queue/{alarm_id}")
    form = page.locator("#feedback-form")
    form.locator("input[value=disputed]").check()
    form.locator("#feedback-comment").fill("the speed limit there is 100")
    form.locator("button[type=submit]").click()
    expect(page.locator("#detail-feedback")).to_contain_text("disputed")
    assert _alarm(world, alarm_id)["feedback"]["verdict"] == "disputed"

    page.click("#btn-signout")
    sign_in(page, world, "desk", f"#/queue/{alarm_id}")
    shown = page.locator("#detail-feedback")
    expect(shown).to_contain_text("Shipper feedback: ✗ disputed")
    expect(shown).to_contain_text("the speed limit there is 100")


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_reports_show_the_kpi_and_the_ledger_and_download_csv(
    page: Page, world: World, tmp_path: Path
) -> None:
    sign_in(page, world, "desk", "#/reports")
    expect(page.locator("[data-testid=kpi] .kpi-tile").first).to_be_visible()
    ledger_rows = page.locator("#ledger-table tbody tr[data-kind]")
    expect(ledger_rows.first).to_be_visible()
    with world.desk.client("desk") as c:
        now = time.time()
        day = time.strftime("%Y-%m-%d", time.gmtime(now - 7 * 86400))
        params = {"from": f"{day}T00:00:00Z"}
        ledger = c.get("/v1/reports/ledger", params=params).json()
        kpi = c.get("/v1/reports/kpi", params=params).json()
    entries = (
        ledger
        if isinstance(ledger, list)
        else next(v for v in ledger.values() if isinstance(v, list))
    )
    expect(ledger_rows).to_have_count(len(entries))
    expect(page.locator("[data-testid=kpi]")).to_contain_text(str(kpi["alarms"]))
    page.screenshot(path=str(shots_dir(tmp_path) / "desk-reports.png"))

    for button, path in (("#dl-ledger", "ledger"), ("#dl-kpi", "kpi")):
        with page.expect_download() as info:
            page.click(button)
        download = info.value
        assert re.match(rf"cargowatch-{path}-.*\.csv$", download.suggested_filename)
        text = Path(download.path()).read_text(encoding="utf-8")
        rows = _csv_rows(text)
        assert rows, text[:500]
        if path == "ledger":
            assert len(rows) == len(entries), (len(rows), len(entries))
