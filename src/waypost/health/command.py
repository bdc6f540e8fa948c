"""Command checks: exit 0 passing, 1 warning, anything else critical; the start of the
output (stdout and stderr) is the output.

The command runs in a process group of its own, and the whole group is killed when the
check ends (a timeout cancels it) or the command exits: nothing it started outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from waypost.health.context import OUTPUT_BYTES, CheckContext
from waypost.model import Check, Status

# How long the output may keep flowing after the command exited (a child holding the
# pipe must not hold the check).
DRAIN_S = 0.2


async def _read(stream: asyncio.StreamReader, into: bytearray) -> None:
    while chunk := await stream.read(65536):
        if len(into) < OUTPUT_BYTES:
            into += chunk[: OUTPUT_BYTES - len(into)]


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def run(check: Check, ctx: CheckContext) -> tuple[Status, str]:
    argv = tuple(check.command) if isinstance(check.command, tuple) else ()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        return Status.CRITICAL, f"cannot run {argv[0]}: {exc.strerror or exc}"
    output = bytearray()
    assert proc.stdout is not None
    reader = asyncio.ensure_future(_read(proc.stdout, output))
    try:
        # Usually the output ends as the command exits. A child that keeps the pipe
        # open must not hold the check: once the command has exited, its output gets
        # DRAIN_S more, then the group is killed.
        while proc.returncode is None and not reader.done():
            await asyncio.wait({reader}, timeout=0.05)
        if not reader.done():
            await asyncio.wait({reader}, timeout=DRAIN_S)
        _kill_group(proc.pid)
        code = await proc.wait()
    finally:
        # On a timeout (this task is cancelled) and after a normal exit alike.
        _kill_group(proc.pid)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
    text = output.decode("utf-8", "replace").strip()
    shown = text if text else f"exit {code}"
    if code == 0:
        return Status.PASSING, shown
    if code == 1:
        return Status.WARNING, shown
    return Status.CRITICAL, f"exit {code}: {text}" if text else shown
