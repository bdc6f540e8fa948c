"""The dashboard's files as a browser gets them from a real server: redirects, types,
the security headers, and a clear 404 for any other name."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from waypost.api.ui import UI_DIR


def test_root_and_ui_redirect_to_the_dashboard(http: httpx.Client) -> None:
    for path in ("/", "/ui"):
        got = http.get(path)
        assert got.status_code == 302
        assert got.headers["location"] == "/ui/"


def test_every_file_the_page_loads_is_served_with_its_type_and_policy(
    http: httpx.Client,
) -> None:
    page = http.get("/ui/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    # What index.html loads, and what the modules import, all served from the package.
    wanted = set(re.findall(r'(?:src|href)="([a-z]+\.(?:js|css))"', page.text))
    for name in list(wanted):
        if name.endswith(".js"):
            wanted |= set(re.findall(r'from "\./([a-z]+\.js)"', http.get(f"/ui/{name}").text))
    assert wanted == {"app.js", "lib.js", "style.css"}
    for name in wanted:
        got = http.get(f"/ui/{name}")
        assert got.status_code == 200
        assert got.content == (Path(UI_DIR) / name).read_bytes()
        kind = "text/javascript" if name.endswith(".js") else "text/css"
        assert got.headers["content-type"] == f"{kind}; charset=utf-8"
    # No inline script or style attribute the policy would block.
    assert "<script>" not in page.text
    assert "style=" not in page.text


def test_an_unknown_dashboard_file_is_a_clear_404(http: httpx.Client) -> None:
    for name in ("nope.js", "..%2Fpy.typed", "app.js.bak"):
        got = http.get(f"/ui/{name}")
        assert got.status_code == 404
        assert got.json()["error"] == "not_found"
    assert http.post("/ui/app.js").status_code == 405
