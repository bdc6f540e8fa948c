"""HTTP and HTTPS checks: 2xx passing, 429 warning, anything else (or no answer) critical;
the start of the body is the output."""

from __future__ import annotations

import ssl

import aiohttp
from msgspec import UNSET

from waypost.health.context import OUTPUT_BYTES, CheckContext
from waypost.model import Check, Status


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
        async with ctx.session().request(
            check.method,
            url,
            headers=check.headers or None,
            data=check.body.encode() if check.body else None,
            ssl=tls if tls is not None else True,
            allow_redirects=True,
            max_redirects=10,
        ) as resp:
            head = await resp.content.read(OUTPUT_BYTES)
            code = resp.status
            reason = resp.reason or ""
    except aiohttp.ClientSSLError as exc:
        return Status.CRITICAL, f"{check.method} {url}: TLS: {exc}"
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return Status.CRITICAL, f"{check.method} {url}: {exc or type(exc).__name__}"
    text = head.decode("utf-8", "replace").strip()
    output = f"HTTP {code} {reason}" + (f": {text}" if text else "")
    if 200 <= code < 300:
        return Status.PASSING, output
    if code == 429:
        return Status.WARNING, output
    return Status.CRITICAL, output
