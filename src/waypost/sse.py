"""Server-Sent Events framing, both ways, with no I/O (WHATWG HTML, "server-sent events").

The server builds frames with ``frame``; the client feeds received bytes to
``SseParser`` and gets ``SseMessage`` objects back. Both sides are plain functions of
bytes, so every edge case (CRLF, split chunks, comments, id-only frames) is a unit test.
"""

from __future__ import annotations

from dataclasses import dataclass


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


class SseParser:
    """Incremental parser: ``feed`` bytes, get the complete messages they finish."""

    def __init__(self) -> None:
        self._buf = b""
        self._event = ""
        self._data: list[str] = []
        self.last_id: str | None = None
        self.retry_ms: int | None = None

    def feed(self, chunk: bytes) -> list[SseMessage]:
        self._buf += chunk
        out: list[SseMessage] = []
        while True:
            # A line ends at CRLF, LF or CR; a lone CR at the very end may be half a CRLF.
            idx_n = self._buf.find(b"\n")
            idx_r = self._buf.find(b"\r")
            if idx_n < 0 and (idx_r < 0 or idx_r == len(self._buf) - 1):
                return out
            if idx_r >= 0 and (idx_n < 0 or idx_r < idx_n):
                line = self._buf[:idx_r]
                skip = 2 if self._buf[idx_r + 1 : idx_r + 2] == b"\n" else 1
                self._buf = self._buf[idx_r + skip :]
            else:
                line = self._buf[:idx_n]
                self._buf = self._buf[idx_n + 1 :]
            msg = self._line(line.decode("utf-8", errors="replace"))
            if msg is not None:
                out.append(msg)

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
            return msg
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None
