"""The dashboard's files (``waypost/ui/``) at ``/ui/``; ``/`` redirects there.

The files are plain HTML, CSS and JavaScript modules shipped in the package (no build
step). They are read once when the application is built and served from memory with a
strict Content-Security-Policy: scripts, styles and connections to this origin only, so
nothing the registry holds (names, meta, check output) can run as code in the page.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from waypost.errors import NotFound

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}
HEADERS = {
    # The files change with the installed version: always revalidated, never stale.
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
}


def ui_files(folder: Path = UI_DIR) -> dict[str, tuple[bytes, str]]:
    """Every servable file of ``folder`` by name: its bytes and content type."""
    out: dict[str, tuple[bytes, str]] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            kind = TYPES.get(path.suffix)
            if kind is not None and path.is_file():
                out[path.name] = (path.read_bytes(), kind)
    return out


def add_ui_routes(router: web.UrlDispatcher, files: dict[str, tuple[bytes, str]]) -> None:
    """``/`` and ``/ui`` redirect to ``/ui/``; ``/ui/`` is ``index.html``; ``/ui/NAME`` a
    file (404 through the error middleware for any other name)."""

    async def to_ui(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/ui/")

    async def page(request: web.Request) -> web.StreamResponse:
        name = request.match_info.get("name") or "index.html"
        found = files.get(name)
        if found is None:
            raise NotFound(f"/ui/{name}: no such dashboard file", field="name")
        body, kind = found
        return web.Response(body=body, headers={**HEADERS, "Content-Type": kind})

    router.add_get("/", to_ui)
    router.add_get("/ui", to_ui)
    router.add_get("/ui/", page)
    router.add_get("/ui/{name}", page)
