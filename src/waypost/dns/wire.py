"""The DNS hot path: read a query's header and question straight from its bytes, and
answer from cached wire bytes with the query's ID, RD bit and question (as asked, case
and all) patched in. Anything unusual (compression in the question, several questions,
records other than one OPT, another opcode) is left to the slow path (dnspython).
"""

from __future__ import annotations

from typing import NamedTuple

OPT = 41
MAX_NAME = 255


class Question(NamedTuple):
    """What the fast path needs of a query."""

    id: bytes
    rd: int
    name: bytes  # wire form, lower case (the cache key)
    end: int  # where the question ends (after QTYPE, QCLASS)
    qtype: int
    qclass: int
    edns: bool
    payload: int  # the requester's UDP payload size (512 without EDNS)
    do: bool


def parse(data: bytes) -> Question | None:
    """The question of a plain query, or None when the slow path must look."""
    n = len(data)
    if n < 17:
        return None
    flags = data[2]
    # QR must be 0 (a query), opcode 0; QDCOUNT 1, ANCOUNT 0, NSCOUNT 0, ARCOUNT 0 or 1.
    if flags & 0xF8 or data[4:10] != b"\x00\x01\x00\x00\x00\x00" or data[10] or data[11] > 1:
        return None
    i = 12
    while True:
        length = data[i]
        if length == 0:
            i += 1
            break
        if length > 63:  # a compression pointer (or a reserved label type) in a question
            return None
        i += length + 1
        if i - 12 > MAX_NAME or i >= n:
            return None
    if i + 4 > n:
        return None
    name = data[12:i].lower()
    qtype = (data[i] << 8) | data[i + 1]
    qclass = (data[i + 2] << 8) | data[i + 3]
    end = i + 4
    edns = False
    payload = 512
    do = False
    if data[11] == 1:
        # One additional record: it must be an OPT of version 0 and end the message.
        if end + 11 > n or data[end] != 0 or (data[end + 1] << 8 | data[end + 2]) != OPT:
            return None
        if data[end + 6] != 0:  # EDNS version
            return None
        rdlen = data[end + 9] << 8 | data[end + 10]
        if end + 11 + rdlen != n:
            return None
        edns = True
        payload = max(data[end + 3] << 8 | data[end + 4], 512)
        do = bool(data[end + 7] & 0x80)
    elif end != n:
        return None
    return Question(data[:2], flags & 0x01, name, end, qtype, qclass, edns, payload, do)


def patch(cached: bytes, data: bytes, q: Question) -> bytes:
    """``cached`` (built with ID 0 and the question in lower case) as the answer to
    ``data``: its ID, its RD bit, its question exactly as sent."""
    return b"".join(
        (q.id, bytes((cached[2] | q.rd,)), cached[3:12], data[12 : q.end], cached[q.end :])
    )
