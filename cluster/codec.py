"""Conversion between the core's message dataclasses and their protobuf form (``proto/raft.proto``).

This is the only module that knows both sides, so the Raft core never sees protobuf and the wire
never sees a dataclass. Decoding validates what the wire types cannot: a body must be set, enum
values must be known, ids and numbers must fit the range the rest of the system stores (a signed
64-bit integer: SQLite and the log's record format), node ids must be real nodes, and a snapshot
chunk must lie inside its snapshot. Anything else raises :class:`CodecError` naming the field, so a
bad peer is reported instead of corrupting a replica. Encoding applies the same checks, so a bug in
our own sender fails loudly at the edge rather than on the remote node.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.message import DecodeError

from cluster.errors import RaftError
from cluster.messages import (
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

MAX_VALUE = (1 << 63) - 1
"""Largest id, term, index or size accepted in either direction."""

_KIND_TO_PB: dict[EntryKind, raft_pb2.EntryKind] = {
    EntryKind.NORMAL: raft_pb2.ENTRY_KIND_NORMAL,
    EntryKind.NOOP: raft_pb2.ENTRY_KIND_NOOP,
}
_KIND_FROM_PB: dict[int, EntryKind] = {int(pb): kind for kind, pb in _KIND_TO_PB.items()}


class CodecError(RaftError):
    """A message cannot be converted: ``field`` names where (a dotted path), ``problem`` what."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


# ---------------------------------------------------------------------------------------------
# Checks shared by both directions
# ---------------------------------------------------------------------------------------------


def _number(value: int, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise CodecError(field, f"expected an integer, got {type(value).__name__}")
    if value < 0:
        raise CodecError(field, f"{value} is negative")
    if value > MAX_VALUE:
        raise CodecError(field, f"{value} exceeds {MAX_VALUE}")
    return value


def _node(value: int, field: str) -> NodeId:
    if _number(value, field) == 0:
        raise CodecError(field, "must name a node (got 0)")
    return NodeId(value)


def _optional_node(value: int, field: str) -> NodeId:
    return NodeId(_number(value, field))


def _flag(value: bool, field: str) -> bool:
    if not isinstance(value, bool):
        raise CodecError(field, f"expected a bool, got {type(value).__name__}")
    return value


def _blob(value: bytes, field: str) -> bytes:
    if not isinstance(value, bytes):
        raise CodecError(field, f"expected bytes, got {type(value).__name__}")
    return value


def _check_chunk_bounds(offset: int, length: int, total_size: int, done: bool) -> None:
    if offset + length > total_size:
        raise CodecError(
            "snapshot_chunk.offset",
            f"bytes [{offset}, {offset + length}) lie outside a snapshot of {total_size} bytes",
        )
    if done and offset + length != total_size:
        raise CodecError(
            "snapshot_chunk.done",
            f"last chunk ends at {offset + length}, snapshot has {total_size} bytes",
        )


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


def _encode_entry(entry: Entry, field: str) -> raft_pb2.Entry:
    kind = _KIND_TO_PB.get(entry.kind)
    if kind is None:
        raise CodecError(f"{field}.kind", f"unknown EntryKind {entry.kind!r}")
    return raft_pb2.Entry(
        term=_number(entry.term, f"{field}.term"),
        index=_number(entry.index, f"{field}.index"),
        data=_blob(entry.data, f"{field}.data"),
        kind=kind,
    )


def _encode_meta(meta: SnapshotMeta, field: str) -> raft_pb2.SnapshotMeta:
    return raft_pb2.SnapshotMeta(
        index=_number(meta.index, f"{field}.index"),
        term=_number(meta.term, f"{field}.term"),
        voters=[_node(v, f"{field}.voters[{i}]") for i, v in enumerate(meta.voters)],
    )


def encode(msg: Message) -> raft_pb2.RaftMessage:
    """The protobuf envelope of ``msg``; raises :class:`CodecError` on out-of-range fields."""
    pb = raft_pb2.RaftMessage(
        group=_number(msg.group, "group"),
        sender=_node(msg.sender, "sender"),
        to=_node(msg.to, "to"),
        term=_number(msg.term, "term"),
    )
    match msg:
        case VoteRequest():
            pb.vote_request.CopyFrom(
                raft_pb2.VoteRequest(
                    last_log_index=_number(msg.last_log_index, "vote_request.last_log_index"),
                    last_log_term=_number(msg.last_log_term, "vote_request.last_log_term"),
                    pre_vote=_flag(msg.pre_vote, "vote_request.pre_vote"),
                    transfer=_flag(msg.transfer, "vote_request.transfer"),
                )
            )
        case VoteResponse():
            pb.vote_response.CopyFrom(
                raft_pb2.VoteResponse(
                    granted=_flag(msg.granted, "vote_response.granted"),
                    pre_vote=_flag(msg.pre_vote, "vote_response.pre_vote"),
                )
            )
        case AppendRequest():
            pb.append_request.CopyFrom(
                raft_pb2.AppendRequest(
                    prev_log_index=_number(msg.prev_log_index, "append_request.prev_log_index"),
                    prev_log_term=_number(msg.prev_log_term, "append_request.prev_log_term"),
                    entries=[
                        _encode_entry(e, f"append_request.entries[{i}]")
                        for i, e in enumerate(msg.entries)
                    ],
                    leader_commit=_number(msg.leader_commit, "append_request.leader_commit"),
                )
            )
        case AppendResponse():
            pb.append_response.CopyFrom(
                raft_pb2.AppendResponse(
                    index=_number(msg.index, "append_response.index"),
                    reject=_flag(msg.reject, "append_response.reject"),
                    hint_index=_number(msg.hint_index, "append_response.hint_index"),
                    hint_term=_number(msg.hint_term, "append_response.hint_term"),
                )
            )
        case Heartbeat():
            pb.heartbeat.CopyFrom(
                raft_pb2.Heartbeat(
                    commit=_number(msg.commit, "heartbeat.commit"),
                    round=_number(msg.round, "heartbeat.round"),
                )
            )
        case HeartbeatResponse():
            pb.heartbeat_response.CopyFrom(
                raft_pb2.HeartbeatResponse(round=_number(msg.round, "heartbeat_response.round"))
            )
        case SnapshotChunk():
            offset = _number(msg.offset, "snapshot_chunk.offset")
            data = _blob(msg.data, "snapshot_chunk.data")
            total_size = _number(msg.total_size, "snapshot_chunk.total_size")
            done = _flag(msg.done, "snapshot_chunk.done")
            _check_chunk_bounds(offset, len(data), total_size, done)
            pb.snapshot_chunk.CopyFrom(
                raft_pb2.SnapshotChunk(
                    meta=_encode_meta(msg.meta, "snapshot_chunk.meta"),
                    offset=offset,
                    data=data,
                    total_size=total_size,
                    done=done,
                )
            )
        case SnapshotAck():
            pb.snapshot_ack.CopyFrom(
                raft_pb2.SnapshotAck(
                    snapshot_index=_number(msg.snapshot_index, "snapshot_ack.snapshot_index"),
                    snapshot_term=_number(msg.snapshot_term, "snapshot_ack.snapshot_term"),
                    next_offset=_number(msg.next_offset, "snapshot_ack.next_offset"),
                )
            )
        case TimeoutNow():
            pb.timeout_now.SetInParent()
        case ReadIndexRequest():
            pb.read_index_request.CopyFrom(
                raft_pb2.ReadIndexRequest(context=_blob(msg.context, "read_index_request.context"))
            )
        case ReadIndexResponse():
            pb.read_index_response.CopyFrom(
                raft_pb2.ReadIndexResponse(
                    context=_blob(msg.context, "read_index_response.context"),
                    index=_number(msg.index, "read_index_response.index"),
                )
            )
        case _:
            raise CodecError("body", f"not a Raft message: {type(msg).__name__}")
    return pb


def encode_batch(msgs: Iterable[Message]) -> bytes:
    """One ``MessageBatch`` holding ``msgs`` in order, serialized."""
    batch = raft_pb2.MessageBatch()
    for i, msg in enumerate(msgs):
        try:
            batch.messages.append(encode(msg))
        except CodecError as e:
            raise CodecError(f"messages[{i}].{e.field}", e.problem) from e
    return batch.SerializeToString()


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def _decode_entry(pb: raft_pb2.Entry, field: str) -> Entry:
    kind = _KIND_FROM_PB.get(int(pb.kind))
    if kind is None:
        raise CodecError(f"{field}.kind", f"unknown EntryKind {int(pb.kind)}")
    return Entry(
        term=_number(pb.term, f"{field}.term"),
        index=_number(pb.index, f"{field}.index"),
        data=pb.data,
        kind=kind,
    )


def _decode_meta(pb: raft_pb2.SnapshotMeta, field: str) -> SnapshotMeta:
    return SnapshotMeta(
        index=_number(pb.index, f"{field}.index"),
        term=_number(pb.term, f"{field}.term"),
        voters=tuple(_node(v, f"{field}.voters[{i}]") for i, v in enumerate(pb.voters)),
    )


def decode(pb: raft_pb2.RaftMessage) -> Message:
    """The dataclass ``pb`` stands for; raises :class:`CodecError` if it is malformed."""
    group = GroupId(_number(pb.group, "group"))
    sender = _node(pb.sender, "sender")
    to = _node(pb.to, "to")
    term = _number(pb.term, "term")
    body = pb.WhichOneof("body")
    match body:
        case "vote_request":
            vr = pb.vote_request
            return VoteRequest(
                group=group,
                sender=sender,
                to=to,
                term=term,
                last_log_index=_number(vr.last_log_index, "vote_request.last_log_index"),
                last_log_term=_number(vr.last_log_term, "vote_request.last_log_term"),
                pre_vote=vr.pre_vote,
                transfer=vr.transfer,
            )
        case "vote_response":
            vp = pb.vote_response
            return VoteResponse(
                group=group,
                sender=sender,
                to=to,
                term=term,
                granted=vp.granted,
                pre_vote=vp.pre_vote,
            )
        case "append_request":
            ar = pb.append_request
            return AppendRequest(
                group=group,
                sender=sender,
                to=to,
                term=term,
                prev_log_index=_number(ar.prev_log_index, "append_request.prev_log_index"),
                prev_log_term=_number(ar.prev_log_term, "append_request.prev_log_term"),
                entries=tuple(
                    _decode_entry(e, f"append_request.entries[{i}]")
                    for i, e in enumerate(ar.entries)
                ),
                leader_commit=_number(ar.leader_commit, "append_request.leader_commit"),
            )
        case "append_response":
            ap = pb.append_response
            return AppendResponse(
                group=group,
                sender=sender,
                to=to,
                term=term,
                index=_number(ap.index, "append_response.index"),
                reject=ap.reject,
                hint_index=_number(ap.hint_index, "append_response.hint_index"),
                hint_term=_number(ap.hint_term, "append_response.hint_term"),
            )
        case "heartbeat":
            hb = pb.heartbeat
            return Heartbeat(
                group=group,
                sender=sender,
                to=to,
                term=term,
                commit=_number(hb.commit, "heartbeat.commit"),
                round=_number(hb.round, "heartbeat.round"),
            )
        case "heartbeat_response":
            return HeartbeatResponse(
                group=group,
                sender=sender,
                to=to,
                term=term,
                round=_number(pb.heartbeat_response.round, "heartbeat_response.round"),
            )
        case "snapshot_chunk":
            sc = pb.snapshot_chunk
            offset = _number(sc.offset, "snapshot_chunk.offset")
            total_size = _number(sc.total_size, "snapshot_chunk.total_size")
            _check_chunk_bounds(offset, len(sc.data), total_size, sc.done)
            return SnapshotChunk(
                group=group,
                sender=sender,
                to=to,
                term=term,
                meta=_decode_meta(sc.meta, "snapshot_chunk.meta"),
                offset=offset,
                data=sc.data,
                total_size=total_size,
                done=sc.done,
            )
        case "snapshot_ack":
            sa = pb.snapshot_ack
            return SnapshotAck(
                group=group,
                sender=sender,
                to=to,
                term=term,
                snapshot_index=_number(sa.snapshot_index, "snapshot_ack.snapshot_index"),
                snapshot_term=_number(sa.snapshot_term, "snapshot_ack.snapshot_term"),
                next_offset=_number(sa.next_offset, "snapshot_ack.next_offset"),
            )
        case "timeout_now":
            return TimeoutNow(group=group, sender=sender, to=to, term=term)
        case "read_index_request":
            return ReadIndexRequest(
                group=group,
                sender=sender,
                to=to,
                term=term,
                context=pb.read_index_request.context,
            )
        case "read_index_response":
            ri = pb.read_index_response
            return ReadIndexResponse(
                group=group,
                sender=sender,
                to=to,
                term=term,
                context=ri.context,
                index=_number(ri.index, "read_index_response.index"),
            )
        case None:
            raise CodecError("body", "no message body set")
        case _:
            raise CodecError("body", f"unknown message body {body!r}")


def decode_batch(data: bytes) -> list[Message]:
    """The messages of a serialized ``MessageBatch``, in order."""
    try:
        batch = raft_pb2.MessageBatch.FromString(data)
    except DecodeError as e:
        raise CodecError("MessageBatch", f"undecodable bytes ({e})") from e
    out: list[Message] = []
    for i, pb in enumerate(batch.messages):
        try:
            out.append(decode(pb))
        except CodecError as e:
            raise CodecError(f"messages[{i}].{e.field}", e.problem) from e
    return out
