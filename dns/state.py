"""The cluster map as a deterministic replicated state machine (the discovery Raft group).

Why deterministic: every discovery replica applies the same log and must reach the same map, and
a restarted replica rebuilds it by replaying that log. So nothing here reads a clock or a random
source: the time a node was last heard from is stamped into the command by the leader that
proposed it (``now_ms``), and whether a node is *up* is decided only when the map is read
(``ClusterState.view(now_ms, lease_ms)``), with the reader's clock.

Commands (JSON of frozen dataclasses, versioned; see :func:`encode_command`):

- ``Bootstrap``  fixes the cluster id, nodes, group count, rf and the placement (computed by the
  proposer with ``shards.placement`` and recorded here, so a later change of that algorithm never
  moves a running cluster's groups). The same spec again is a no-op; a different one is refused.
- ``Register``   a node's current addresses; renews its lease.
- ``Heartbeat``  renews a node's lease and carries its leader reports ``(group, leader, term)``:
  a report with a lower term than the recorded one is ignored, and so is one that names a node
  outside the group's replicas. (Leader reports ride on heartbeats rather than a separate LEADERS
  command so one heartbeat costs one log entry.)
- ``Announce``   a discovery replica's public address, proposed by every new discovery leader, so
  followers can send clients to the leader (``x-leader``) and clients learn every endpoint.

The epoch grows by one for each command that changes nodes, placements, leaders or discovery
endpoints; a lease renewal alone changes ``last_seen_ms`` but not the epoch.

The state is small (a few hundred bytes per node), so it lives in memory and a snapshot is the
whole state as JSON. Nothing else is persisted: after a restart ``applied_index()`` is 0 and Raft
restores the latest snapshot and replays the log after it.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cluster.messages import Entry, EntryKind, Snapshot
from cluster.types import NO_NODE, GroupId, NodeId
from dns.clustermap import (
    ClusterMap,
    DiscoveryEndpoint,
    GroupPlacement,
    NodeAddress,
    NodeStatus,
)

FORMAT_VERSION = 1
"""Version tag of commands and snapshots; a replica refuses (as MALFORMED) what it cannot read."""

# ---------------------------------------------------------------------------------------------
# Commands and results.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BootstrapSpec:
    """What a Bootstrap request asks for; two requests are "the same" when their specs are
    equal. ``nodes`` is kept sorted by id so the order a caller listed them in never matters."""

    cluster_id: str
    nodes: tuple[NodeAddress, ...]
    groups: int
    rf: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(sorted(self.nodes, key=lambda n: n.id)))


@dataclass(frozen=True, slots=True)
class Bootstrap:
    spec: BootstrapSpec
    placements: tuple[tuple[NodeId, ...], ...]
    """Replicas of group ``g`` at position ``g``."""


@dataclass(frozen=True, slots=True)
class Register:
    node: NodeAddress
    now_ms: int


@dataclass(frozen=True, slots=True)
class LeaderReport:
    group: GroupId
    leader: NodeId
    term: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    node_id: NodeId
    now_ms: int
    leaders: tuple[LeaderReport, ...] = ()


@dataclass(frozen=True, slots=True)
class Announce:
    replica: NodeId
    public_addr: str


Command = Bootstrap | Register | Heartbeat | Announce


class Rejection(enum.Enum):
    NOT_BOOTSTRAPPED = "not-bootstrapped"
    BOOTSTRAP_CONFLICT = "bootstrap-conflict"
    UNKNOWN_NODE = "unknown-node"
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class Applied:
    """The command took effect (``changed``: the epoch moved) or was a no-op."""

    epoch: int
    changed: bool
    ignored_reports: int = 0
    """Leader reports of a Heartbeat that were stale or named an impossible leader."""


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: Rejection
    detail: str


Result = Applied | Rejected


class MalformedCommand(ValueError):
    """Bytes that do not decode to a command or a state of this format version."""


# ---------------------------------------------------------------------------------------------
# The state.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeRecord:
    address: NodeAddress
    last_seen_ms: int = 0

    @property
    def id(self) -> NodeId:
        return self.address.id


@dataclass(frozen=True, slots=True)
class ClusterState:
    """The authoritative map. Immutable: every command yields a new value, so a reader holding
    one never sees half of a change."""

    epoch: int = 0
    bootstrap: BootstrapSpec | None = None
    nodes: tuple[NodeRecord, ...] = ()
    """By id."""
    groups: tuple[GroupPlacement, ...] = ()
    """By group id."""
    discovery: tuple[DiscoveryEndpoint, ...] = ()
    """By id."""

    def node(self, node_id: NodeId) -> NodeRecord | None:
        for rec in self.nodes:
            if rec.id == node_id:
                return rec
        return None

    def endpoint(self, replica: NodeId) -> str | None:
        """The public address discovery replica ``replica`` announced, if any."""
        for ep in self.discovery:
            if ep.id == replica:
                return ep.public_addr
        return None

    def view(self, now_ms: int, lease_ms: int) -> ClusterMap:
        """The map as a reader sees it at ``now_ms``: a node is up while its last heartbeat is
        less than ``lease_ms`` old."""
        spec = self.bootstrap
        return ClusterMap(
            cluster_id=spec.cluster_id if spec else "",
            epoch=self.epoch,
            group_count=spec.groups if spec else 0,
            rf=spec.rf if spec else 0,
            nodes=tuple(
                NodeStatus(
                    id=rec.id,
                    public_addr=rec.address.public_addr,
                    internal_addr=rec.address.internal_addr,
                    up=is_up(rec.last_seen_ms, now_ms, lease_ms),
                    last_seen_ms=rec.last_seen_ms,
                )
                for rec in self.nodes
            ),
            groups=self.groups,
            discovery=self.discovery,
            lease_ms=lease_ms,
            now_ms=now_ms,
        )


def is_up(last_seen_ms: int, now_ms: int, lease_ms: int) -> bool:
    """A lease is valid for ``lease_ms`` after the last heartbeat; never heard of is down."""
    return last_seen_ms > 0 and now_ms - last_seen_ms < lease_ms


# ---------------------------------------------------------------------------------------------
# The transition function: pure, total (never raises on a well-typed command).
# ---------------------------------------------------------------------------------------------


def transition(state: ClusterState, cmd: Command) -> tuple[ClusterState, Result]:
    """Apply ``cmd`` to ``state``: the new state and the command's result."""
    if isinstance(cmd, Announce):
        return _announce(state, cmd)
    if isinstance(cmd, Bootstrap):
        return _bootstrap(state, cmd)
    if state.bootstrap is None:
        return state, Rejected(Rejection.NOT_BOOTSTRAPPED, "the cluster is not bootstrapped yet")
    node_id = cmd.node.id if isinstance(cmd, Register) else cmd.node_id
    if state.node(node_id) is None:
        return state, Rejected(
            Rejection.UNKNOWN_NODE,
            f"node {node_id} is not in cluster {state.bootstrap.cluster_id} "
            "(membership is fixed at bootstrap)",
        )
    if isinstance(cmd, Register):
        return _register(state, cmd)
    return _heartbeat(state, cmd)


def _changed(state: ClusterState, **changes: Any) -> tuple[ClusterState, Result]:
    new = dataclasses.replace(state, epoch=state.epoch + 1, **changes)
    return new, Applied(new.epoch, changed=True)


def _announce(state: ClusterState, cmd: Announce) -> tuple[ClusterState, Result]:
    if cmd.replica <= 0 or not cmd.public_addr:
        return state, Rejected(Rejection.MALFORMED, "announce needs a replica id and an address")
    if state.endpoint(cmd.replica) == cmd.public_addr:
        return state, Applied(state.epoch, changed=False)
    others = [ep for ep in state.discovery if ep.id != cmd.replica]
    endpoints = sorted([*others, DiscoveryEndpoint(cmd.replica, cmd.public_addr)], key=_by_id)
    return _changed(state, discovery=tuple(endpoints))


def _bootstrap(state: ClusterState, cmd: Bootstrap) -> tuple[ClusterState, Result]:
    spec = cmd.spec
    if state.bootstrap is not None:
        if state.bootstrap == spec:
            return state, Applied(state.epoch, changed=False)
        return state, Rejected(
            Rejection.BOOTSTRAP_CONFLICT,
            f"cluster {state.bootstrap.cluster_id!r} is already bootstrapped with "
            f"{len(state.bootstrap.nodes)} nodes, {state.bootstrap.groups} groups, "
            f"rf {state.bootstrap.rf}; a different bootstrap is refused",
        )
    problem = _check_bootstrap(cmd)
    if problem:
        return state, Rejected(Rejection.MALFORMED, problem)
    return _changed(
        state,
        bootstrap=spec,
        nodes=tuple(NodeRecord(n) for n in spec.nodes),
        groups=tuple(GroupPlacement(GroupId(g), reps) for g, reps in enumerate(cmd.placements)),
    )


def _check_bootstrap(cmd: Bootstrap) -> str:
    spec = cmd.spec
    ids = [n.id for n in spec.nodes]
    if not spec.cluster_id or not ids or spec.groups < 1 or not 1 <= spec.rf <= len(ids):
        return "bootstrap needs a cluster id, nodes, groups >= 1 and 1 <= rf <= nodes"
    if len(set(ids)) != len(ids) or min(ids) <= 0:
        return "bootstrap node ids must be distinct and positive"
    if len(cmd.placements) != spec.groups:
        return f"{len(cmd.placements)} placements for {spec.groups} groups"
    known = set(ids)
    for g, reps in enumerate(cmd.placements):
        if len(reps) != spec.rf or len(set(reps)) != spec.rf or not set(reps) <= known:
            return f"group {g}: replicas {reps} are not {spec.rf} distinct cluster nodes"
    return ""


def _register(state: ClusterState, cmd: Register) -> tuple[ClusterState, Result]:
    old = state.node(cmd.node.id)
    assert old is not None  # transition() checked
    rec = NodeRecord(cmd.node, max(old.last_seen_ms, cmd.now_ms))
    nodes = _replace_node(state.nodes, rec)
    if old.address == cmd.node:
        # Lease renewal only: not a change of the map.
        return dataclasses.replace(state, nodes=nodes), Applied(state.epoch, changed=False)
    return _changed(state, nodes=nodes)


def _heartbeat(state: ClusterState, cmd: Heartbeat) -> tuple[ClusterState, Result]:
    old = state.node(cmd.node_id)
    assert old is not None  # transition() checked
    nodes = _replace_node(state.nodes, NodeRecord(old.address, max(old.last_seen_ms, cmd.now_ms)))
    groups = list(state.groups)
    ignored = 0
    for report in cmd.leaders:
        updated = _leader_update(groups, report)
        if updated is None:
            ignored += 1
        else:
            groups[report.group] = updated
    if tuple(groups) == state.groups:
        new = dataclasses.replace(state, nodes=nodes)
        return new, Applied(new.epoch, changed=False, ignored_reports=ignored)
    new = dataclasses.replace(state, epoch=state.epoch + 1, nodes=nodes, groups=tuple(groups))
    return new, Applied(new.epoch, changed=True, ignored_reports=ignored)


def _leader_update(groups: list[GroupPlacement], r: LeaderReport) -> GroupPlacement | None:
    """The group's placement after report ``r``; None if the report is ignored.

    Accepted: a higher term (even with no leader: the recorded leader is then known to be
    stale), or the same term naming a leader where none was known. Ignored: a lower term, a
    leader outside the group's replicas, a group out of range, and any other same-term report
    (Raft elects at most one leader per term, so the first report of a term stands).
    """
    if not 0 <= r.group < len(groups):
        return None
    cur = groups[r.group]
    if r.leader != NO_NODE and r.leader not in cur.replicas:
        return None
    if r.term > cur.term or (r.term == cur.term and cur.leader == NO_NODE):
        return dataclasses.replace(cur, leader=r.leader, term=r.term)
    if r.term == cur.term and r.leader == cur.leader:
        return cur
    return None


def _replace_node(nodes: tuple[NodeRecord, ...], rec: NodeRecord) -> tuple[NodeRecord, ...]:
    return tuple(rec if n.id == rec.id else n for n in nodes)


def _by_id(ep: DiscoveryEndpoint) -> int:
    return ep.id


# ---------------------------------------------------------------------------------------------
# The replicated state machine (the GroupStateMachine protocol of cluster.statemachine).
# ---------------------------------------------------------------------------------------------


class DiscoveryState:
    """Applies committed discovery commands; holds the current :class:`ClusterState`.

    ``on_change`` is called (in the thread/loop that applies) with the new state whenever the
    epoch moved, so the service can wake readers waiting for a newer map.
    """

    def __init__(self, on_change: Callable[[ClusterState], None] | None = None) -> None:
        self._state = ClusterState()
        self._applied = 0
        self._on_change = on_change

    @property
    def state(self) -> ClusterState:
        return self._state

    def set_listener(self, on_change: Callable[[ClusterState], None] | None) -> None:
        self._on_change = on_change

    def applied_index(self) -> int:
        """In memory only: 0 after a restart, when Raft replays from its snapshot and log."""
        return self._applied

    def apply(self, entries: Sequence[Entry]) -> list[object | None]:
        """One result per entry: None for a no-op entry (or one at or below ``applied_index``,
        which is never applied twice), else a :data:`Result`. Bytes that do not decode are
        answered ``Rejected(MALFORMED)`` on every replica alike, never raised."""
        results: list[object | None] = []
        epoch_before = self._state.epoch
        for entry in entries:
            if entry.index <= self._applied:
                results.append(None)  # already applied (a replay): never apply twice
                continue
            if entry.kind is EntryKind.NOOP:
                results.append(None)
            else:
                try:
                    cmd = decode_command(entry.data)
                except MalformedCommand as exc:
                    results.append(Rejected(Rejection.MALFORMED, str(exc)))
                else:
                    self._state, result = transition(self._state, cmd)
                    results.append(result)
            self._applied = entry.index
        if self._state.epoch != epoch_before:
            self._notify()
        return results

    def snapshot(self) -> bytes:
        """The whole state at ``applied_index()`` (it is small)."""
        return encode_state(self._state)

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the state with ``snapshot``'s (``MalformedCommand`` if it cannot be read)."""
        self._state = decode_state(snapshot.data) if snapshot.data else ClusterState()
        self._applied = snapshot.meta.index
        self._notify()

    def _notify(self) -> None:
        if self._on_change is not None:
            self._on_change(self._state)


# ---------------------------------------------------------------------------------------------
# Encoding: JSON with sorted keys, so equal values give equal bytes.
# ---------------------------------------------------------------------------------------------


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _addr_json(a: NodeAddress) -> list[object]:
    return [a.id, a.public_addr, a.internal_addr]


def encode_command(cmd: Command) -> bytes:
    body: dict[str, object]
    if isinstance(cmd, Bootstrap):
        body = {
            "op": "bootstrap",
            "cluster_id": cmd.spec.cluster_id,
            "nodes": [_addr_json(n) for n in cmd.spec.nodes],
            "groups": cmd.spec.groups,
            "rf": cmd.spec.rf,
            "placements": [list(p) for p in cmd.placements],
        }
    elif isinstance(cmd, Register):
        body = {"op": "register", "node": _addr_json(cmd.node), "now_ms": cmd.now_ms}
    elif isinstance(cmd, Heartbeat):
        body = {
            "op": "heartbeat",
            "node_id": cmd.node_id,
            "now_ms": cmd.now_ms,
            "leaders": [[r.group, r.leader, r.term] for r in cmd.leaders],
        }
    else:
        body = {"op": "announce", "replica": cmd.replica, "public_addr": cmd.public_addr}
    body["v"] = FORMAT_VERSION
    return _dumps(body)


def decode_command(data: bytes) -> Command:
    try:
        body = _object(json.loads(data))
        _check_version(body)
        op = body.get("op")
        if op == "bootstrap":
            return Bootstrap(
                BootstrapSpec(
                    cluster_id=_str(body["cluster_id"]),
                    nodes=tuple(_addr(a) for a in _list(body["nodes"])),
                    groups=_int(body["groups"]),
                    rf=_int(body["rf"]),
                ),
                tuple(tuple(NodeId(_int(n)) for n in _list(p)) for p in _list(body["placements"])),
            )
        if op == "register":
            return Register(_addr(body["node"]), _int(body["now_ms"]))
        if op == "heartbeat":
            leaders = []
            for item in _list(body["leaders"]):
                g, leader, term = _triple(item)
                leaders.append(LeaderReport(GroupId(_int(g)), NodeId(_int(leader)), _int(term)))
            return Heartbeat(NodeId(_int(body["node_id"])), _int(body["now_ms"]), tuple(leaders))
        if op == "announce":
            return Announce(NodeId(_int(body["replica"])), _str(body["public_addr"]))
        raise MalformedCommand(f"unknown command {op!r}")
    except (ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, MalformedCommand):
            raise
        raise MalformedCommand(f"undecodable command: {exc!r}") from exc


def encode_state(state: ClusterState) -> bytes:
    spec = state.bootstrap
    return _dumps(
        {
            "v": FORMAT_VERSION,
            "epoch": state.epoch,
            "bootstrap": None
            if spec is None
            else {
                "cluster_id": spec.cluster_id,
                "nodes": [_addr_json(n) for n in spec.nodes],
                "groups": spec.groups,
                "rf": spec.rf,
            },
            "nodes": [[*_addr_json(r.address), r.last_seen_ms] for r in state.nodes],
            "groups": [[list(g.replicas), g.leader, g.term] for g in state.groups],
            "discovery": [[ep.id, ep.public_addr] for ep in state.discovery],
        }
    )


def decode_state(data: bytes) -> ClusterState:
    try:
        body = _object(json.loads(data))
        _check_version(body)
        raw_spec = body["bootstrap"]
        spec = None
        if raw_spec is not None:
            s = _object(raw_spec)
            spec = BootstrapSpec(
                cluster_id=_str(s["cluster_id"]),
                nodes=tuple(_addr(a) for a in _list(s["nodes"])),
                groups=_int(s["groups"]),
                rf=_int(s["rf"]),
            )
        nodes = []
        for item in _list(body["nodes"]):
            fields = _list(item)
            nodes.append(NodeRecord(_addr(fields[:3]), _int(fields[3])))
        groups = []
        for g, item in enumerate(_list(body["groups"])):
            reps, leader, term = _triple(item)
            groups.append(
                GroupPlacement(
                    GroupId(g),
                    tuple(NodeId(_int(n)) for n in _list(reps)),
                    NodeId(_int(leader)),
                    _int(term),
                )
            )
        discovery = []
        for item in _list(body["discovery"]):
            fields = _list(item)
            discovery.append(DiscoveryEndpoint(NodeId(_int(fields[0])), _str(fields[1])))
        return ClusterState(
            epoch=_int(body["epoch"]),
            bootstrap=spec,
            nodes=tuple(nodes),
            groups=tuple(groups),
            discovery=tuple(discovery),
        )
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        if isinstance(exc, MalformedCommand):
            raise
        raise MalformedCommand(f"undecodable discovery snapshot: {exc!r}") from exc


def _check_version(body: dict[str, object]) -> None:
    if body.get("v") != FORMAT_VERSION:
        raise MalformedCommand(f"format version {body.get('v')!r}, expected {FORMAT_VERSION}")


def _object(value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        raise MalformedCommand(f"expected an object, got {type(value).__name__}")
    return value


def _list(value: object) -> list[object]:
    if not isinstance(value, list):
        raise MalformedCommand(f"expected a list, got {type(value).__name__}")
    return value


def _triple(value: object) -> tuple[object, object, object]:
    items = _list(value)
    if len(items) != 3:
        raise MalformedCommand(f"expected 3 items, got {len(items)}")
    return items[0], items[1], items[2]


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedCommand(f"expected an integer, got {value!r}")
    return value


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise MalformedCommand(f"expected a string, got {value!r}")
    return value


def _addr(value: object) -> NodeAddress:
    node_id, public, internal = _triple(value)
    return NodeAddress(NodeId(_int(node_id)), _str(public), _str(internal))
