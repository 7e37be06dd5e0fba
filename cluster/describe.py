"""One-line, deterministic descriptions of Raft values, shared by logs, the simulation and the
scripted scenario tests, so a failing scenario and a production log read the same way.

Conventions (chosen once, used everywhere):

* ``a/b`` always reads *term/index*, as in etcd-io/raft: ``2/5 "hello"`` is the entry of term 2
  at index 5, ``prev=1/3`` is the entry before an append (term 1, index 3).
* ``1->2`` is sender->receiver; then the message kind and ``term=`` (the sender's term).
* Payloads print as a quoted ASCII string when printable, otherwise as hex, cut after
  ``DATA_LIMIT`` bytes with the full size appended; long entry lists keep their head and tail.

Pure functions over the core's dataclasses; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import assert_never

from cluster.messages import (
    AppendRequest,
    AppendResponse,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    Snapshot,
    SnapshotAck,
    SnapshotChunk,
    SnapshotMeta,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from cluster.ready import ReadState, Ready, SoftState

DATA_LIMIT = 16
"""Payload bytes shown before a description is cut."""

LIST_LIMIT = 6
"""Entries shown in full before a list is shortened to its head and tail."""

_HEAD = 3
_TAIL = 2


def describe_data(data: bytes) -> str:
    """``"text"`` for printable ASCII, ``0x…`` hex otherwise; long payloads are cut."""
    shown = data[:DATA_LIMIT]
    if all(0x20 <= b < 0x7F for b in shown):
        text = shown.decode("ascii").replace("\\", "\\\\").replace('"', '\\"')
        out = f'"{text}"'
    else:
        out = "0x" + shown.hex()
    if len(data) > DATA_LIMIT:
        out += f"...({len(data)} bytes)"
    return out


def describe_entry(entry: Entry) -> str:
    """``2/5 "hello"`` or ``2/4 NOOP``."""
    if entry.kind is EntryKind.NOOP:
        return f"{entry.term}/{entry.index} NOOP"
    return f"{entry.term}/{entry.index} {describe_data(entry.data)}"


def _shorten(items: Sequence[str]) -> list[str]:
    """Keep head and tail of a long list, with a marker saying how much was left out."""
    if len(items) <= LIST_LIMIT:
        return list(items)
    left_out = len(items) - _HEAD - _TAIL
    return [*items[:_HEAD], f"...({left_out} more)", *items[-_TAIL:]]


def describe_entries(entries: Sequence[Entry]) -> str:
    """``[2/4 NOOP, 2/5 "x"]``; long lists keep their head and tail."""
    return "[" + ", ".join(_shorten([describe_entry(e) for e in entries])) + "]"


def describe_hard_state(hs: HardState) -> str:
    return f"HardState term={hs.term} vote={hs.voted_for} commit={hs.commit}"


def describe_snapshot_meta(meta: SnapshotMeta) -> str:
    """``2/50 voters=(1,2,3)``."""
    voters = ",".join(str(v) for v in meta.voters)
    return f"{meta.term}/{meta.index} voters=({voters})"


def describe_snapshot(snapshot: Snapshot) -> str:
    return f"Snapshot {describe_snapshot_meta(snapshot.meta)} size={len(snapshot.content)}"


def describe_soft_state(ss: SoftState) -> str:
    return f"SoftState leader={ss.leader} role={ss.role.value}"


def describe_read_state(rs: ReadState) -> str:
    return f"ReadState {describe_data(rs.context)} index={rs.index}"


def _body(msg: Message) -> str:
    """Everything after ``from->to``: the kind, the term, then the kind's own fields."""
    match msg:
        case VoteRequest():
            flags = "".join(
                f" {name}" for name, on in (("pre", msg.pre_vote), ("transfer", msg.transfer)) if on
            )
            return f"Vote term={msg.term}{flags} last={msg.last_log_term}/{msg.last_log_index}"
        case VoteResponse():
            pre = " pre" if msg.pre_vote else ""
            verdict = "granted" if msg.granted else "rejected"
            return f"VoteResp term={msg.term}{pre} {verdict}"
        case AppendRequest():
            head = (
                f"App term={msg.term} prev={msg.prev_log_term}/{msg.prev_log_index} "
                f"commit={msg.leader_commit}"
            )
            return f"{head} {describe_entries(msg.entries)}" if msg.entries else head
        case AppendResponse():
            if msg.reject:
                return (
                    f"AppResp term={msg.term} reject idx={msg.index} "
                    f"hint={msg.hint_term}/{msg.hint_index}"
                )
            return f"AppResp term={msg.term} idx={msg.index}"
        case Heartbeat():
            read = f" round={msg.round}" if msg.round else ""
            return f"Heartbeat term={msg.term} commit={msg.commit}{read}"
        case HeartbeatResponse():
            read = f" round={msg.round}" if msg.round else ""
            return f"HeartbeatResp term={msg.term}{read}"
        case SnapshotChunk():
            done = " done" if msg.done else ""
            end = msg.offset + len(msg.data)
            return (
                f"Snap term={msg.term} snap={describe_snapshot_meta(msg.meta)} "
                f"bytes=[{msg.offset},{end})/{msg.total_size}{done}"
            )
        case SnapshotAck():
            return (
                f"SnapAck term={msg.term} snap={msg.snapshot_term}/{msg.snapshot_index} "
                f"next={msg.next_offset}"
            )
        case TimeoutNow():
            return f"TimeoutNow term={msg.term}"
        case ReadIndexRequest():
            return f"ReadIndex term={msg.term} ctx={describe_data(msg.context)}"
        case ReadIndexResponse():
            return f"ReadIndexResp term={msg.term} ctx={describe_data(msg.context)} idx={msg.index}"
        case _:
            assert_never(msg)


_KINDS: dict[type, str] = {
    VoteRequest: "Vote",
    VoteResponse: "VoteResp",
    AppendRequest: "App",
    AppendResponse: "AppResp",
    Heartbeat: "Heartbeat",
    HeartbeatResponse: "HeartbeatResp",
    SnapshotChunk: "Snap",
    SnapshotAck: "SnapAck",
    TimeoutNow: "TimeoutNow",
    ReadIndexRequest: "ReadIndex",
    ReadIndexResponse: "ReadIndexResp",
}


def message_kind(msg: Message) -> str:
    """The short name ``describe_message`` prints for the message's type (``App``, ``Vote``)."""
    return _KINDS[type(msg)]


def describe_message(msg: Message) -> str:
    """e.g. ``1->2 App term=2 prev=1/3 commit=3 [2/4 NOOP, 2/5 "x"]``."""
    return f"{msg.sender}->{msg.to} {_body(msg)}"


def _section(title: str, lines: Sequence[str], *, shorten: bool = False) -> list[str]:
    shown = _shorten(lines) if shorten else lines
    return [f"{title}:", *(f"  {line}" for line in shown)] if lines else []


def describe_ready(rd: Ready) -> str:
    """Multi-line; the soft state (what this replica now is) first, then the parts in the order
    the runtime acts on them. Empty parts are left out; long entry lists are shortened."""
    lines: list[str] = []
    if rd.soft_state is not None:
        lines.append(describe_soft_state(rd.soft_state))
    if rd.hard_state is not None:
        lines.append(describe_hard_state(rd.hard_state))
    lines += _section("Entries", [describe_entry(e) for e in rd.entries], shorten=True)
    if rd.snapshot is not None:
        lines.append(describe_snapshot(rd.snapshot))
    lines += _section("Messages", [describe_message(m) for m in rd.messages])
    lines += _section("Committed", [describe_entry(e) for e in rd.committed_entries], shorten=True)
    lines += _section("ReadStates", [describe_read_state(rs) for rs in rd.read_states])
    if rd.dropped_reads:
        lines.append("Dropped reads: " + ", ".join(describe_data(c) for c in rd.dropped_reads))
    return "\n".join(lines) if lines else "<empty Ready>"
