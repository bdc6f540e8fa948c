from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from waypost.sse import SseParser, comment, frame, id_only

payload = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=40
)


def test_parses_a_stream_with_comments_retry_and_crlf() -> None:
    p = SseParser()
    msgs = p.feed(b"retry: 1000\r\n\r\n: keepalive\n\nid: 7\nevent: put\ndata: {}\n\n")
    assert [(m.event, m.data, m.id) for m in msgs] == [("put", "{}", "7")]
    assert p.retry_ms == 1000


def test_an_id_only_frame_moves_the_position_without_an_event() -> None:
    p = SseParser()
    assert p.feed(id_only(42)) == []
    assert p.last_id == "42"


def test_multiline_data_is_joined_with_newlines() -> None:
    (msg,) = SseParser().feed(frame(b"a\nb", event="x", id=1))
    assert msg.data == "a\nb"


@given(
    st.lists(st.tuples(payload, st.sampled_from(["put", "delete"])), max_size=8),
    st.lists(st.integers(min_value=1, max_value=50), max_size=30),
)
def test_frames_survive_any_split_into_chunks(
    events: list[tuple[str, str]], cuts: list[int]
) -> None:
    wire = comment("hi") + b"".join(
        frame(d.encode(), event=e, id=i) for i, (d, e) in enumerate(events, 1)
    )
    p = SseParser()
    got = []
    pos = 0
    for cut in cuts:
        got += p.feed(wire[pos : pos + cut])
        pos += cut
    got += p.feed(wire[pos:])
    assert [(m.data, m.event, m.id) for m in got] == [
        (d, e, str(i)) for i, (d, e) in enumerate(events, 1)
    ]


@given(
    st.integers(min_value=0, max_value=10**18 - 1),
    st.integers(min_value=0, max_value=10**9 - 1),
    st.booleans(),
)
def test_event_ids_round_trip(revision: int, index: int, single: bool) -> None:
    from waypost.sse import WHOLE, event_id, parse_event_id

    text = event_id(revision, index, single)
    assert parse_event_id(text) == (revision, WHOLE if single else index)


@given(st.text(max_size=24))
def test_an_event_id_is_read_exactly_or_not_at_all(text: str) -> None:
    import re

    from waypost.sse import parse_event_id

    exact = re.fullmatch(r"[0-9]{1,18}(\.[0-9]{1,9})?", text, flags=re.ASCII)
    assert (parse_event_id(text) is not None) == (exact is not None)


@given(st.lists(st.binary(max_size=30), max_size=20))
def test_the_parser_takes_any_bytes_without_crashing(chunks: list[bytes]) -> None:
    p = SseParser()
    for chunk in chunks:
        for msg in p.feed(chunk):
            assert isinstance(msg.data, str)
