"""The actor networks' wire protocol without sockets: batches round-trip (compressed
above the threshold), bad input is refused cleanly, and the outbox/inbox pair gives each
acknowledged message one handling across a resend."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waypost.actors import protocol as p

PAYLOADS = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=50),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


@given(st.lists(st.tuples(st.text(min_size=1, max_size=10), PAYLOADS), max_size=8), st.booleans())
def test_batches_round_trip(items: list[tuple[str, object]], small_threshold: bool) -> None:
    box = p.Outbox()
    frames: list[p.Frame] = [
        box.new(id=f"m{i}", node=n, port="in", payload=v) for i, (n, v) in enumerate(items)
    ]
    frames += [p.Ack(seq=1), p.Ping(at=1.5), p.Hello(network_id="a", instance_id="b", token="t")]
    data = p.encode(frames, compress_above=0 if small_threshold else p.COMPRESS_ABOVE)
    assert data[:1] == (b"Z" if small_threshold else b"J")
    assert p.decode(data) == frames


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_are_refused_cleanly(data: bytes) -> None:
    with contextlib.suppress(p.ProtocolError):
        p.decode(data)


def test_a_compressed_bomb_is_refused() -> None:
    import zlib

    bomb = b"Z" + zlib.compress(b"[" + b'{"t":"ping","at":1},' * 200_000 + b'{"t":"ping","at":1}]')
    with pytest.raises(p.ProtocolError, match="above"):
        p.decode(bomb, max_bytes=1 << 20)


def test_resent_messages_are_handled_once_in_order() -> None:
    out, inbox = p.Outbox(), p.Inbox()
    msgs = [out.new(id=f"m{i}", node="a", port="in", payload=i) for i in range(5)]
    handled = []
    for m in msgs[:3]:  # three arrive and are handled; the acks of two are lost
        assert inbox.fresh(m)
        handled.append(m.payload)
        inbox.handled(m)
    out.settled(msgs[0].seq)
    again = out.again()  # a reconnect: everything unacknowledged, in order
    assert [m.seq for m in again] == [2, 3, 4, 5]
    for m in again:
        if inbox.fresh(m):
            handled.append(m.payload)
            inbox.handled(m)
        out.settled(m.seq)  # acked (again, for 2 and 3)
    assert handled == [0, 1, 2, 3, 4]
    assert out.again() == []
    assert out.settled(2) is None
