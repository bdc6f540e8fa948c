"""The wire protocol between actor networks, without I/O.

One WebSocket per pair of network instances, opened by the one that sends first. Each
WebSocket message is a batch: one byte (``J``: JSON, ``Z``: zlib-compressed JSON) then a
JSON list of frames. Frames:

    {"t": "hello", "network_id", "instance_id", "token", "epoch"}   opener -> listener
    {"t": "welcome", "network_id", "instance_id", "epoch"}           listener -> opener
    {"t": "denied", "reason"}                               listener -> opener, then close
    {"t": "msg", "seq", "id", "node", "port", "payload", "out", "alias"}
    {"t": "ack", "seq"}        the msg with this seq was handled (and what its handler
                               emitted was acknowledged downstream)
    {"t": "nack", "seq", "kind", "error"}   it cannot be handled (no such actor...)
    {"t": "ping", "at"} / {"t": "pong", "at"}

Each direction numbers its msgs (``seq`` from 1). The sender keeps every msg until its
ack and sends the unacknowledged ones again after a reconnect (at least once on the
wire); the receiver handles them in order and remembers the highest seq it handled from
each peer instance, so a msg sent again is acknowledged without being handled twice. The
``epoch`` in the handshake changes when a process starts: a peer instance that restarted
(same ids, numbering from 1 again) gets a fresh count.
A msg with ``out`` true carries an output of an actor the receiver invoked: ``node`` is
the receiver's node (its alias for the remote actor) whose ``port`` emitted it.
"""

from __future__ import annotations

import collections
import itertools
import zlib
from typing import Any, Literal

import msgspec

from waypost.errors import InvalidInput

COMPRESS_ABOVE = 16 * 1024
MAX_MESSAGE_BYTES = 1 << 20


class Hello(msgspec.Struct, tag_field="t", tag="hello", kw_only=True):
    network_id: str
    instance_id: str
    token: str = ""
    epoch: str = ""  # new each time a process starts: a restarted peer numbers from 1
    # The secret the accepting side gave this link in its Welcome: presenting it resumes
    # the link (its numbering, what awaits an ack); without it a hello opens a new one.
    resume: str = ""


class Welcome(msgspec.Struct, tag_field="t", tag="welcome", kw_only=True):
    network_id: str
    instance_id: str
    epoch: str = ""
    resume: str = ""  # what the dialer presents to resume this link after a reconnect


class Denied(msgspec.Struct, tag_field="t", tag="denied", kw_only=True):
    reason: str


class Msg(msgspec.Struct, tag_field="t", tag="msg", kw_only=True):
    seq: int
    id: str
    node: str  # the receiver's node: its actor, or (out) its alias of the sender's actor
    port: str
    payload: Any = None
    out: bool = False
    alias: str = ""  # the sender's name for the receiver's actor, echoed in its outputs
    cause: str = ""  # (out) the id of the msg whose handling emitted this
    n: int = 0  # (out) which emit of that handling: with cause, the output's identity


class Ack(msgspec.Struct, tag_field="t", tag="ack", kw_only=True):
    seq: int


class Nack(msgspec.Struct, tag_field="t", tag="nack", kw_only=True):
    seq: int
    kind: Literal["actor_not_found", "too_large", "failed"] = "failed"
    error: str = ""


class Ping(msgspec.Struct, tag_field="t", tag="ping", kw_only=True):
    at: float


class Pong(msgspec.Struct, tag_field="t", tag="pong", kw_only=True):
    at: float


Frame = Hello | Welcome | Denied | Msg | Ack | Nack | Ping | Pong
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(list[Frame])


class ProtocolError(InvalidInput, ValueError):
    """A WebSocket message that is not a batch of frames."""

    code = "bad_frame"


def encode(frames: list[Frame], *, compress_above: int = COMPRESS_ABOVE) -> bytes:
    body = _encoder.encode(frames)
    if len(body) > compress_above:
        return b"Z" + zlib.compress(body, 1)
    return b"J" + body


def decode(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES * 4) -> list[Frame]:
    if not data:
        raise ProtocolError("an empty message")
    kind, body = data[:1], data[1:]
    if kind == b"Z":
        d = zlib.decompressobj()
        try:
            body = d.decompress(body, max_bytes + 1)
        except zlib.error as exc:
            raise ProtocolError(f"not zlib data ({exc})") from None
        if len(body) > max_bytes or d.unconsumed_tail:
            raise ProtocolError(f"a batch above {max_bytes} bytes")
    elif kind != b"J":
        raise ProtocolError(f"unknown encoding {kind!r}")
    try:
        return _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"not a batch of frames ({exc})") from None


def payload_size(payload: object) -> int:
    return len(_encoder.encode(payload))


class Outbox:
    """One direction of a link, sending: numbers msgs and keeps them until acknowledged."""

    def __init__(self) -> None:
        self._seq = itertools.count(1)
        self.unacked: collections.OrderedDict[int, Msg] = collections.OrderedDict()

    def new(
        self,
        *,
        id: str,
        node: str,
        port: str,
        payload: object,
        out: bool = False,
        alias: str = "",
        cause: str = "",
        n: int = 0,
    ) -> Msg:
        msg = Msg(
            seq=next(self._seq), id=id, node=node, port=port, payload=payload, out=out,
            alias=alias, cause=cause, n=n,
        )  # fmt: skip
        self.unacked[msg.seq] = msg
        return msg

    def settled(self, seq: int) -> Msg | None:
        """An ack or nack for ``seq`` arrived: forget the msg (None: already settled)."""
        return self.unacked.pop(seq, None)

    def again(self) -> list[Msg]:
        """What to send again after a reconnect, in order."""
        return list(self.unacked.values())


class Inbox:
    """One direction of a link, receiving: what has been handled already."""

    def __init__(self) -> None:
        self.handled_upto = 0

    def fresh(self, msg: Msg) -> bool:
        """Whether to handle ``msg`` (False: a duplicate sent again; just ack it)."""
        return msg.seq > self.handled_upto

    def handled(self, msg: Msg) -> None:
        self.handled_upto = max(self.handled_upto, msg.seq)
