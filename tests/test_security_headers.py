"""Response headers: a Content-Security-Policy on the desk page that the page itself never
violates (checked in a real Chromium, with base-map tiles from another origin),
``X-Content-Type-Options: nosniff`` everywhere, and no CORS (no ``Access-Control-*``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import uvicorn

from api import begin_shutdown, create_app
from api.security import desk_csp, tile_source
from cargowatch.runtime import Runtime
from cargowatch.settings import Settings
from tests.services import free_port

ADMIN = "headers-admin-key-0123456789"
CHROMIUM = Path("/usr/bin/chromium")
# a 1x1 transparent PNG
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c63000100000500010d0a2db40000000049454e44ae426082"
)


@pytest.fixture(scope="module")
def tiles() -> Iterator[tuple[str, list[str]]]:
    """A tile server on another origin; the paths it was asked for."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{{z}}/{{x}}/{{y}}.png", asked
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory, tiles: tuple[str, list[str]]) -> Iterator[str]:
    db = tmp_path_factory.mktemp("headers") / "h.sqlite"
    runtime = Runtime.open(Settings(db_url=f"sqlite:///{db}", admin_key=ADMIN, tiles=tiles[0]))
    app = create_app(runtime, heartbeat_s=1.0)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the API did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        begin_shutdown(app)
        server.should_exit = True
        thread.join(20)
        runtime.close()


def test_the_desk_page_has_a_strict_policy(desk: str, tiles: tuple[str, list[str]]) -> None:
    r = httpx.get(desk + "/", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert csp == desk_csp(tiles[0])
    for directive in ("script-src 'self'", "object-src 'none'", "frame-ancestors 'none'"):
        assert directive in csp
    assert "unsafe-eval" not in csp and "script-src 'self' 'unsafe-inline'" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize("path", ["/v1/trips", "/healthz", "/js/main.js", "/v1/nope"])
def test_nosniff_everywhere_and_no_cors(desk: str, path: str) -> None:
    auth = {"Authorization": f"Bearer {ADMIN}", "Origin": "https://evil.example"}
    r = httpx.get(desk + path, headers=auth, timeout=10)
    assert r.headers["x-content-type-options"] == "nosniff"
    assert not [h for h in r.headers if h.lower().startswith("access-control-")]
    pre = httpx.options(
        desk + path,
        headers={
            "Origin": "https://evil.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
        timeout=10,
    )
    assert not [h for h in pre.headers if h.lower().startswith("access-control-")]


def test_tile_sources() -> None:
    assert tile_source("https://{s}.tile.openstreetmap.org/{z}/{x}/{y}.png") == (
        "https://*.tile.openstreetmap.org"
    )
    assert tile_source("http://127.0.0.1:81/{z}/{x}/{y}.png") == "http://127.0.0.1:81"
    assert tile_source("javascript:alert(1)") is None
    assert tile_source(None) is None
    assert "img-src 'self' data:;" in desk_csp(None) + ";"


@pytest.mark.browser
def test_the_desk_page_runs_without_a_policy_violation(
    desk: str, tiles: tuple[str, list[str]]
) -> None:
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing")
    from playwright.sync_api import expect, sync_playwright

    violations: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on(
                "console",
                lambda m: (
                    violations.append(m.text) if "Content Security Policy" in m.text else None
                ),
            )
            page.add_init_script(
                "window.__csp = []; document.addEventListener('securitypolicyviolation',"
                " (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
            )
            page.goto(desk + "/")
            page.fill("#signin-key", ADMIN)
            page.click("#signin-form button[type=submit]")
            expect(page.locator("body")).to_have_attribute("data-ready", "1")
            for tab in ("#tab-queue", "#tab-replay", "#tab-reports", "#tab-live"):
                page.click(tab)
                page.wait_for_timeout(300)
            page.wait_for_timeout(500)
            violations += page.evaluate("window.__csp")
        finally:
            browser.close()
    assert violations == []
    assert tiles[1], "the base map's tiles (another origin) were not loaded"
