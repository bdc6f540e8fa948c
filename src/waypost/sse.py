"""Server-Sent Events framing, both ways, with no I/O (WHATWG HTML, "server-sent events").

The server builds frames with ``frame``; the client feeds received bytes to
``SseParser`` and gets ``SseMessage`` objects back. Both sides are plain functions of
bytes, so every edge case (CRLF, split chunks, comments, id-only frames) is a unit test.
"""

from __future__ import annotations

from dataclasses import dataclass

from waypost.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class SseMessage:
    """One dispatched event: ``event`` type, ``data`` text and the stream's ``id``."""

    event: str
    data: str
    id: str | None


def frame(data: bytes, *, event: str | None = None, id: int | str | None = None) -> bytes:
    """Encode one event; ``data`` may hold newlines (each line becomes a ``data:`` field)."""
    out = bytearray()
    if id is not None:
        out += b"id: %s\n" % str(id).encode()
    if event is not None:
        out += b"event: %s\n" % event.encode()
    for line in data.split(b"\n"):
        out += b"data: " + line + b"\n"
    out += b"\n"
    return bytes(out)


def id_only(id: int | str) -> bytes:
    """A frame that moves the client's last event id without dispatching an event."""
    return b"id: %s\n\n" % str(id).encode()


def comment(text: str = "") -> bytes:
    """A comment line: keeps idle connections (and proxies) from timing out."""
    return b": " + text.encode() + b"\n\n"


# A line longer than this ends the stream with SseTooLarge: an event's data line is one
# encoded entry, at most about 1 MiB (the API's body limit), so 4 MiB is far beyond any
# honest server while bounding what a broken or hostile one can make a client buffer.
MAX_LINE_BYTES = 4 * 1024 * 1024
# The data lines of one event together, likewise.
MAX_EVENT_BYTES = 4 * 1024 * 1024


class SseTooLarge(InvalidInput, ValueError):
    """A line or an event is over the limit: the stream is not one this parser reads."""

    code = "event_too_large"


class SseParser:
    """Incremental parser: ``feed`` bytes, get the complete messages they finish.

    Linear in what it is fed (each byte is scanned once, the buffer is cut once per
    chunk) and bounded: a partial line over MAX_LINE_BYTES raises SseTooLarge."""

    def __init__(self) -> None:
        self._buf = b""
        # A line still being received, in pieces: joined once, when its end arrives.
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._event = ""
        self._data: list[str] = []
        self._data_bytes = 0
        self.last_id: str | None = None
        self.retry_ms: int | None = None

    def feed(self, chunk: bytes) -> list[SseMessage]:
        if b"\n" not in chunk and b"\r" not in chunk:
            self._pending.append(chunk)
            self._pending_bytes += len(chunk)
            if self._pending_bytes + len(self._buf) > MAX_LINE_BYTES:
                self._pending, self._pending_bytes, self._buf = [], 0, b""
                raise SseTooLarge(f"an event stream line is over {MAX_LINE_BYTES} bytes")
            return []
        buf = b"".join([self._buf, *self._pending, chunk])
        self._pending, self._pending_bytes = [], 0
        out: list[SseMessage] = []
        pos = 0
        end = len(buf)
        while pos < end:
            # A line ends at CRLF, LF or CR; a lone CR at the very end may be half a CRLF.
            idx_n = buf.find(b"\n", pos)
            idx_r = buf.find(b"\r", pos, idx_n if idx_n >= 0 else end)
            if idx_r >= 0:
                if idx_r == end - 1:
                    break
                line = buf[pos:idx_r]
                pos = idx_r + (2 if buf[idx_r + 1 : idx_r + 2] == b"\n" else 1)
            elif idx_n >= 0:
                line = buf[pos:idx_n]
                pos = idx_n + 1
            else:
                break
            msg = self._line(line.decode("utf-8", errors="replace"))
            if msg is not None:
                out.append(msg)
        self._buf = buf[pos:]
        if len(self._buf) > MAX_LINE_BYTES:
            self._buf = b""
            raise SseTooLarge(f"an event stream line is over {MAX_LINE_BYTES} bytes")
        return out

    def _line(self, line: str) -> SseMessage | None:
        if line == "":
            if not self._data:
                self._event = ""
                return None
            msg = SseMessage(
                event=self._event or "message", data="\n".join(self._data), id=self.last_id
            )
            self._event = ""
            self._data = []
            self._data_bytes = 0
            return msg
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data_bytes += len(value) + 1
            if self._data_bytes > MAX_EVENT_BYTES:
                self._data = []
                self._data_bytes = 0
                raise SseTooLarge(f"an event's data is over {MAX_EVENT_BYTES} bytes")
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None


# --- positions in Waypost's event stream -------------------------------------------------
#
# Several events may share a revision. The only event of revision R carries the id "R"
# (as every event did before revisions held several); the events of a revision of
# several carry "R.i" (i their place in it, from 0), and an id-only frame "R" follows the
# last. Resuming from "R" gives every event of later revisions; from "R.i", the rest of R
# first.

WHOLE = -1
"""The index of a position that is past every event of its revision."""


def event_id(revision: int, index: int, single: bool) -> str:
    """The SSE id of an event (``single``: the only event of its revision)."""
    return str(revision) if single else f"{revision}.{index}"


def parse_event_id(text: str) -> tuple[int, int] | None:
    """``"R"`` -> ``(R, WHOLE)``; ``"R.i"`` -> ``(R, i)``; None when it is neither."""
    rev, dot, idx = text.partition(".")
    if not (rev.isascii() and rev.isdigit()) or len(rev) > 18:
        return None
    if not dot:
        return int(rev), WHOLE
    if not (idx.isascii() and idx.isdigit()) or len(idx) > 9:
        return None
    return int(rev), int(idx)
