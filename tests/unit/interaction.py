"""An interaction environment for scripted Raft scenarios (after etcd-io/raft's rafttest).

N replicas of one group (group 1, nodes 1..N), each with a ``MemoryStore``, a
``random.Random(node_id)`` and a state machine that keeps the applied payloads. Nothing happens
unless a command says so: ticks, Ready processing and message delivery are all explicit, so a
script is a precise, replayable story. Ready handling follows ``cluster.ready`` exactly: persist
(snapshot, entries, hard state), sync, then put the messages on the network, apply, advance.

The network is one queue in send order. A message sent across a partition or to a node that is
down is lost, and so is one still queued when a partition cuts its path or whose receiver is
down at delivery. Lost messages are printed as dropped when their turn to be delivered comes,
so a script shows what the cut swallowed. ``crash`` throws the replica away (with whatever it
had not yet handed out in a Ready), loses unsynced store writes and every queued message to or
from the node; ``restart`` rebuilds it from the store, its state machine from the snapshot.

Commands (``ID`` is a node id; outputs use ``cluster.describe``):

    add-nodes N [election=10 heartbeat=1 prevote=true checkquorum=true max-msg-bytes=B
                 inflight=K uncommitted=B chunk=B]
    campaign ID                      start an election now
    tick-heartbeat ID [N]            N (default 1) heartbeat intervals of ticks
    tick-election ID                 2*election ticks: a randomized timeout surely fires
    propose ID DATA                  prints the entry's index
    propose-batch ID COUNT [size=B]  COUNT entries of B bytes (default: short names)
    read-index ID CTX
    transfer-leader ID TO
    process-ready ID...              handle each node's Ready, printing it
    deliver-msgs ID... [drop=true] [type=KIND]
                                     deliver (or drop) queued messages addressed to each ID,
                                     optionally only those of one kind (App, AppResp, Vote, ...)
    stabilize [ID...]                process-ready + deliver-msgs until nothing moves
    partition A B / C [/ D ...]      messages between the sides are dropped; an id left out
                                     is a side of its own
    isolate ID | heal
    crash ID | restart ID
    compact ID INDEX                 snapshot the state machine at INDEX, then compact the log
    status ID | raft-log ID | raft-state | applied ID

A refused request prints ``error: Name(...)`` instead of raising, so a script shows refusals.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cluster.config import Config
from cluster.describe import (
    describe_data,
    describe_entry,
    describe_message,
    describe_ready,
    describe_snapshot_meta,
    message_kind,
)
from cluster.errors import NotLeader, RaftError
from cluster.messages import Entry, EntryKind, Message, Snapshot, SnapshotMeta
from cluster.raft import Replica
from cluster.types import GroupId, NodeId
from tests.unit.datadriven import Command, ScriptError
from tests.unit.memstore import MemoryStore

GROUP = GroupId(1)

_MAX_STABILIZE_ROUNDS = 1000
_LOG_LIMIT = 12  # raft-log prints entries one by one up to this many, then runs of a term


def encode_payloads(payloads: Iterable[bytes]) -> bytes:
    """The state machine's snapshot format: length-prefixed payloads."""
    return b"".join(struct.pack(">I", len(p)) + p for p in payloads)


def decode_payloads(data: bytes) -> list[bytes]:
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        (size,) = struct.unpack_from(">I", data, pos)
        pos += 4
        out.append(data[pos : pos + size])
        pos += size
    return out


@dataclass
class StateMachine:
    """The applied payloads, plus enough history to take a snapshot at any applied index."""

    index: int = 0
    payloads: list[bytes] = field(default_factory=list)
    _history: dict[int, tuple[int, int]] = field(default_factory=dict)  # index -> (term, count)

    def restore(self, snapshot: Snapshot) -> None:
        self.index = snapshot.meta.index
        self.payloads = decode_payloads(snapshot.data)
        self._history = {snapshot.meta.index: (snapshot.meta.term, len(self.payloads))}

    def apply(self, entry: Entry) -> None:
        if entry.index != self.index + 1:
            raise AssertionError(f"applying {entry.index} after {self.index}: gap or repeat")
        self.index = entry.index
        if entry.kind is EntryKind.NORMAL:
            self.payloads.append(entry.data)
        self._history[entry.index] = (entry.term, len(self.payloads))

    def snapshot(self, index: int, voters: tuple[NodeId, ...]) -> Snapshot:
        if index not in self._history:
            raise ScriptError(f"cannot snapshot at {index}: not applied (applied={self.index})")
        term, count = self._history[index]
        return Snapshot(SnapshotMeta(index, term, voters), encode_payloads(self.payloads[:count]))


@dataclass
class InFlight:
    """A queued message; ``lost`` names why it will be dropped ("" while it may arrive)."""

    msg: Message
    lost: str = ""


@dataclass
class Node:
    config: Config
    store: MemoryStore
    replica: Replica | None
    sm: StateMachine


def _describe_error(exc: RaftError) -> str:
    if isinstance(exc, NotLeader):
        return f"error: NotLeader(leader={exc.leader})"
    return f"error: {type(exc).__name__}({str(exc)!r})"


def _indent(text: str) -> list[str]:
    return ["  " + line for line in text.splitlines()]


class InteractionEnv:
    """Runs commands of a scenario script; ``handle`` is the datadriven handler."""

    def __init__(self) -> None:
        self.nodes: dict[NodeId, Node] = {}
        self.network: list[InFlight] = []
        self._side: dict[NodeId, int] = {}  # partition side of each node; empty = healed
        self._handlers: dict[str, Callable[[Command], str]] = {
            "add-nodes": self._add_nodes,
            "campaign": self._campaign,
            "tick-heartbeat": self._tick_heartbeat,
            "tick-election": self._tick_election,
            "propose": self._propose,
            "propose-batch": self._propose_batch,
            "read-index": self._read_index,
            "transfer-leader": self._transfer_leader,
            "process-ready": self._process_ready_cmd,
            "deliver-msgs": self._deliver_msgs_cmd,
            "stabilize": self._stabilize,
            "partition": self._partition,
            "isolate": self._isolate,
            "heal": self._heal,
            "crash": self._crash,
            "restart": self._restart,
            "compact": self._compact,
            "status": self._status,
            "raft-log": self._raft_log,
            "raft-state": self._raft_state,
            "applied": self._applied,
        }

    def handle(self, cmd: Command) -> str:
        handler = self._handlers.get(cmd.name)
        if handler is None:
            raise ScriptError(f"{cmd.pos}: unknown command {cmd.name!r}")
        try:
            return handler(cmd)
        except RaftError as exc:
            return _describe_error(exc)

    # ---- arguments ---------------------------------------------------------------------------

    def _ids(self, cmd: Command, *, default_all: bool = False) -> list[NodeId]:
        raw = cmd.positional()
        if not raw and default_all:
            return sorted(self.nodes)
        ids = [self._node_id(cmd, r) for r in raw]
        if not ids:
            raise ScriptError(f"{cmd.pos}: {cmd.name} needs node ids")
        return ids

    def _node_id(self, cmd: Command, raw: str) -> NodeId:
        try:
            node = NodeId(int(raw))
        except ValueError:
            raise ScriptError(f"{cmd.pos}: {raw!r} is not a node id") from None
        if node not in self.nodes:
            raise ScriptError(f"{cmd.pos}: no node {node}")
        return node

    def _args(self, cmd: Command, count: int) -> list[str]:
        args = cmd.positional()
        if len(args) != count:
            raise ScriptError(f"{cmd.pos}: {cmd.name} takes {count} positional arguments")
        return args

    def _one(self, cmd: Command) -> NodeId:
        return self._node_id(cmd, self._args(cmd, 1)[0])

    def _up(self, cmd: Command, node: NodeId) -> Replica:
        replica = self.nodes[node].replica
        if replica is None:
            raise ScriptError(f"{cmd.pos}: node {node} is down")
        return replica

    # ---- set-up and inputs -------------------------------------------------------------------

    def _add_nodes(self, cmd: Command) -> str:
        if self.nodes:
            raise ScriptError(f"{cmd.pos}: add-nodes may be used once")
        count = int(self._args(cmd, 1)[0])
        voters = tuple(NodeId(i) for i in range(1, count + 1))
        defaults = Config(voters[0], GROUP, voters)
        for node in voters:
            config = Config(
                node,
                GROUP,
                voters,
                election_ticks=cmd.get_int("election", defaults.election_ticks),
                heartbeat_ticks=cmd.get_int("heartbeat", defaults.heartbeat_ticks),
                pre_vote=cmd.get_bool("prevote", defaults.pre_vote),
                check_quorum=cmd.get_bool("checkquorum", defaults.check_quorum),
                max_msg_bytes=cmd.get_int("max-msg-bytes", defaults.max_msg_bytes),
                max_inflight_msgs=cmd.get_int("inflight", defaults.max_inflight_msgs),
                max_uncommitted_bytes=cmd.get_int("uncommitted", defaults.max_uncommitted_bytes),
                snapshot_chunk_bytes=cmd.get_int("chunk", defaults.snapshot_chunk_bytes),
            )
            store = MemoryStore()
            store.ensure_group(GROUP, voters)
            store.sync()
            replica = Replica(config, random.Random(node), store.load(GROUP))
            self.nodes[node] = Node(config, store, replica, StateMachine())
        return self._raft_state(cmd)

    def _campaign(self, cmd: Command) -> str:
        self._up(cmd, self._one(cmd)).campaign()
        return ""

    def _tick(self, cmd: Command, node: NodeId, ticks: int) -> str:
        replica = self._up(cmd, node)
        for _ in range(ticks):
            replica.tick()
        return ""

    def _tick_heartbeat(self, cmd: Command) -> str:
        args = cmd.positional()
        if len(args) not in (1, 2):
            raise ScriptError(f"{cmd.pos}: tick-heartbeat ID [N]")
        node = self._node_id(cmd, args[0])
        rounds = int(args[1]) if len(args) == 2 else 1
        return self._tick(cmd, node, rounds * self.nodes[node].config.heartbeat_ticks)

    def _tick_election(self, cmd: Command) -> str:
        node = self._one(cmd)
        return self._tick(cmd, node, 2 * self.nodes[node].config.election_ticks)

    def _propose(self, cmd: Command) -> str:
        raw_id, data = self._args(cmd, 2)
        node = self._node_id(cmd, raw_id)
        return f"index={self._up(cmd, node).propose(data.encode())}"

    def _propose_batch(self, cmd: Command) -> str:
        raw_id, raw_count = self._args(cmd, 2)
        node = self._node_id(cmd, raw_id)
        count = int(raw_count)
        size = cmd.get_int("size", 0)
        datas = [f"b{i}".encode().ljust(size, b".") for i in range(count)]
        first = self._up(cmd, node).propose_batch(datas)
        return f"index={first}..{first + count - 1}"

    def _read_index(self, cmd: Command) -> str:
        raw_id, context = self._args(cmd, 2)
        self._up(cmd, self._node_id(cmd, raw_id)).read_index(context.encode())
        return ""

    def _transfer_leader(self, cmd: Command) -> str:
        raw_id, raw_to = self._args(cmd, 2)
        replica = self._up(cmd, self._node_id(cmd, raw_id))
        replica.transfer_leader(self._node_id(cmd, raw_to))
        return ""

    # ---- the runtime loop --------------------------------------------------------------------

    def _handle_ready(self, node: NodeId) -> str:
        """One turn of the loop in ``cluster.ready``'s order."""
        n = self.nodes[node]
        replica = n.replica
        assert replica is not None
        rd = replica.ready()
        if rd.snapshot is not None:
            n.store.save_snapshot(GROUP, rd.snapshot, discard_log=True)
        n.store.append(GROUP, rd.entries)
        if rd.hard_state is not None:
            n.store.set_hard_state(GROUP, rd.hard_state)
        if rd.must_sync:
            n.store.sync()
        self.network += [InFlight(m, self._lost_reason(m)) for m in rd.messages]
        if rd.snapshot is not None:
            n.sm.restore(rd.snapshot)
        for entry in rd.committed_entries:
            n.sm.apply(entry)
        replica.advance(rd)
        return describe_ready(rd)

    def _process_ready_cmd(self, cmd: Command) -> str:
        nodes = self._ids(cmd)
        for node in nodes:
            self._up(cmd, node)
        if len(nodes) == 1:
            return self._handle_ready(nodes[0])
        lines: list[str] = []
        for node in nodes:
            lines.append(f"> {node} handling Ready")
            lines += _indent(self._handle_ready(node))
        return "\n".join(lines)

    def _cut(self, msg: Message) -> bool:
        """Does the current partition separate the sender and the receiver of ``msg``?"""
        return bool(self._side) and self._side.get(msg.sender) != self._side.get(msg.to)

    def _lost_reason(self, msg: Message) -> str:
        """Why ``msg`` cannot arrive now ("" when it can)."""
        if self._cut(msg):
            return "partition"
        dest = self.nodes.get(msg.to)
        if dest is None or dest.replica is None:
            return "down"
        return ""

    def _deliver(self, node: NodeId, *, drop: bool = False, kind: str = "") -> list[str]:
        """Deliver (or drop) the queued messages addressed to ``node``, in send order."""
        mine = [
            f
            for f in self.network
            if f.msg.to == node and (not kind or message_kind(f.msg) == kind)
        ]
        if not mine:
            return []
        taken = {id(f) for f in mine}
        self.network = [f for f in self.network if id(f) not in taken]
        lines: list[str] = []
        for flight in mine:
            msg = flight.msg
            replica = self.nodes[node].replica
            if drop:
                lines.append(f"dropped: {describe_message(msg)}")
            elif reason := flight.lost or self._lost_reason(msg):
                lines.append(f"dropped ({reason}): {describe_message(msg)}")
            else:
                assert replica is not None
                lines.append(describe_message(msg))
                replica.step(msg)
        return lines

    def _deliver_msgs_cmd(self, cmd: Command) -> str:
        nodes = self._ids(cmd)
        drop = cmd.get_bool("drop", False)
        kind = cmd.get("type", "")
        if len(nodes) == 1:
            return "\n".join(self._deliver(nodes[0], drop=drop, kind=kind))
        lines: list[str] = []
        for node in nodes:
            delivered = self._deliver(node, drop=drop, kind=kind)
            if delivered:
                lines.append(f"> {node} receiving messages")
                lines += ["  " + line for line in delivered]
        return "\n".join(lines)

    def _stabilize(self, cmd: Command) -> str:
        nodes = self._ids(cmd, default_all=True)
        lines: list[str] = []
        for _ in range(_MAX_STABILIZE_ROUNDS):
            moved = False
            for node in nodes:
                replica = self.nodes[node].replica
                if replica is not None and replica.has_ready():
                    moved = True
                    lines.append(f"> {node} handling Ready")
                    lines += _indent(self._handle_ready(node))
            for node in nodes:
                delivered = self._deliver(node)
                if delivered:
                    moved = True
                    lines.append(f"> {node} receiving messages")
                    lines += ["  " + line for line in delivered]
            if not moved:
                return "\n".join(lines)
        raise AssertionError(f"{cmd.pos}: not stable after {_MAX_STABILIZE_ROUNDS} rounds")

    # ---- faults ------------------------------------------------------------------------------

    def _partition(self, cmd: Command) -> str:
        sides: list[list[NodeId]] = [[]]
        for raw in cmd.positional():
            if raw == "/":
                sides.append([])
            else:
                sides[-1].append(self._node_id(cmd, raw))
        if len(sides) < 2 or any(not side for side in sides):
            raise ScriptError(f"{cmd.pos}: partition A B / C ...")
        side = {node: i for i, members in enumerate(sides) for node in members}
        for node in self.nodes:
            side.setdefault(node, len(sides) + node)
        self._set_partition(side)
        return ""

    def _isolate(self, cmd: Command) -> str:
        node = self._one(cmd)
        self._set_partition({n: int(n == node) for n in self.nodes})
        return ""

    def _set_partition(self, side: dict[NodeId, int]) -> None:
        """Cut the network; messages already queued across the cut are lost with it."""
        self._side = side
        for flight in self.network:
            if not flight.lost and self._cut(flight.msg):
                flight.lost = "partition"

    def _heal(self, cmd: Command) -> str:
        self._side = {}
        return ""

    def _crash(self, cmd: Command) -> str:
        node = self._one(cmd)
        n = self.nodes[node]
        self._up(cmd, node)
        n.replica = None
        n.store.crash()
        n.sm = StateMachine()
        self.network = [f for f in self.network if node not in (f.msg.sender, f.msg.to)]
        return ""

    def _restart(self, cmd: Command) -> str:
        node = self._one(cmd)
        n = self.nodes[node]
        if n.replica is not None:
            raise ScriptError(f"{cmd.pos}: node {node} is up")
        stored = n.store.load(GROUP)
        if stored.snapshot is not None:
            n.sm.restore(stored.snapshot)
        n.replica = Replica(n.config, random.Random(node), stored, applied=n.sm.index)
        hs = stored.hard_state
        parts = [f"term={hs.term} vote={hs.voted_for} commit={hs.commit}"]
        if stored.snapshot is not None:
            parts.append(f"snapshot={describe_snapshot_meta(stored.snapshot.meta)}")
        if stored.entries:
            parts.append(f"entries={stored.entries[0].index}..{stored.entries[-1].index}")
        else:
            parts.append("entries=none")
        return "loaded: " + " ".join(parts)

    def _compact(self, cmd: Command) -> str:
        raw_id, raw_index = self._args(cmd, 2)
        node = self._node_id(cmd, raw_id)
        n = self.nodes[node]
        replica = self._up(cmd, node)
        snapshot = n.sm.snapshot(int(raw_index), n.config.voters)
        n.store.save_snapshot(GROUP, snapshot, discard_log=False)
        replica.compact(snapshot)
        return f"snapshot {describe_snapshot_meta(snapshot.meta)} size={len(snapshot.content)}"

    # ---- inspection --------------------------------------------------------------------------

    def _state_line(self, node: NodeId) -> str:
        replica = self.nodes[node].replica
        if replica is None:
            return f"{node}: down"
        return (
            f"{node}: {replica.role.value} term={replica.term} lead={replica.leader} "
            f"commit={replica.commit_index} applied={replica.applied_index} "
            f"last={replica.last_index}"
        )

    def _raft_state(self, cmd: Command) -> str:
        return "\n".join(self._state_line(node) for node in sorted(self.nodes))

    def _status(self, cmd: Command) -> str:
        node = self._one(cmd)
        lines = [self._state_line(node)]
        for peer, pr in sorted(self._up(cmd, node).status().progress.items()):
            lines.append(
                f"  {peer}: match={pr.match} next={pr.next} {pr.state.value} inflight={pr.inflight}"
            )
        return "\n".join(lines)

    def _raft_log(self, cmd: Command) -> str:
        node = self._one(cmd)
        replica = self._up(cmd, node)
        lines: list[str] = []
        if replica.snapshot_meta is not None:
            lines.append(f"snapshot {describe_snapshot_meta(replica.snapshot_meta)}")
        entries = replica.entries(replica.first_index, replica.last_index + 1)
        if len(entries) <= _LOG_LIMIT:
            lines += [describe_entry(e) for e in entries]
        else:
            lines += _term_runs(entries)
        return "\n".join(lines) if lines else "(empty)"

    def _applied(self, cmd: Command) -> str:
        sm = self.nodes[self._one(cmd)].sm
        shown = [describe_data(p) for p in sm.payloads]
        if len(shown) > _LOG_LIMIT:
            shown = [*shown[:3], f"...({len(shown) - 5} more)", *shown[-2:]]
        head = f"applied={sm.index} payloads={len(sm.payloads)}"
        return f"{head}: {', '.join(shown)}" if shown else head


def _term_runs(entries: list[Entry]) -> list[str]:
    """A long log as one line per run of a term: ``1/2..1/51 (50 entries)``."""
    lines: list[str] = []
    start = 0
    for i in range(1, len(entries) + 1):
        if i == len(entries) or entries[i].term != entries[start].term:
            first, last = entries[start], entries[i - 1]
            if first is last:
                lines.append(describe_entry(first))
            else:
                lines.append(
                    f"{first.term}/{first.index}..{last.term}/{last.index} ({i - start} entries)"
                )
            start = i
    return lines
