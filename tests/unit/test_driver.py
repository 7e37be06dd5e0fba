"""NodeDriver: the persist → sync → send → apply → advance loop over real LogStores."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from cluster.config import Config
from cluster.driver import NodeDriver
from cluster.messages import Entry, EntryKind, HardState, Message, Snapshot, VoteResponse
from cluster.raft import Replica
from cluster.ready import Role
from cluster.storage import LogStore
from cluster.types import GroupId, NodeId
from tests.unit.memstore import MemoryStore

NODES = (NodeId(1), NodeId(2), NodeId(3))


class _ListMachine:
    """Applied payloads per group, in order."""

    def __init__(self) -> None:
        self.applied: dict[GroupId, list[bytes]] = {}
        self.indexes: dict[GroupId, list[int]] = {}
        self.restored: list[tuple[GroupId, int]] = []

    def apply(self, group: GroupId, entries: Sequence[Entry]) -> None:
        for e in entries:
            self.indexes.setdefault(group, []).append(e.index)
            if e.kind is EntryKind.NORMAL:
                self.applied.setdefault(group, []).append(e.data)

    def restore(self, group: GroupId, snapshot: Snapshot) -> None:
        self.restored.append((group, snapshot.meta.index))


class _SpyStore:
    """Forwards to a LogStore and records the order of calls."""

    def __init__(self, inner: LogStore, calls: list[str]) -> None:
        self._inner = inner
        self.calls = calls

    def append(self, group: GroupId, entries: Sequence[Entry]) -> None:
        self.calls.append(f"append g{group}")
        self._inner.append(group, entries)

    def set_hard_state(self, group: GroupId, hs: HardState) -> None:
        self.calls.append(f"hard_state g{group}")
        self._inner.set_hard_state(group, hs)

    def save_snapshot(self, group: GroupId, snapshot: Snapshot, *, discard_log: bool) -> None:
        self.calls.append(f"snapshot g{group}")
        self._inner.save_snapshot(group, snapshot, discard_log=discard_log)

    def sync(self) -> None:
        self.calls.append("sync")
        self._inner.sync()


def _cluster(
    tmp_path: Path, groups: Sequence[GroupId], *, pre_vote: bool = True
) -> tuple[dict[NodeId, NodeDriver], dict[NodeId, LogStore], dict[NodeId, _ListMachine]]:
    drivers: dict[NodeId, NodeDriver] = {}
    stores: dict[NodeId, LogStore] = {}
    machines: dict[NodeId, _ListMachine] = {}
    for n in NODES:
        store = LogStore.open(tmp_path / f"n{n}", node_id=n, cluster_id="t", fsync=False)
        machine = _ListMachine()
        driver = NodeDriver(n, store, machine)
        for g in groups:
            store.ensure_group(g, NODES)
            config = Config(node_id=n, group=g, voters=NODES, pre_vote=pre_vote)
            driver.add(Replica(config, random.Random(n * 100 + g), store.load(g)))
        drivers[n], stores[n], machines[n] = driver, store, machine
    return drivers, stores, machines


def _turn(drivers: dict[NodeId, NodeDriver]) -> int:
    """Every node runs one loop turn; then everything sent is delivered. Returns messages."""
    sent: list[Message] = []
    for driver in drivers.values():
        sent.extend(driver.process_ready().messages)
    for msg in sent:
        drivers[msg.to].step(msg)
    return len(sent)


def _settle(drivers: dict[NodeId, NodeDriver]) -> None:
    for _ in range(100):
        if not _turn(drivers) and not any(d.has_ready() for d in drivers.values()):
            return
    raise AssertionError("the cluster did not settle in 100 turns")


def test_three_nodes_elect_a_leader_and_commit(tmp_path: Path) -> None:
    g = GroupId(1)
    drivers, stores, machines = _cluster(tmp_path, [g])
    drivers[NodeId(2)].replicas[g].campaign()
    _settle(drivers)
    leader = drivers[NodeId(2)].replicas[g]
    assert leader.role is Role.LEADER
    assert all(d.replicas[g].leader == NodeId(2) for d in drivers.values())

    first = leader.propose(b"a")
    leader.propose_batch([b"b", b"c"])
    _settle(drivers)
    for n, driver in drivers.items():
        # Followers learn the commit index from the next heartbeat.
        assert driver.replicas[g].commit_index >= first + 2 or n != NodeId(2)
    for _ in range(3):
        for driver in drivers.values():
            driver.tick()
        _settle(drivers)
    for n in NODES:
        assert machines[n].applied[g] == [b"a", b"b", b"c"], n
        assert machines[n].indexes[g] == list(range(1, first + 3)), n
        assert drivers[n].applied_index(g) == first + 2
        # What was applied is durable: a reopened store holds it.
        stores[n].close()
        reopened = LogStore.open(tmp_path / f"n{n}", node_id=n, cluster_id="t", fsync=False)
        stored = reopened.load(g)
        assert [e.data for e in stored.entries if e.kind is EntryKind.NORMAL] == [b"a", b"b", b"c"]
        assert stored.hard_state.term == leader.term
        reopened.close()


def test_one_round_over_many_groups_syncs_once(tmp_path: Path) -> None:
    groups = [GroupId(g) for g in range(1, 6)]
    drivers, stores, _ = _cluster(tmp_path, groups, pre_vote=False)
    node = drivers[NodeId(1)]
    for g in groups:
        node.replicas[g].campaign()  # every group has a new term and vote to persist
    before = stores[NodeId(1)].stats.syncs
    out = node.process_ready()
    assert out.synced
    assert out.readies == len(groups)
    assert stores[NodeId(1)].stats.syncs - before == 1
    # Nothing left to do: the next round does not sync at all.
    again = node.process_ready()
    assert not again.synced and again.readies == 0
    assert stores[NodeId(1)].stats.syncs - before == 1


def test_persist_happens_before_messages_are_released(tmp_path: Path) -> None:
    groups = [GroupId(1), GroupId(2)]
    drivers, stores, machines = _cluster(tmp_path, groups, pre_vote=False)
    calls: list[str] = []
    spy = _SpyStore(stores[NodeId(1)], calls)
    driver = NodeDriver(NodeId(1), spy, machines[NodeId(1)])
    for g in groups:
        driver.add(drivers[NodeId(1)].replicas[g])
        driver.replicas[g].campaign()
    out = driver.process_ready()
    assert calls == ["hard_state g1", "hard_state g2", "sync"]
    votes = [m for m in out.messages if m.term == 1]
    assert len(votes) == 2 * 2  # each group asks both peers


def test_only_a_settled_leaders_appends_leave_before_the_sync(tmp_path: Path) -> None:
    g = GroupId(1)
    drivers, stores, machines = _cluster(tmp_path, [g], pre_vote=False)
    calls: list[str] = []
    spies = {n: NodeDriver(n, _SpyStore(stores[n], calls), machines[n]) for n in NODES}
    for n in NODES:
        spies[n].add(drivers[n].replicas[g])
    sent_early: list[Message] = []

    def early(msgs: list[Message]) -> None:
        calls.extend(f"early {type(m).__name__} to n{m.to}" for m in msgs)
        sent_early.extend(msgs)

    spies[NodeId(1)].replicas[g].campaign()
    calls.clear()
    out = spies[NodeId(1)].process_ready(early)
    # A candidate's vote requests carry a new term: they wait for its sync.
    assert calls == [f"hard_state g{g}", "sync"] and len(out.messages) == 2
    for m in out.messages:
        spies[m.to].step(m)
    _settle(spies)
    leader = spies[NodeId(1)].replicas[g]
    assert leader.role is Role.LEADER

    leader.propose(b"x")
    calls.clear()
    out = spies[NodeId(1)].process_ready(early)
    # The leader's appends left before its own fsync, and finish() does not return them again.
    assert calls == [
        f"append g{g}",
        "early AppendRequest to n2",
        "early AppendRequest to n3",
        "sync",
    ]
    assert out.messages == []
    assert leader.commit_index < leader.last_index  # only its own copy counts so far

    # A follower's acknowledgement is a promise about its disk: it never leaves early.
    for m in sent_early:
        spies[m.to].step(m)
    calls.clear()
    out = spies[NodeId(2)].process_ready(early)
    assert calls == [f"append g{g}", "sync"]
    assert [type(m).__name__ for m in out.messages] == ["AppendResponse"]
    for m in out.messages:
        spies[m.to].step(m)
    spies[NodeId(1)].process_ready(early)
    assert leader.commit_index == leader.last_index  # durable leader + one durable follower


def test_idle_round_does_nothing(tmp_path: Path) -> None:
    drivers, _, _ = _cluster(tmp_path, [GroupId(1)])
    out = drivers[NodeId(1)].process_ready()
    assert (out.messages, out.applied, out.synced, out.readies) == ([], 0, False, 0)


def test_vote_is_durable_before_it_is_sent(tmp_path: Path) -> None:
    g = GroupId(1)
    drivers, stores, _ = _cluster(tmp_path, [g], pre_vote=False)
    drivers[NodeId(1)].replicas[g].campaign()
    _turn(drivers)  # node 1 persists its vote and asks; peers step the requests
    granted: list[VoteResponse] = []
    for n in (NodeId(2), NodeId(3)):
        out = drivers[n].process_ready()
        granted += [m for m in out.messages if isinstance(m, VoteResponse) and m.granted]
    assert {m.sender for m in granted} == {NodeId(2), NodeId(3)}
    for m in granted:
        # A crash right after the vote left must not lose it.
        stores[m.sender].crash()
        reopened = LogStore.open(
            tmp_path / f"n{m.sender}", node_id=m.sender, cluster_id="t", fsync=False
        )
        assert reopened.load(g).hard_state == HardState(term=1, voted_for=NodeId(1))
        reopened.close()


def test_read_state_waits_for_apply(tmp_path: Path) -> None:
    g = GroupId(1)
    drivers, _, _ = _cluster(tmp_path, [g])
    drivers[NodeId(1)].replicas[g].campaign()
    _settle(drivers)
    leader = drivers[NodeId(1)].replicas[g]
    assert leader.role is Role.LEADER
    leader.propose(b"x")
    _settle(drivers)
    follower = drivers[NodeId(3)]
    follower.replicas[g].read_index(b"ctx")
    served: list[tuple[GroupId, int]] = []
    for _ in range(20):
        for n, driver in drivers.items():
            out = driver.process_ready()
            if n == NodeId(3):
                for group, rs in out.read_states:
                    assert rs.context == b"ctx"
                    assert driver.applied_index(group) >= rs.index
                    served.append((group, rs.index))
            for msg in out.messages:
                drivers[msg.to].step(msg)
        for driver in drivers.values():
            driver.tick()
    assert served == [(g, leader.commit_index)]


def test_add_refuses_a_foreign_or_duplicate_replica(tmp_path: Path) -> None:
    drivers, _, _ = _cluster(tmp_path, [GroupId(1)])
    driver = drivers[NodeId(1)]
    with pytest.raises(ValueError, match="already hosted"):
        driver.add(driver.replicas[GroupId(1)])
    with pytest.raises(ValueError, match="node 2"):
        driver.add(drivers[NodeId(2)].replicas[GroupId(1)])


def test_unknown_group_is_counted_not_raised(tmp_path: Path) -> None:
    drivers, _, _ = _cluster(tmp_path, [GroupId(1)])
    msg = VoteResponse(group=GroupId(9), sender=NodeId(2), to=NodeId(1), term=1, granted=True)
    assert not drivers[NodeId(1)].step(msg)
    assert drivers[NodeId(1)].unknown_group_messages == 1


def test_an_in_memory_store_fits_the_driver() -> None:
    """The driver's store protocol is small enough for the reference MemoryStore."""
    g = GroupId(1)
    stores = {n: MemoryStore() for n in NODES}
    machines = {n: _ListMachine() for n in NODES}
    drivers: dict[NodeId, NodeDriver] = {}
    for n in NODES:
        stores[n].ensure_group(g, NODES)
        drivers[n] = NodeDriver(n, stores[n], machines[n])
        config = Config(node_id=n, group=g, voters=NODES)
        drivers[n].add(Replica(config, random.Random(n), stores[n].load(g)))
    drivers[NodeId(3)].replicas[g].campaign()
    _settle(drivers)
    leader = drivers[NodeId(3)].replicas[g]
    assert leader.role is Role.LEADER
    leader.propose(b"m")
    _settle(drivers)
    assert machines[NodeId(3)].applied[g] == [b"m"]
    assert [e.data for e in stores[NodeId(1)].load(g).entries][-1] == b"m"
