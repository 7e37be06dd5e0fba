"""The codec round-trips every message type exactly and rejects malformed input by field name."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.codec import MAX_VALUE, CodecError, decode, decode_batch, encode, encode_batch
from cluster.errors import RaftError
from cluster.messages import (
    MESSAGE_TYPES,
    AppendRequest,
    AppendResponse,
    Entry,
    EntryKind,
    Heartbeat,
    HeartbeatResponse,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    SnapshotAck,
    SnapshotChunk,
    SnapshotMeta,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from cluster.types import GroupId, NodeId
from proto import raft_pb2

# ---------------------------------------------------------------------------------------------
# Strategies: one per dataclass, over the full range the codec accepts.
# ---------------------------------------------------------------------------------------------

numbers = st.one_of(st.integers(0, 3), st.integers(0, MAX_VALUE))
node_ids = st.integers(1, MAX_VALUE).map(NodeId)
group_ids = st.integers(0, MAX_VALUE).map(GroupId)
blobs = st.binary(max_size=64)

entries = st.builds(
    Entry, term=numbers, index=numbers, data=blobs, kind=st.sampled_from(list(EntryKind))
)
metas = st.builds(
    SnapshotMeta, index=numbers, term=numbers, voters=st.lists(node_ids, max_size=5).map(tuple)
)


def _header() -> dict[str, Any]:
    return {"group": group_ids, "sender": node_ids, "to": node_ids, "term": numbers}


@st.composite
def snapshot_chunks(draw: st.DrawFn) -> SnapshotChunk:
    data = draw(blobs)
    offset = draw(numbers.filter(lambda n: n <= MAX_VALUE - 2 * len(data)))
    done = draw(st.booleans())
    extra = 0 if done else draw(st.integers(0, MAX_VALUE - offset - len(data)))
    return SnapshotChunk(
        group=draw(group_ids),
        sender=draw(node_ids),
        to=draw(node_ids),
        term=draw(numbers),
        meta=draw(metas),
        offset=offset,
        data=data,
        total_size=offset + len(data) + extra,
        done=done,
    )


STRATEGIES: dict[type, st.SearchStrategy[Any]] = {
    VoteRequest: st.builds(
        VoteRequest,
        **_header(),
        last_log_index=numbers,
        last_log_term=numbers,
        pre_vote=st.booleans(),
        transfer=st.booleans(),
    ),
    VoteResponse: st.builds(
        VoteResponse, **_header(), granted=st.booleans(), pre_vote=st.booleans()
    ),
    AppendRequest: st.builds(
        AppendRequest,
        **_header(),
        prev_log_index=numbers,
        prev_log_term=numbers,
        entries=st.lists(entries, max_size=4).map(tuple),
        leader_commit=numbers,
    ),
    AppendResponse: st.builds(
        AppendResponse,
        **_header(),
        index=numbers,
        reject=st.booleans(),
        hint_index=numbers,
        hint_term=numbers,
    ),
    Heartbeat: st.builds(Heartbeat, **_header(), commit=numbers, round=numbers),
    HeartbeatResponse: st.builds(HeartbeatResponse, **_header(), round=numbers),
    SnapshotChunk: snapshot_chunks(),
    SnapshotAck: st.builds(
        SnapshotAck,
        **_header(),
        snapshot_index=numbers,
        snapshot_term=numbers,
        next_offset=numbers,
    ),
    TimeoutNow: st.builds(TimeoutNow, **_header()),
    ReadIndexRequest: st.builds(ReadIndexRequest, **_header(), context=blobs),
    ReadIndexResponse: st.builds(ReadIndexResponse, **_header(), context=blobs, index=numbers),
}

messages: st.SearchStrategy[Message] = st.one_of(*STRATEGIES.values())


def test_every_message_type_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(MESSAGE_TYPES)


@pytest.mark.parametrize("kind", MESSAGE_TYPES, ids=lambda t: t.__name__)
@given(data=st.data())
def test_round_trip_each_type(kind: type, data: st.DataObject) -> None:
    msg = data.draw(STRATEGIES[kind])
    pb = encode(msg)
    assert decode(pb) == msg
    # ... and through the bytes a transport would carry.
    assert decode(raft_pb2.RaftMessage.FromString(pb.SerializeToString())) == msg


@given(st.lists(messages, max_size=8))
def test_batch_round_trip_keeps_order(msgs: list[Message]) -> None:
    assert decode_batch(encode_batch(msgs)) == msgs


def test_entry_kinds_survive_and_stay_enums() -> None:
    msg = AppendRequest(
        group=GroupId(1),
        sender=NodeId(1),
        to=NodeId(2),
        term=3,
        prev_log_index=0,
        prev_log_term=0,
        entries=(Entry(3, 1, b"", EntryKind.NOOP), Entry(3, 2, b"x")),
    )
    out = decode(encode(msg))
    assert isinstance(out, AppendRequest)
    assert [e.kind for e in out.entries] == [EntryKind.NOOP, EntryKind.NORMAL]
    assert all(type(e.kind) is EntryKind for e in out.entries)


# ---------------------------------------------------------------------------------------------
# Malformed input
# ---------------------------------------------------------------------------------------------


def _vote(**overrides: Any) -> VoteRequest:
    fields: dict[str, Any] = {
        "group": GroupId(7),
        "sender": NodeId(1),
        "to": NodeId(2),
        "term": 5,
        "last_log_index": 10,
        "last_log_term": 4,
    }
    fields.update(overrides)
    return VoteRequest(**fields)


def _chunk(offset: int, data: bytes, total_size: int, done: bool) -> SnapshotChunk:
    return SnapshotChunk(
        group=GroupId(1),
        sender=NodeId(1),
        to=NodeId(2),
        term=1,
        meta=SnapshotMeta(5, 1, (NodeId(1), NodeId(2))),
        offset=offset,
        data=data,
        total_size=total_size,
        done=done,
    )


def test_codec_error_is_a_raft_error() -> None:
    assert issubclass(CodecError, RaftError)


def test_missing_body_is_rejected() -> None:
    pb = raft_pb2.RaftMessage(group=1, sender=1, to=2, term=1)
    with pytest.raises(CodecError, match="body") as info:
        decode(pb)
    assert info.value.field == "body"


def test_unknown_entry_kind_is_rejected() -> None:
    pb = encode(
        AppendRequest(
            group=GroupId(1),
            sender=NodeId(1),
            to=NodeId(2),
            term=1,
            prev_log_index=0,
            prev_log_term=0,
            entries=(Entry(1, 1, b"a"), Entry(1, 2, b"b")),
        )
    )
    pb.append_request.entries[1].kind = 7  # type: ignore[assignment]  # a newer peer's kind
    wire = pb.SerializeToString()
    with pytest.raises(CodecError, match=r"append_request\.entries\[1\]\.kind: unknown") as info:
        decode(raft_pb2.RaftMessage.FromString(wire))
    assert info.value.field == "append_request.entries[1].kind"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"term": -1}, "term"),
        ({"group": -3}, "group"),
        ({"last_log_index": -1}, "vote_request.last_log_index"),
        ({"last_log_term": MAX_VALUE + 1}, "vote_request.last_log_term"),
        ({"term": 1 << 64}, "term"),
        ({"sender": 0}, "sender"),
        ({"to": 0}, "to"),
        ({"to": -2}, "to"),
    ],
)
def test_encode_rejects_out_of_range_values(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(CodecError) as info:
        encode(_vote(**overrides))
    assert info.value.field == field


def test_encode_rejects_a_bad_entry_and_voter() -> None:
    bad_entry = AppendRequest(
        group=GroupId(1),
        sender=NodeId(1),
        to=NodeId(2),
        term=1,
        prev_log_index=0,
        prev_log_term=0,
        entries=(Entry(1, 1), Entry(-1, 2)),
    )
    with pytest.raises(CodecError) as info:
        encode(bad_entry)
    assert info.value.field == "append_request.entries[1].term"

    bad_voter = SnapshotChunk(
        group=GroupId(1),
        sender=NodeId(1),
        to=NodeId(2),
        term=1,
        meta=SnapshotMeta(5, 1, (NodeId(1), NodeId(0))),
        offset=0,
        data=b"",
        total_size=0,
        done=True,
    )
    with pytest.raises(CodecError) as info:
        encode(bad_voter)
    assert info.value.field == "snapshot_chunk.meta.voters[1]"


@pytest.mark.parametrize(
    ("field_name", "value", "field"),
    [
        ("term", MAX_VALUE + 1, "term"),
        ("term", (1 << 64) - 1, "term"),
        ("group", MAX_VALUE + 1, "group"),
        ("sender", 0, "sender"),
        ("to", 0, "to"),
    ],
)
def test_decode_rejects_out_of_range_values(field_name: str, value: int, field: str) -> None:
    pb = encode(_vote())
    setattr(pb, field_name, value)
    with pytest.raises(CodecError) as info:
        decode(pb)
    assert info.value.field == field


def test_decode_rejects_overflowing_nested_value() -> None:
    pb = encode(_vote())
    pb.vote_request.last_log_index = MAX_VALUE + 1
    with pytest.raises(CodecError, match="exceeds") as info:
        decode(pb)
    assert info.value.field == "vote_request.last_log_index"


def test_decode_rejects_node_zero_among_snapshot_voters() -> None:
    pb = encode(_chunk(0, b"ab", 2, True))
    pb.snapshot_chunk.meta.voters.append(0)
    with pytest.raises(CodecError) as info:
        decode(pb)
    assert info.value.field == "snapshot_chunk.meta.voters[2]"


@pytest.mark.parametrize(
    ("offset", "data", "total_size", "done", "field"),
    [
        (0, b"abc", 2, False, "snapshot_chunk.offset"),
        (5, b"", 4, False, "snapshot_chunk.offset"),
        (0, b"ab", 4, True, "snapshot_chunk.done"),
    ],
)
def test_snapshot_chunk_must_lie_inside_its_snapshot(
    offset: int, data: bytes, total_size: int, done: bool, field: str
) -> None:
    with pytest.raises(CodecError) as info:
        encode(_chunk(offset, data, total_size, done))
    assert info.value.field == field
    # A peer that builds the same chunk by hand is refused on the way in too.
    pb = encode(_chunk(0, b"", 0, True))
    pb.snapshot_chunk.offset = offset
    pb.snapshot_chunk.data = data
    pb.snapshot_chunk.total_size = total_size
    pb.snapshot_chunk.done = done
    with pytest.raises(CodecError) as info:
        decode(pb)
    assert info.value.field == field


@pytest.mark.parametrize(
    "data",
    [b"\xff\xff\xff", b"\x0a\x05\x08", b"\x0a\xff\xff\xff\xff\x0f"],
    ids=["bad-tag", "truncated-message", "length-past-end"],
)
def test_undecodable_bytes_are_rejected(data: bytes) -> None:
    with pytest.raises(CodecError, match="MessageBatch: undecodable"):
        decode_batch(data)


def test_batch_error_names_the_message_index() -> None:
    good = encode(_vote())
    bad = encode(_vote())
    bad.ClearField("vote_request")
    wire = raft_pb2.MessageBatch(messages=[good, good, bad]).SerializeToString()
    with pytest.raises(CodecError) as info:
        decode_batch(wire)
    assert info.value.field == "messages[2].body"


def test_encode_batch_error_names_the_message_index() -> None:
    with pytest.raises(CodecError) as info:
        encode_batch([_vote(), _vote(term=-1)])
    assert info.value.field == "messages[1].term"


def test_empty_batch_round_trips() -> None:
    assert encode_batch([]) == b""
    assert decode_batch(b"") == []
