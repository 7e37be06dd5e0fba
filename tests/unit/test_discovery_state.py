"""The discovery state machine (determinism, epochs, leader reports, leases, snapshots) and the
service logic above it, driven through a fake Raft log that commits every proposal at once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from cluster.errors import NotLeader
from cluster.messages import Entry, EntryKind, Snapshot, SnapshotMeta
from cluster.types import NO_NODE, GroupId, NodeId
from dns import codec
from dns.clustermap import DiscoveryEndpoint, NodeAddress
from dns.service import (
    DeadlineExceeded,
    DiscoveryService,
    EpochNotReached,
    NoQuorum,
    NotDiscoveryLeader,
)
from dns.state import (
    Announce,
    Applied,
    Bootstrap,
    BootstrapSpec,
    ClusterState,
    Command,
    DiscoveryState,
    Heartbeat,
    LeaderReport,
    MalformedCommand,
    Register,
    Rejected,
    Rejection,
    decode_command,
    decode_state,
    encode_command,
    encode_state,
    is_up,
)
from proto import discovery_pb2 as pb
from shards.placement import Placement

N1, N2, N3, N4 = NodeId(1), NodeId(2), NodeId(3), NodeId(4)
G0, G1 = GroupId(0), GroupId(1)


def _addr(n: int, port: int = 0) -> NodeAddress:
    return NodeAddress(NodeId(n), f"127.0.0.1:{7000 + n + port}", f"127.0.0.1:{8000 + n}")


SPEC = BootstrapSpec("test", (_addr(1), _addr(2), _addr(3), _addr(4)), groups=4, rf=3)
PLACEMENTS = ((N1, N2, N3), (N2, N3, N4), (N3, N4, N1), (N4, N1, N2))
BOOT = Bootstrap(SPEC, PLACEMENTS)


class Machine:
    """A DiscoveryState fed one command per log entry."""

    def __init__(self) -> None:
        self.sm = DiscoveryState()
        self.index = 0

    def entries(self, cmds: Sequence[Command | bytes | None]) -> list[Entry]:
        out = []
        for cmd in cmds:
            self.index += 1
            if cmd is None:
                out.append(Entry(1, self.index, b"", EntryKind.NOOP))
            else:
                data = cmd if isinstance(cmd, bytes) else encode_command(cmd)
                out.append(Entry(1, self.index, data))
        return out

    def run(self, *cmds: Command | bytes | None) -> list[object | None]:
        return self.sm.apply(self.entries(cmds))

    def one(self, cmd: Command) -> Applied | Rejected:
        (result,) = self.run(cmd)
        assert isinstance(result, Applied | Rejected)
        return result

    @property
    def state(self) -> ClusterState:
        return self.sm.state


def _booted() -> Machine:
    m = Machine()
    assert m.one(BOOT) == Applied(1, changed=True)
    return m


# ---- commands and encoding -------------------------------------------------------------------


@pytest.mark.parametrize(
    "cmd",
    [
        BOOT,
        Register(_addr(2, 50), 1234),
        Heartbeat(N3, 99, (LeaderReport(G1, N2, 7), LeaderReport(G0, NO_NODE, 8))),
        Heartbeat(N3, 99),
        Announce(N1, "127.0.0.1:9001"),
    ],
)
def test_command_round_trip(cmd: Command) -> None:
    assert decode_command(encode_command(cmd)) == cmd


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b'{"v":2,"op":"register"}',
        b'{"v":1,"op":"launch"}',
        b'{"v":1,"op":"heartbeat","node_id":"1","now_ms":1,"leaders":[]}',
        b'{"v":1,"op":"heartbeat","node_id":1,"now_ms":1,"leaders":[[1,2]]}',
        b'{"v":1,"op":"announce","replica":true,"public_addr":"x:1"}',
    ],
)
def test_undecodable_commands_are_malformed(data: bytes) -> None:
    with pytest.raises(MalformedCommand):
        decode_command(data)


def test_bootstrap_spec_ignores_node_order() -> None:
    shuffled = BootstrapSpec("test", (_addr(3), _addr(1), _addr(4), _addr(2)), 4, 3)
    assert shuffled == SPEC
    assert encode_command(Bootstrap(shuffled, PLACEMENTS)) == encode_command(BOOT)


# ---- determinism -----------------------------------------------------------------------------

HISTORY: list[Command | bytes | None] = [
    None,
    Announce(N1, "127.0.0.1:9001"),
    BOOT,
    Register(_addr(1), 1000),
    Register(_addr(2, 100), 1001),
    b"garbage",
    Heartbeat(N1, 1500, (LeaderReport(G0, N1, 2), LeaderReport(G1, N2, 2))),
    Heartbeat(N2, 1600, (LeaderReport(G0, N2, 1),)),
    None,
    Heartbeat(N3, 1700, (LeaderReport(GroupId(2), N3, 3), LeaderReport(GroupId(9), N3, 3))),
    Announce(N2, "127.0.0.1:9002"),
]


def test_same_log_same_state_whatever_the_batching() -> None:
    a, b = Machine(), Machine()
    results_a = a.run(*HISTORY)
    results_b: list[object | None] = []
    for i in range(0, len(HISTORY), 3):
        results_b += b.run(*HISTORY[i : i + 3])
    assert results_a == results_b
    assert a.state == b.state
    assert a.sm.snapshot() == b.sm.snapshot()
    assert a.sm.applied_index() == b.sm.applied_index() == len(HISTORY)


def test_entries_already_applied_are_skipped() -> None:
    m = _booted()
    replay = [Entry(1, 1, encode_command(BOOT)), *m.entries([Heartbeat(N1, 5)])]
    before = m.state.epoch
    results = m.sm.apply(replay)
    assert results[0] is None
    assert results[1] == Applied(before, changed=False)
    assert m.sm.applied_index() == 2


def test_noop_and_garbage_entries() -> None:
    m = _booted()
    before = m.state
    results = m.run(None, b"\x00\x01", encode_command(Register(_addr(9), 5))[:-1])
    assert results[0] is None
    assert all(isinstance(r, Rejected) and r.reason is Rejection.MALFORMED for r in results[1:])
    assert m.state == before
    assert m.sm.applied_index() == 4


# ---- epochs and the rules of each command ----------------------------------------------------


def test_bootstrap_is_idempotent_and_refuses_a_different_one() -> None:
    m = _booted()
    assert m.state.bootstrap == SPEC
    assert [g.replicas for g in m.state.groups] == list(PLACEMENTS)
    assert [n.id for n in m.state.nodes] == [N1, N2, N3, N4]
    assert m.one(Bootstrap(SPEC, PLACEMENTS)) == Applied(1, changed=False)
    other = BootstrapSpec("test", SPEC.nodes, groups=4, rf=2)
    result = m.one(Bootstrap(other, tuple(p[:2] for p in PLACEMENTS)))
    assert isinstance(result, Rejected)
    assert result.reason is Rejection.BOOTSTRAP_CONFLICT
    assert m.state.epoch == 1


@pytest.mark.parametrize(
    "placements",
    [
        PLACEMENTS[:3],  # too few groups
        ((N1, N2, N3), (N2, N3, N4), (N3, N4, N1), (N4, N1, N1)),  # not distinct
        ((N1, N2, N3), (N2, N3, N4), (N3, N4, N1), (N4, N1, NodeId(9))),  # not a member
        ((N1, N2, N3), (N2, N3, N4), (N3, N4, N1), (N4, N1)),  # not rf
    ],
)
def test_bootstrap_with_a_bad_placement_is_malformed(
    placements: tuple[tuple[NodeId, ...], ...],
) -> None:
    m = Machine()
    result = m.one(Bootstrap(SPEC, placements))
    assert isinstance(result, Rejected)
    assert result.reason is Rejection.MALFORMED
    assert m.state == ClusterState()


def test_node_commands_need_a_bootstrap_and_a_known_node() -> None:
    m = Machine()
    for cmd in (Register(_addr(1), 5), Heartbeat(N1, 5)):
        r = m.one(cmd)
        assert isinstance(r, Rejected) and r.reason is Rejection.NOT_BOOTSTRAPPED
    m.run(BOOT)
    for cmd in (Register(_addr(7), 5), Heartbeat(NodeId(7), 5)):
        r = m.one(cmd)
        assert isinstance(r, Rejected) and r.reason is Rejection.UNKNOWN_NODE
        assert "membership is fixed" in r.detail


def test_register_changes_the_epoch_only_when_addresses_change() -> None:
    m = _booted()
    assert m.one(Register(_addr(2), 100)) == Applied(1, changed=False)
    rec = m.state.node(N2)
    assert rec is not None and rec.last_seen_ms == 100
    moved = _addr(2, port=500)
    assert m.one(Register(moved, 200)) == Applied(2, changed=True)
    rec = m.state.node(N2)
    assert rec is not None and rec.address == moved and rec.last_seen_ms == 200


def test_last_seen_never_goes_back() -> None:
    """A new discovery leader with a slower clock must not shorten a node's lease."""
    m = _booted()
    m.run(Heartbeat(N1, 5000))
    m.run(Heartbeat(N1, 4000), Register(_addr(1), 3000))
    rec = m.state.node(N1)
    assert rec is not None and rec.last_seen_ms == 5000


def test_heartbeat_leader_reports_and_epochs() -> None:
    m = _booted()
    r = m.one(Heartbeat(N1, 10, (LeaderReport(G0, N1, 3),)))
    assert r == Applied(2, changed=True)
    assert (m.state.groups[0].leader, m.state.groups[0].term) == (N1, 3)
    # The same report again, or none, renews the lease without a new epoch.
    assert m.one(Heartbeat(N1, 20, (LeaderReport(G0, N1, 3),))) == Applied(2, changed=False)
    assert m.one(Heartbeat(N2, 30)) == Applied(2, changed=False)
    # Several changes in one heartbeat: one epoch.
    r = m.one(Heartbeat(N2, 40, (LeaderReport(G0, N2, 4), LeaderReport(G1, N3, 1))))
    assert r == Applied(3, changed=True)


def test_stale_and_impossible_leader_reports_are_ignored() -> None:
    m = _booted()
    m.run(Heartbeat(N2, 1, (LeaderReport(G1, N2, 5),)))
    stale = [
        LeaderReport(G1, N3, 4),  # lower term
        LeaderReport(G1, NO_NODE, 4),  # lower term, no leader
        LeaderReport(G1, N3, 5),  # same term, another leader: the first report stands
        LeaderReport(G1, NO_NODE, 5),  # same term, "no leader": we know better
        LeaderReport(G1, N1, 9),  # node 1 holds no replica of group 1
        LeaderReport(GroupId(4), N1, 9),  # no such group
    ]
    r = m.one(Heartbeat(N3, 2, tuple(stale)))
    assert r == Applied(2, changed=False, ignored_reports=len(stale))
    assert (m.state.groups[1].leader, m.state.groups[1].term) == (N2, 5)


def test_higher_term_replaces_the_leader_even_when_unknown() -> None:
    m = _booted()
    m.run(Heartbeat(N2, 1, (LeaderReport(G1, N2, 5),)))
    m.run(Heartbeat(N3, 2, (LeaderReport(G1, NO_NODE, 6),)))
    assert (m.state.groups[1].leader, m.state.groups[1].term) == (NO_NODE, 6)
    # The same term with a leader fills the gap.
    m.run(Heartbeat(N4, 3, (LeaderReport(G1, N4, 6),)))
    assert (m.state.groups[1].leader, m.state.groups[1].term) == (N4, 6)
    assert m.state.epoch == 4


def test_announce() -> None:
    m = Machine()
    assert m.one(Announce(N2, "h:2")) == Applied(1, changed=True)
    assert m.one(Announce(N1, "h:1")) == Applied(2, changed=True)
    assert m.one(Announce(N1, "h:1")) == Applied(2, changed=False)
    assert m.one(Announce(N1, "h:11")) == Applied(3, changed=True)
    assert m.state.discovery == (DiscoveryEndpoint(N1, "h:11"), DiscoveryEndpoint(N2, "h:2"))
    assert m.state.endpoint(N1) == "h:11"
    assert m.state.endpoint(N3) is None
    r = m.one(Announce(NO_NODE, "h:0"))
    assert isinstance(r, Rejected) and r.reason is Rejection.MALFORMED


# ---- leases ----------------------------------------------------------------------------------


def test_lease_expiry_is_computed_at_read_time() -> None:
    m = _booted()
    m.run(Heartbeat(N1, 10_000), Heartbeat(N2, 12_000))
    epoch = m.state.epoch
    view = m.state.view(now_ms=12_999, lease_ms=3000)
    up = {n.id: n.up for n in view.nodes}
    assert up == {N1: True, N2: True, N3: False, N4: False}  # 3 and 4 were never heard from
    view = m.state.view(now_ms=13_000, lease_ms=3000)
    assert {n.id: n.up for n in view.nodes} == {N1: False, N2: True, N3: False, N4: False}
    assert view.epoch == epoch, "a lease running out is not a change of the map"
    assert is_up(1, 1, 1) and not is_up(0, 0, 10) and not is_up(5, 10, 5)


def test_view_carries_the_map() -> None:
    m = _booted()
    m.run(Announce(N1, "d:1"))
    view = m.state.view(now_ms=7, lease_ms=100)
    assert view.bootstrapped and view.cluster_id == "test"
    assert (view.group_count, view.rf, view.lease_ms, view.now_ms) == (4, 3, 100, 7)
    assert view.group(G1).replicas == PLACEMENTS[1]
    assert view.leader_address(G1) is None
    m.run(Heartbeat(N2, 1, (LeaderReport(G1, N3, 1),)))
    assert m.state.view(7, 100).leader_address(G1) == _addr(3).public_addr
    assert not ClusterState().view(0, 1).bootstrapped
    assert codec.map_from_proto(codec.map_to_proto(view)) == view


# ---- snapshots -------------------------------------------------------------------------------


def test_snapshot_restore_round_trip() -> None:
    a = Machine()
    a.run(*HISTORY)
    data = a.sm.snapshot()
    assert decode_state(data) == a.state
    assert encode_state(decode_state(data)) == data
    b = DiscoveryState()
    changes: list[int] = []
    b.set_listener(lambda s: changes.append(s.epoch))
    b.restore(Snapshot(SnapshotMeta(a.index, 1, (N1,)), data))
    assert b.state == a.state
    assert b.applied_index() == a.index
    assert changes == [a.state.epoch]
    # Both continue identically from there.
    more = [Heartbeat(N4, 9999, (LeaderReport(GroupId(3), N4, 9),))]
    entries = a.entries(more)
    assert a.sm.apply(entries) == b.apply(entries)
    assert a.state == b.state


def test_restore_of_an_empty_snapshot_resets() -> None:
    m = _booted()
    m.sm.restore(Snapshot(SnapshotMeta(0, 0, (N1,)), b""))
    assert m.state == ClusterState()
    with pytest.raises(MalformedCommand):
        m.sm.restore(Snapshot(SnapshotMeta(3, 1, (N1,)), b'{"v":1}'))


def test_listener_sees_epoch_changes_only() -> None:
    m = Machine()
    seen: list[int] = []
    m.sm.set_listener(lambda s: seen.append(s.epoch))
    m.run(BOOT)
    m.run(Heartbeat(N1, 5))  # lease only
    m.run(Register(_addr(1, 9), 6), Announce(N1, "d:1"))  # two changes, one batch
    assert seen == [1, 3]


# ---- the service logic over a fake Raft log --------------------------------------------------


class FakeLog:
    """Commits every proposal at once (when it "is" the leader), like a one-replica group."""

    def __init__(self, sm: DiscoveryState, me: NodeId = N1) -> None:
        self.sm = sm
        self.me = me
        self.leader_id = me
        self.index = 0
        self.stalled = False
        self.reads = 0

    async def propose(self, group: GroupId, data: bytes, timeout: float) -> object:
        assert group == 0
        if self.leader_id != self.me:
            raise NotLeader(self.leader_id)
        if self.stalled:
            await asyncio.sleep(timeout)  # no quorum: nothing ever commits
            raise TimeoutError
        self.index += 1
        return self.sm.apply([Entry(1, self.index, data)])[0]

    async def read_index(self, group: GroupId, timeout: float) -> None:
        self.reads += 1
        if self.leader_id == NO_NODE:
            raise NotLeader(NO_NODE)
        if self.stalled:
            await asyncio.sleep(timeout)
            raise TimeoutError

    def leader(self, group: GroupId) -> NodeId:
        return self.leader_id


def _service(clock_ms: list[int] | None = None) -> tuple[DiscoveryService, FakeLog]:
    sm = DiscoveryState()
    fake = FakeLog(sm)
    now = clock_ms if clock_ms is not None else [1_000_000]
    service = DiscoveryService(
        N1, fake, sm, public_addr="127.0.0.1:9001", lease_ms=1000, clock=lambda: now[0]
    )
    return service, fake


def test_service_bootstrap_records_the_ring_placement() -> None:
    async def main() -> None:
        service, _ = _service()
        m = await service.bootstrap(SPEC)
        ring = Placement([N1, N2, N3, N4], 4, 3)
        assert [g.replicas for g in m.groups] == [ring.replicas(GroupId(g)) for g in range(4)]
        assert (await service.bootstrap(SPEC)).epoch == m.epoch

    asyncio.run(main())


def test_service_register_heartbeat_and_lease() -> None:
    async def main() -> None:
        clock = [1_000_000]
        service, _ = _service(clock)
        await service.bootstrap(SPEC)
        m = await service.register(_addr(2))
        node = m.node(N2)
        assert node is not None and node.up and node.last_seen_ms == 1_000_000
        epoch = await service.heartbeat(N2, [LeaderReport(G1, N2, 1)])
        assert epoch == m.epoch + 1
        clock[0] += 1000
        node = (await service.get_map()).node(N2)
        assert node is not None and not node.up

    asyncio.run(main())


def test_service_on_a_follower_names_the_leader() -> None:
    async def main() -> None:
        service, fake = _service()
        fake.leader_id = N2
        with pytest.raises(NotDiscoveryLeader) as err:
            await service.register(_addr(2))
        assert err.value.hint is None  # leader 2 never announced its address
        fake.leader_id = N1
        await service.bootstrap(SPEC)
        service._sm.apply([Entry(1, 99, encode_command(Announce(N2, "127.0.0.1:9002")))])
        fake.leader_id = N2
        with pytest.raises(NotDiscoveryLeader) as err:
            await service.heartbeat(N3)
        assert err.value.hint == "127.0.0.1:9002"
        assert service.leader_hint() == "127.0.0.1:9002"
        assert (await service.get_map()).cluster_id == "test"

    asyncio.run(main())


def test_service_write_timeouts() -> None:
    async def main() -> None:
        service, fake = _service()
        service.write_timeout = 0.05
        fake.stalled = True
        with pytest.raises(NoQuorum):
            await service.bootstrap(SPEC)
        with pytest.raises(DeadlineExceeded):
            await service.bootstrap(SPEC, timeout=0.01)

    asyncio.run(main())


def test_service_get_map_waits_for_min_epoch() -> None:
    async def main() -> None:
        service, fake = _service()
        waiter = asyncio.create_task(service.get_map(min_epoch=2, timeout=5))
        await service.bootstrap(SPEC)  # epoch 1: not enough
        assert not waiter.done()
        await service.register(_addr(3, 1))  # epoch 2
        assert (await waiter).epoch == 2
        # The leader itself lacks the epoch: OUT_OF_RANGE material.
        with pytest.raises(EpochNotReached):
            await service.get_map(min_epoch=9, timeout=0.01)
        # A follower lacking it sends the caller to the leader.
        fake.leader_id = N2
        with pytest.raises(NotDiscoveryLeader):
            await service.get_map(min_epoch=9, timeout=0.01)

    asyncio.run(main())


def test_service_announces_itself_when_it_leads() -> None:
    async def main() -> None:
        service, _ = _service()
        service.on_leadership(G0, N2, 3)  # someone else: nothing to do
        service.on_leadership(G1, N1, 3)  # another group: nothing to do
        assert service._announcing is None
        service.on_leadership(G0, N1, 3)
        assert service._announcing is not None
        await service._announcing
        assert service.state.endpoint(N1) == "127.0.0.1:9001"
        assert service.leader_hint() == "127.0.0.1:9001"
        await service.close()

    asyncio.run(main())


# ---- request validation (dns.codec) ----------------------------------------------------------


def _boot_req(**kw: object) -> pb.BootstrapRequest:
    base: dict[str, object] = {
        "cluster_id": "c",
        "nodes": [pb.NodeAddress(id=1, public_addr="h:1", internal_addr="h:2")],
        "groups": 8,
        "rf": 1,
    }
    base.update(kw)
    return pb.BootstrapRequest(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (_boot_req(cluster_id=""), "cluster_id"),
        (_boot_req(nodes=[]), "nodes"),
        (_boot_req(groups=0), "groups"),
        (_boot_req(rf=2), "rf"),
        (
            _boot_req(nodes=[pb.NodeAddress(id=0, public_addr="h:1", internal_addr="h:2")]),
            "nodes[0].id",
        ),
        (
            _boot_req(nodes=[pb.NodeAddress(id=1, public_addr="h", internal_addr="h:2")]),
            "nodes[0].public_addr",
        ),
        (
            _boot_req(nodes=[pb.NodeAddress(id=1, public_addr="h:1", internal_addr="h:0")]),
            "nodes[0].internal_addr",
        ),
        (
            _boot_req(
                nodes=[
                    pb.NodeAddress(id=1, public_addr="h:1", internal_addr="h:2"),
                    pb.NodeAddress(id=1, public_addr="h:3", internal_addr="h:4"),
                ]
            ),
            "nodes[1].id",
        ),
    ],
)
def test_bootstrap_request_validation_names_the_field(req: pb.BootstrapRequest, field: str) -> None:
    with pytest.raises(codec.InvalidField) as err:
        codec.bootstrap_from_proto(req)
    assert err.value.field == field


def test_register_and_heartbeat_validation() -> None:
    with pytest.raises(codec.InvalidField) as err:
        codec.register_from_proto(pb.RegisterRequest(node_id=0, public_addr="h:1"))
    assert err.value.field == "node_id"
    with pytest.raises(codec.InvalidField) as err:
        codec.register_from_proto(
            pb.RegisterRequest(node_id=1, public_addr="h:1", internal_addr=":1")
        )
    assert err.value.field == "internal_addr"
    with pytest.raises(codec.InvalidField) as err:
        codec.heartbeat_from_proto(
            pb.HeartbeatRequest(node_id=1, leaders=[pb.LeaderReport(group=codec.MAX_GROUPS)])
        )
    assert err.value.field == "leaders[0].group"
    assert codec.check_address("a", "[::1]:80") == "[::1]:80"


def test_service_confirms_an_unbootstrapped_map_with_a_linearizable_read() -> None:
    async def main() -> None:
        service, fake = _service()
        fake.leader_id = N2  # a follower...
        m = await service.get_map()
        assert not m.bootstrapped and fake.reads == 1  # ...confirms "empty" through ReadIndex
        fake.leader_id = NO_NODE
        with pytest.raises(NotDiscoveryLeader):
            await service.get_map()
        fake.leader_id = N1
        fake.stalled = True
        service.write_timeout = 0.05
        with pytest.raises(NoQuorum):
            await service.get_map()
        fake.stalled = False
        await service.bootstrap(SPEC)
        reads = fake.reads
        fake.leader_id = N2
        assert (await service.get_map()).bootstrapped
        assert fake.reads == reads, "a bootstrapped map is served from local state"

    asyncio.run(main())
