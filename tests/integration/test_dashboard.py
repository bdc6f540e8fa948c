"""The dashboard in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``
through Selenium) against a real ``waypost server``: what a user sees and clicks.

Screenshots go to the test's temporary folder, and to ``$WAYPOST_SCREENSHOTS`` when set
(``make screenshots`` sets it to ``docs/images`` for docs/dashboard.md).
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from tests.conftest import ServerProcess, instance, wait_until

TOKEN = "s3cret-dashboard"


@pytest.fixture(scope="module")
def chrome() -> Iterator[webdriver.Chrome]:
    """One headless Chromium for the module (starting one costs about a second)."""
    binary = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    assert binary, "chromium: `make test` installs it"
    assert driver_path, "chromium-driver: `make test` installs it"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        # No calls home: this machine's network is closed and each refusal is console noise.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def shots(tmp_path: Path) -> Callable[[webdriver.Chrome, str], None]:
    folders = [tmp_path]
    if os.environ.get("WAYPOST_SCREENSHOTS"):
        folders.append(Path(os.environ["WAYPOST_SCREENSHOTS"]))

    def shot(driver: webdriver.Chrome, name: str) -> None:
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            assert driver.save_screenshot(str(folder / f"dashboard-{name}.png"))

    return shot


def console_errors(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """The console's errors since the last call (reading the log empties it)."""
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def text_of(driver: webdriver.Chrome, css: str) -> str:
    """The text of the first element matching ``css`` ("" while there is none), read
    whole even when the page re-renders in between."""
    try:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        return found[0].text if found else ""
    except StaleElementReferenceException:
        return ""


def shows(driver: webdriver.Chrome, css: str, text: str, timeout_s: float = 15.0) -> None:
    """Wait until the first element matching ``css`` holds ``text`` (the page renders
    what it fetched when it gets it, and may render again in between)."""
    wait_until(lambda: text in text_of(driver, css), timeout_s, f"{text!r} in {css}")


def click(driver: webdriver.Chrome, css: str) -> None:
    def press() -> bool:
        try:
            driver.find_element(By.CSS_SELECTOR, css).click()
            return True
        except Exception:  # not there yet, or re-rendered under the pointer
            return False

    wait_until(press, 15, f"click {css}")


def dialog_open(driver: webdriver.Chrome, dialog_id: str) -> bool:
    return bool(driver.execute_script(f"return document.getElementById('{dialog_id}').open"))


def rows(driver: webdriver.Chrome, css: str, attr: str) -> list[str]:
    try:
        found: list[WebElement] = driver.find_elements(By.CSS_SELECTOR, css)
        return [str(r.get_attribute(attr)) for r in found]
    except StaleElementReferenceException:
        return []


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed(api: httpx.Client) -> None:
    for n in (1, 2, 3):
        body = instance(
            f"web-{n}",
            address=f"10.0.0.{n}",
            version=f"1.4.{n}",
            tags=["prod", "eu"],
            meta={"zone": f"eu-{n}"},
            node=f"node-{n}",
            ttl="1h",
        )
        assert api.put(f"/api/v1/instances/web-{n}", json=body).status_code == 200
    # A real check the server runs, against a port where nothing listens: critical, with
    # the connection error as its output.
    check = {"tcp": f"127.0.0.1:{closed_port()}", "interval": "1s", "name": "postgres-port"}
    db = instance(
        "db-1", "db", address="127.0.0.1", port=5432, tags=["prod"], node="node-1", checks=[check]
    )
    assert api.put("/api/v1/instances/db-1", json=db).status_code == 200
    assert api.put("/api/v1/nodes/node-1", json={"address": "10.0.0.1"}).status_code == 200
    net = instance(
        "net-alpha-a1",
        "alpha",
        kind="network",
        tags=["prod"],
        meta={
            "network_id": "alpha",
            "instance_id": "a1",
            "capabilities": "text,reverse",
            "load": "3",
            "endpoint": "ws://10.0.0.1:8080/ws",
        },
    )
    actor = instance(
        "actor-alpha-a1-upper",
        "upper",
        kind="actor",
        meta={
            "network": "alpha",
            "network_instance": "a1",
            "actor": "upper",
            "component": "Upper",
            "capabilities": "text",
            "inports": "in",
            "outports": "out",
        },
    )
    for body in (net, actor):
        assert api.put(f"/api/v1/instances/{body['id']}", json=body).status_code == 200


def test_dashboard_lists_services_follows_changes_live_and_acts(
    start_server: Callable[..., ServerProcess],
    chrome: webdriver.Chrome,
    shots: Callable[[webdriver.Chrome, str], None],
) -> None:
    server = start_server()
    api = httpx.Client(base_url=server.url, timeout=10)
    d = chrome
    try:
        seed(api)
        wait_until(
            lambda: api.get("/api/v1/checks", params={"service": "db"}).json()[0]["last_run"],
            10,
            "db-1's check to run",
        )
        d.get("about:blank")
        console_errors(d)  # start from an empty console

        # `/` takes a browser to the dashboard; services come worst health first.
        d.get(server.url + "/")
        assert d.current_url == server.url + "/ui/"
        listed = wait_until(
            lambda: rows(d, "#services tr[data-service]", "data-service"), 15, "services"
        )
        assert listed[0] == "db", listed  # critical first
        assert set(listed) >= {"db", "web", "alpha", "upper"}
        shows(d, 'tr[data-service="web"]', "3 passing")
        shows(d, 'tr[data-service="web"]', "1.4.1, 1.4.2, 1.4.3")
        wait_until(lambda: text_of(d, "#live") == "live", 15, "the stream to open")
        shots(d, "services")

        # Filters: by text, then by status (kept in the address).
        d.find_element(By.ID, "filter-text").send_keys("we")
        wait_until(
            lambda: rows(d, "#services tr[data-service]", "data-service") == ["web"], 15, "filter"
        )
        d.find_element(By.ID, "filter-text").clear()
        d.execute_script(
            "const s = document.getElementById('filter-status');"
            "s.value = 'critical'; s.dispatchEvent(new Event('change'));"
        )
        wait_until(
            lambda: rows(d, "#services tr[data-service]", "data-service") == ["db"], 15, "status"
        )
        assert "status=critical" in d.current_url

        # A service: its instances with their checks, status, output and last run.
        click(d, 'tr[data-service="db"] a')
        wait_until(lambda: text_of(d, 'tr[data-checks-of="db-1"]'), 15, "db-1's checks")
        checks = text_of(d, 'tr[data-checks-of="db-1"]')
        assert "postgres-port" in checks
        assert "critical" in checks
        assert "refused" in checks.lower() or "connect" in checks.lower(), checks
        assert "ago" in checks  # its last run
        shots(d, "service-db")

        d.get(server.url + "/ui/#/services/web")
        wait_until(lambda: len(rows(d, "tr.instance", "data-instance")) == 3, 15, "web's instances")
        row = text_of(d, 'tr[data-instance="web-2"]')
        assert "10.0.0.2:8080" in row
        assert "1.4.2" in row
        assert "zone=eu-2" in row
        assert "node-2" in row

        # A change made through the API shows within 1 s, without a reload.
        d.execute_script("window.__sameDocument = true")
        api.put("/api/v1/instances/web-2/status", json={"status": "critical", "output": "disk"})
        wait_until(
            lambda: "critical" in text_of(d, 'tr[data-instance="web-2"] [data-status]'),
            1.0,
            "web-2 critical on the page",
        )
        assert d.execute_script("return window.__sameDocument === true")
        shots(d, "service-web")

        # Maintenance through the page, confirmed in a dialog; then out of it again.
        click(d, 'tr[data-instance="web-1"] button[data-action="maintenance-on"]')
        wait_until(lambda: dialog_open(d, "confirm"), 15, "the confirm dialog")
        assert "web-1" in d.find_element(By.ID, "confirm-text").text
        d.find_element(By.ID, "confirm-ok").click()
        wait_until(
            lambda: api.get("/api/v1/instances/web-1").json()["maintenance"], 15, "maintenance"
        )
        wait_until(
            lambda: "maintenance" in text_of(d, 'tr[data-instance="web-1"] [data-status]'),
            15,
            "web-1 in maintenance on the page",
        )
        click(d, 'tr[data-instance="web-1"] button[data-action="maintenance-off"]')
        wait_until(lambda: dialog_open(d, "confirm"), 15, "the confirm dialog")
        # Cancelled: nothing happens.
        d.find_element(By.CSS_SELECTOR, '#confirm button[value="cancel"]').click()
        assert api.get("/api/v1/instances/web-1").json()["maintenance"] is True
        click(d, 'tr[data-instance="web-1"] button[data-action="maintenance-off"]')
        wait_until(lambda: dialog_open(d, "confirm"), 15, "the confirm dialog")
        d.find_element(By.ID, "confirm-ok").click()
        wait_until(lambda: not api.get("/api/v1/instances/web-1").json()["maintenance"], 15, "back")

        # Run checks now, and deregister.
        d.get(server.url + "/ui/#/services/db")
        click(d, 'tr[data-instance="db-1"] button[data-action="check"]')
        wait_until(lambda: dialog_open(d, "confirm"), 15, "the confirm dialog")
        d.find_element(By.ID, "confirm-ok").click()
        wait_until(lambda: "ran" in text_of(d, "#toast"), 15, "the checks ran")
        d.get(server.url + "/ui/#/services/web")
        click(d, 'tr[data-instance="web-3"] button[data-action="deregister"]')
        wait_until(lambda: dialog_open(d, "confirm"), 15, "the confirm dialog")
        d.find_element(By.ID, "confirm-ok").click()
        wait_until(
            lambda: api.get("/api/v1/instances/web-3").status_code == 404, 15, "deregistered"
        )
        wait_until(lambda: "web-3" not in rows(d, "tr.instance", "data-instance"), 15, "row gone")

        # Nodes, and a node's page with its instances.
        click(d, 'header a[data-nav="nodes"]')
        wait_until(lambda: text_of(d, 'tr[data-node="node-1"]'), 15, "nodes")
        shows(d, 'tr[data-node="node-1"]', "10.0.0.1")
        shows(d, 'tr[data-node="node-2"]', "unregistered")
        shots(d, "nodes")
        click(d, 'tr[data-node="node-1"] a')
        wait_until(
            lambda: set(rows(d, "tr.instance", "data-instance")) == {"web-1", "db-1"},
            15,
            "node-1's instances",
        )

        # Actor networks and a network's actors.
        click(d, 'header a[data-nav="networks"]')
        wait_until(lambda: text_of(d, 'tr[data-network="alpha"]'), 15, "networks")
        net = text_of(d, 'tr[data-network="alpha"]')
        assert "reverse" in net
        assert "ws://10.0.0.1:8080/ws" in net
        shots(d, "networks")
        click(d, 'tr[data-network="alpha"] a')
        wait_until(lambda: text_of(d, 'tr[data-actor="upper"]'), 15, "alpha's actors")
        actor = text_of(d, 'tr[data-actor="upper"]')
        assert "Upper" in actor
        assert "a1" in actor

        # Readable on a phone: the services view at 390 px wide, no sideways page scroll.
        d.set_window_size(390, 844)
        d.get(server.url + "/ui/")
        wait_until(lambda: text_of(d, 'tr[data-service="web"]'), 15, "services")
        assert d.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1"
        )
        shots(d, "phone")
        d.set_window_size(1280, 900)

        assert console_errors(d) == []

        # The stream drops with the server: the page says so, reconnects by itself when
        # the server is back and resumes (a change made meanwhile shows).
        d.get(server.url + "/ui/#/services/web")
        wait_until(lambda: text_of(d, "#live") == "live", 15, "live")
        port = server.port
        server.stop()
        wait_until(lambda: "disconnected" in text_of(d, "#live"), 10, "the page to notice")
        server.start(f"127.0.0.1:{port}")
        api.put("/api/v1/instances/web-1/status", json={"status": "warning", "output": "slow"})
        wait_until(lambda: text_of(d, "#live") == "live", 15, "the stream to come back")
        wait_until(
            lambda: "warning" in text_of(d, 'tr[data-instance="web-1"] [data-status]'),
            15,
            "a change made while away",
        )
        api.put("/api/v1/instances/web-2/status", json={"status": "passing"})
        wait_until(
            lambda: "passing" in text_of(d, 'tr[data-instance="web-2"] [data-status]'),
            2,
            "a change after reconnecting",
        )
        # Only the refused connections while the server was down reach the console.
        left = [
            e
            for e in console_errors(d)
            if "ERR_CONNECTION_REFUSED" not in e["message"] and "/api/v1/events" not in e["message"]
        ]
        assert left == []
    finally:
        api.close()


def test_dashboard_actions_need_the_servers_token(
    start_server: Callable[..., ServerProcess], chrome: webdriver.Chrome
) -> None:
    server = start_server("--token", TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    api = httpx.Client(base_url=server.url, timeout=10, headers=auth)
    d = chrome
    try:
        assert api.put("/api/v1/instances/web-1", json=instance("web-1")).status_code == 200
        d.get("about:blank")
        console_errors(d)  # start from an empty console
        # A new origin (this server's port): no token kept from before in this tab.
        d.get(server.url + "/ui/#/services/web")
        wait_until(lambda: text_of(d, 'tr[data-instance="web-1"]'), 15, "web-1")
        wait_until(lambda: "needed" in text_of(d, "#token-button"), 15, "token asked for")

        # Without a token: asked for one; cancelled, nothing is done.
        click(d, 'tr[data-instance="web-1"] button[data-action="deregister"]')
        wait_until(lambda: dialog_open(d, "confirm"), 15, "confirm")
        d.find_element(By.ID, "confirm-ok").click()
        wait_until(lambda: dialog_open(d, "token-dialog"), 15, "the token dialog")
        d.find_element(By.CSS_SELECTOR, '#token-dialog button[value="cancel"]').click()
        wait_until(lambda: "Not done" in text_of(d, "#toast"), 15, "refused")
        assert api.get("/api/v1/instances/web-1").status_code == 200

        # A wrong token: the server's 401 message shows and nothing changes; the right one
        # given when asked again does it.
        click(d, 'tr[data-instance="web-1"] button[data-action="maintenance-on"]')
        wait_until(lambda: dialog_open(d, "confirm"), 15, "confirm")
        d.find_element(By.ID, "confirm-ok").click()
        wait_until(lambda: dialog_open(d, "token-dialog"), 15, "the token dialog")
        d.find_element(By.ID, "token-input").send_keys("wrong")
        d.find_element(By.CSS_SELECTOR, '#token-dialog button[value="ok"]').click()
        wait_until(lambda: "token" in text_of(d, "#toast"), 15, "the server's refusal")
        wait_until(lambda: dialog_open(d, "token-dialog"), 15, "asked again")
        assert api.get("/api/v1/instances/web-1").json()["maintenance"] is False
        field = d.find_element(By.ID, "token-input")
        field.clear()
        field.send_keys(TOKEN)
        d.find_element(By.CSS_SELECTOR, '#token-dialog button[value="ok"]').click()
        wait_until(
            lambda: api.get("/api/v1/instances/web-1").json()["maintenance"], 15, "maintenance"
        )
        # On a quiet registry, a node's change (not an instance's) shows live too.
        d.get(server.url + "/ui/?quiet#/nodes")  # a new page: no refresh left queued
        wait_until(lambda: text_of(d, "#live") == "live", 15, "live")
        wait_until(lambda: rows(d, "tr[data-node]", "data-node"), 15, "the nodes")
        wait_until(
            lambda: d.execute_script(
                "return !('refreshing' in document.getElementById('view').dataset)"
            ),
            15,
            "no refresh under way",
        )
        assert "node-9" not in rows(d, "tr[data-node]", "data-node")
        assert api.put("/api/v1/nodes/node-9", json={"address": "10.0.0.99"}).status_code == 200
        # Live, not the page's 15 s poll: 5 s is far from either on a loaded machine.
        wait_until(lambda: "10.0.0.99" in text_of(d, 'tr[data-node="node-9"]'), 5.0, "node")
        # The refused write is the one console error (the browser logs the 401).
        errors = console_errors(d)
        assert all("401" in e["message"] for e in errors), errors
    finally:
        api.close()
