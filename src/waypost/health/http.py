"""HTTP and HTTPS checks: 2xx passing, 429 warning, anything else (or no answer) critical;
the start of the body is the output."""

from __future__ import annotations

import ssl
from urllib.parse import urljoin, urlsplit

import aiohttp
from msgspec import UNSET

from waypost.health.context import OUTPUT_BYTES, CheckContext
from waypost.health.targets import same_host
from waypost.model import Check, Status

MAX_REDIRECTS = 10


async def run(check: Check, ctx: CheckContext) -> tuple[Status, str]:
    url = check.https if isinstance(check.https, str) else str(check.http)
    tls: ssl.SSLContext | bool | None = None
    if url.startswith("https://"):
        ca_file = check.ca_file if check.ca_file is not UNSET else None
        try:
            tls = await ctx.tls(check.tls_verify, ca_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            return Status.CRITICAL, f"cannot use ca_file {ca_file}: {exc}"
    try:
        head, code, reason = await _follow(ctx, check, url, tls)
    except aiohttp.ClientSSLError as exc:
        return Status.CRITICAL, f"{check.method} {url}: TLS: {exc}"
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return Status.CRITICAL, f"{check.method} {url}: {exc or type(exc).__name__}"
    if code == 0:  # a redirect elsewhere, not followed
        return Status.CRITICAL, reason
    text = head.decode("utf-8", "replace").strip()
    output = f"HTTP {code} {reason}" + (f": {text}" if text else "")
    if 200 <= code < 300:
        return Status.PASSING, output
    if code == 429:
        return Status.WARNING, output
    return Status.CRITICAL, output


async def _follow(
    ctx: CheckContext, check: Check, url: str, tls: ssl.SSLContext | bool | None
) -> tuple[bytes, int, str]:
    """The start of the answer, its status and reason, following at most
    ``MAX_REDIRECTS`` redirects on the same host (a check must not be steered elsewhere:
    health/targets.py). A redirect to another host: status 0 and why, in ``reason``."""
    host = (urlsplit(url).hostname or "").lower()
    method, data = check.method, check.body.encode() if check.body else None
    for _ in range(MAX_REDIRECTS + 1):
        async with ctx.session().request(
            method,
            url,
            headers=check.headers or None,
            data=data,
            ssl=tls if tls is not None else True,
            allow_redirects=False,
        ) as resp:
            location = resp.headers.get("Location")
            if resp.status in (301, 302, 303, 307, 308) and location:
                nxt = urljoin(url, location)
                if not same_host((urlsplit(nxt).hostname or "").lower(), host):
                    return b"", 0, f"{check.method} {url}: redirected to another host: {nxt}"
                if resp.status == 303 or (resp.status in (301, 302) and method == "POST"):
                    method, data = "GET", None
                url = nxt
                continue
            return await resp.content.read(OUTPUT_BYTES), resp.status, resp.reason or ""
    return b"", 0, f"{check.method} {url}: more than {MAX_REDIRECTS} redirects"
