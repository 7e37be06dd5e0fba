"""One simulated cluster run, entirely determined by one integer seed.

N nodes (3, 5 or 7) each host a replica of every one of G groups (2-4) through a
``cluster.driver.NodeDriver`` over a real ``LogStore`` (fsync off, but ``sync()`` is still the
durability point that ``crash()`` honours). Time is a tick counter; each tick:

1. crashed nodes whose downtime is over restart from disk;
2. faults: partitions start or end (random splits, the leader isolated, overlapping-majority rings),
   nodes crash (between loop turns, or in the middle of one: after the writes, before the fsync,
   keeping a random torn prefix of the unsynced bytes);
3. clients propose unique payloads to whoever is leader; now and then a node snapshots its state
   machine and compacts its log, a leader transfers leadership, a replica asks for a ReadIndex;
4. every node ticks its replicas;
5. loop turns (persist → sync → send → apply → advance) and message deliveries alternate until
   the network has nothing due and no replica has work (bounded).

Checkers (``tests.sim.checkers``) see every persisted write, sync, apply, restore and role. After
the chaos phase comes a heal phase — every node up, no partition, no loss — which must end, within
a bounded number of ticks, with a leader in every group and every acknowledged proposal applied on
every node exactly once and in the same order.
"""

from __future__ import annotations

import dataclasses
import random
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cluster.describe import describe_message
from cluster.driver import DriverOutput, NodeDriver
from cluster.errors import RaftError
from cluster.messages import Entry, HardState, Message, Snapshot
from cluster.raft import Replica
from cluster.ready import Role
from cluster.storage import LogStore
from cluster.types import GroupId, NodeId
from tests.sim.checkers import Checkers, Violation, check_logs_match
from tests.sim.model import GroupState, SimStateMachine
from tests.sim.network import Faults, Network
from tests.sim.params import SimFailure, SimParams, SimResult, draw_world

CLUSTER_ID = "sim"
MAX_ROUNDS = 12
"""Loop turns per tick: enough for several zero-latency round trips inside one tick."""


class _CrashNow(Exception):
    """Raised by the observed store to crash its node between the writes and the fsync."""


@dataclass(slots=True)
class _Read:
    group: GroupId
    node: NodeId
    required: int


@dataclass
class _Node:
    id: NodeId
    path: Path
    store: LogStore | None = None
    driver: NodeDriver | None = None
    sm: SimStateMachine | None = None
    incarnation: int = 0
    down_until: int = 0
    crash_at_sync: int | None = None
    """keep_unsynced for a crash at this node's next sync (a crash in the middle of a write)."""
    pending: dict[tuple[GroupId, int], tuple[int, bytes]] = field(default_factory=dict)
    """Proposals this incarnation accepted as leader: (group, index) -> (term, payload)."""

    @property
    def up(self) -> bool:
        return self.driver is not None


class _ObservedStore:
    """The node's LogStore as the driver sees it, reporting every write to the checkers."""

    def __init__(self, sim: Simulation, node: _Node, store: LogStore) -> None:
        self._sim = sim
        self._node = node
        self._store = store

    def _leading(self, group: GroupId) -> int | None:
        """The term this node leads ``group`` in, if it is the leader."""
        driver = self._node.driver
        assert driver is not None
        r = driver.replicas[group]
        return r.term if r.role is Role.LEADER else None

    def append(self, group: GroupId, entries: Sequence[Entry]) -> None:
        self._sim.checks.on_append(self._node.id, group, entries, self._leading(group))
        self._store.append(group, entries)

    def set_hard_state(self, group: GroupId, hs: HardState) -> None:
        self._sim.checks.on_hard_state(self._node.id, group, hs)
        self._store.set_hard_state(group, hs)

    def save_snapshot(self, group: GroupId, snapshot: Snapshot, *, discard_log: bool) -> None:
        if discard_log and self._leading(group) is not None:
            raise Violation(
                f"leader append-only: leader {self._node.id} of group {group} replaces its log "
                f"by a snapshot at {snapshot.meta.term}/{snapshot.meta.index}"
            )
        self._sim.checks.on_snapshot(self._node.id, group, snapshot, discard_log)
        self._store.save_snapshot(group, snapshot, discard_log=discard_log)

    def sync(self) -> None:
        if self._node.crash_at_sync is not None:
            raise _CrashNow
        self._store.sync()
        self._sim.checks.on_sync(self._node.id)


class Simulation:
    """One seeded run: build the world, ``run()`` the chaos and heal phases, ``close()``."""

    def __init__(
        self, params: SimParams, workdir: Path, trace: Callable[[str], None] | None = None
    ) -> None:
        self.params = params
        self._trace = trace
        world = draw_world(params)
        self._rng = random.Random(world.workload_seed)  # faults and workload
        self._replica_seeds = random.Random(world.replica_seed)
        self.node_ids = world.nodes
        self.groups = world.groups
        self.net = Network(random.Random(world.network_seed), self.node_ids)
        self._configs = {
            (n, g): dataclasses.replace(c, node_id=n)
            for g, c in world.configs.items()
            for n in self.node_ids
        }
        self._profile = world.profile
        self.checks = Checkers(self.groups, len(self.node_ids))
        self.result = SimResult(params.seed, len(self.node_ids), len(self.groups))
        self.nodes = {n: _Node(n, workdir / f"node{n}") for n in self.node_ids}
        self.now = 0
        self._phase = "chaos"
        self._partition_until = 0
        self._payload_seq = 0
        self._read_seq = 0
        self._reads: dict[bytes, _Read] = {}
        self._dirty: set[NodeId] = set()
        self.acked: dict[GroupId, list[bytes]] = {g: [] for g in self.groups}

    def log(self, text: str) -> None:
        if self._trace is not None:
            self._trace(f"[{self.now:5}] {text}")

    # ---- the run -------------------------------------------------------------------------

    def run(self) -> SimResult:
        for node in self.nodes.values():
            self._start(node)
        self.net.faults = self._profile.faults
        self.log(f"start: {self.result.nodes} nodes, {self.result.groups} groups, {self._profile}")
        for _ in range(self.params.steps):
            self._step_chaos()
        self.result.ticks = self.now
        self._heal()
        return self.result

    def close(self) -> None:
        for node in self.nodes.values():
            if node.store is not None:
                node.store.crash()
                node.store = None

    def _step_chaos(self) -> None:
        for node in self.nodes.values():
            if not node.up and node.down_until <= self.now:
                self._start(node)
        self._faults()
        self._workload()
        self._tick_all()
        self._settle()
        self.now += 1
        self.net.now = self.now

    def _heal(self) -> None:
        self._phase = "heal"
        self.net.heal()
        self.net.faults = Faults(max_latency=min(1, self._profile.faults.max_latency))
        for node in self.nodes.values():
            node.crash_at_sync = None
            if not node.up:
                self._start(node)
        start = self.now
        deadline = start + self.params.heal_ticks
        pending = set(self.groups)
        while pending:
            if self.now >= deadline:
                raise Violation(
                    f"liveness: after {self.params.heal_ticks} healed ticks group(s) "
                    f"{sorted(pending)} did not converge: {self._describe_groups(pending)}"
                )
            self._tick_all()
            self._settle()
            self.now += 1
            self.net.now = self.now
            # All at once: a group that looked settled can still change (a transfer that was
            # in flight when the faults stopped).
            pending = {g for g in self.groups if not self._converged(g)}
        self.result.heal_ticks = self.now - start
        self._final_checks()

    def _converged(self, group: GroupId) -> bool:
        replicas = [self._replica(n, group) for n in self.node_ids]
        leaders = [r for r in replicas if r.role is Role.LEADER]
        if len(leaders) != 1:
            return False
        lead = leaders[0]
        if lead.commit_index != lead.last_index or lead.term_at(lead.commit_index) != lead.term:
            return False
        for n, r in zip(self.node_ids, replicas, strict=True):
            if r.term != lead.term or r.leader != lead.id:
                return False
            if self._state(n, group).index != lead.commit_index:
                return False
        return True

    def _describe_groups(self, groups: set[GroupId]) -> str:
        parts = []
        for g in sorted(groups):
            for n in self.node_ids:
                r = self._replica(n, g)
                parts.append(
                    f"g{g}/n{n}: {r.role.value} term={r.term} leader={r.leader} "
                    f"commit={r.commit_index} last={r.last_index} "
                    f"applied={self._state(n, g).index}"
                )
        return "; ".join(parts)

    def _final_checks(self) -> None:
        for g in self.groups:
            states = {n: self._state(n, g) for n in self.node_ids}
            first = states[self.node_ids[0]]
            for n, st in states.items():
                if (st.index, st.digest) != (first.index, first.digest) or (
                    st.payloads != first.payloads
                ):
                    raise Violation(
                        f"convergence: group {g} node {n} applied {st.index} entries "
                        f"({len(st.payloads)} payloads), node {self.node_ids[0]} {first.index} "
                        f"({len(first.payloads)} payloads), or their histories differ"
                    )
            counts = Counter(first.payloads)
            for payload in self.acked[g]:
                if counts[payload] != 1:
                    raise Violation(
                        f"acknowledged write: group {g} payload {payload!r} was acknowledged but "
                        f"is applied {counts[payload]} times"
                    )
            check_logs_match(g, {n: self._replica(n, g) for n in self.node_ids})
        self.result.elections = self.checks.elections

    # ---- nodes ---------------------------------------------------------------------------

    def _replica(self, node: NodeId, group: GroupId) -> Replica:
        driver = self.nodes[node].driver
        assert driver is not None
        return driver.replicas[group]

    def _state(self, node: NodeId, group: GroupId) -> GroupState:
        sm = self.nodes[node].sm
        assert sm is not None
        return sm.state(group)

    def _start(self, node: _Node) -> None:
        store = LogStore.open(node.path, node_id=node.id, cluster_id=CLUSTER_ID, fsync=False)
        if store.recovery.reason:
            self.result.recoveries_cut += 1
        node.incarnation += 1
        self.log(f"node {node.id} starts (incarnation {node.incarnation}), {store.recovery}")
        node.store = store
        node.pending = {}
        node.crash_at_sync = None
        sm = SimStateMachine(node.id, self._on_apply, self._on_restore)
        node.sm = sm
        driver = NodeDriver(node.id, _ObservedStore(self, node, store), sm)
        node.driver = driver  # the observed store looks replicas up through it
        for g in self.groups:
            store.ensure_group(g, self.node_ids)
            stored = store.load(g)
            self.checks.on_load(node.id, g, stored)
            applied = 0
            if stored.snapshot is not None:
                sm.restore(g, stored.snapshot)
                applied = stored.snapshot.meta.index
            rng = random.Random(self._replica_seeds.getrandbits(64))
            driver.add(Replica(self._configs[(node.id, g)], rng, stored, applied=applied))

    def _crash(self, node: _Node, keep_unsynced: int, why: str) -> None:
        assert node.store is not None
        self.log(f"node {node.id} crashes ({why}, keep_unsynced={keep_unsynced})")
        node.store.crash(keep_unsynced=keep_unsynced)
        node.store = None
        node.driver = None
        node.sm = None
        node.pending = {}
        node.crash_at_sync = None
        node.down_until = self.now + self._rng.randint(1, 40)
        self.net.discard_node(node.id)
        self.result.crashes += 1

    def _up_nodes(self) -> list[_Node]:
        return [n for n in self.nodes.values() if n.up]

    def _leaders(self, group: GroupId) -> list[_Node]:
        return [
            n
            for n in self._up_nodes()
            if n.driver is not None and n.driver.replicas[group].role is Role.LEADER
        ]

    # ---- faults --------------------------------------------------------------------------

    def _faults(self) -> None:
        rng, prof = self._rng, self._profile
        if self.net.partition_name != "none" and self.now >= self._partition_until:
            self.log("partition heals")
            self.net.heal()
        elif self.net.partition_name == "none" and rng.random() < prof.p_partition:
            self._partition()
        if rng.random() < prof.p_crash:
            up = self._up_nodes()
            if up:
                leaders = [n for g in self.groups for n in self._leaders(g)]
                node = rng.choice(leaders) if leaders and rng.random() < 0.5 else rng.choice(up)
                keep = rng.choice((0, 0, rng.randint(1, 300), 1 << 30))
                if rng.random() < prof.p_torn_crash:
                    node.crash_at_sync = keep  # dies inside its next loop turn
                else:
                    self._crash(node, keep, "between loop turns")

    def _partition(self) -> None:
        rng = self._rng
        ids = list(self.node_ids)
        kind = rng.choice(("split", "leader", "ring" if len(ids) >= 5 else "split"))
        if kind == "leader":
            leaders = [n.id for g in self.groups for n in self._leaders(g)]
            self.net.isolate(rng.choice(leaders) if leaders else rng.choice(ids))
        elif kind == "ring":
            rng.shuffle(ids)
            self.net.ring(ids)
        else:
            rng.shuffle(ids)
            cut = rng.randint(1, len(ids) - 1)
            sides = [ids[:cut], ids[cut:]]
            if len(ids) >= 5 and rng.random() < 0.3:
                cut2 = rng.randint(cut, len(ids) - 1)
                sides = [ids[:cut], ids[cut:cut2], ids[cut2:]]
            self.net.split([s for s in sides if s])
        self._partition_until = self.now + rng.randint(5, 60)
        self.result.partitions += 1
        self.log(f"partition: {self.net.partition_name} until {self._partition_until}")

    # ---- workload ------------------------------------------------------------------------

    def _workload(self) -> None:
        rng, prof = self._rng, self._profile
        for g in self.groups:
            if rng.random() < prof.p_propose:
                self._propose(g)
        if rng.random() < prof.p_snapshot:
            self._snapshot()
        if rng.random() < prof.p_transfer:
            self._transfer()
        if rng.random() < prof.p_read:
            self._read()

    def _propose(self, group: GroupId) -> None:
        rng = self._rng
        up = self._up_nodes()
        if not up:
            return
        leaders = self._leaders(group)
        node = rng.choice(leaders) if leaders and rng.random() < 0.9 else rng.choice(up)
        assert node.driver is not None
        replica = node.driver.replicas[group]
        datas = []
        for _ in range(rng.choice((1, 1, 1, 2, 5))):
            self._payload_seq += 1
            pad = b"." * rng.choice((0, 8, 24, 100))
            datas.append(f"g{group}#{self._payload_seq}".encode() + pad)
        self.result.proposals += len(datas)
        try:
            first = replica.propose_batch(datas)
        except RaftError as exc:
            self.log(f"n{node.id} g{group} refuses {len(datas)} proposals: {exc!r}")
            return
        for i, data in enumerate(datas):
            node.pending[(group, first + i)] = (replica.term, data)
        self.log(
            f"n{node.id} g{group} accepts {len(datas)} proposals at {first} term {replica.term}"
        )

    def _snapshot(self) -> None:
        rng = self._rng
        up = self._up_nodes()
        if not up:
            return
        node = rng.choice(up)
        group = rng.choice(self.groups)
        assert node.driver is not None and node.sm is not None
        st = node.sm.state(group)
        replica = node.driver.replicas[group]
        if st.index - (replica.first_index - 1) < 3:
            return
        self.log(f"n{node.id} g{group} snapshots at {st.term}/{st.index}")
        node.driver.compact(group, st.snapshot(self.node_ids))
        self.result.snapshots += 1

    def _transfer(self) -> None:
        rng = self._rng
        group = rng.choice(self.groups)
        leaders = self._leaders(group)
        if not leaders:
            return
        node = rng.choice(leaders)
        assert node.driver is not None
        target = rng.choice([n for n in self.node_ids if n != node.id])
        try:
            node.driver.replicas[group].transfer_leader(target)
        except RaftError:
            return
        self.log(f"n{node.id} g{group} transfers leadership to {target}")
        self.result.transfers += 1

    def _read(self) -> None:
        rng = self._rng
        group = rng.choice(self.groups)
        up = self._up_nodes()
        if not up:
            return
        leaders = self._leaders(group)
        node = rng.choice(leaders) if leaders and rng.random() < 0.6 else rng.choice(up)
        assert node.driver is not None
        # Everything committed anywhere so far must be visible to this read.
        for n in up:
            assert n.driver is not None
            self.checks.on_commit(group, n.driver.replicas[group].commit_index)
        self._read_seq += 1
        ctx = f"read#{self._read_seq}".encode()
        self._reads[ctx] = _Read(group, node.id, self.checks.max_commit[group])
        self.log(f"n{node.id} g{group} read_index {ctx!r} (committed {self._reads[ctx].required})")
        node.driver.replicas[group].read_index(ctx)

    # ---- time and message flow -----------------------------------------------------------

    def _tick_all(self) -> None:
        skip = self._profile.p_skip_tick
        for node in self._up_nodes():
            if skip and self._rng.random() < skip:
                continue  # a slow clock or a paused process
            assert node.driver is not None
            for replica in node.driver.replicas.values():
                replica.tick()
                self._observe(node, replica)

    def _settle(self) -> None:
        # Only nodes that were ticked, poked or sent something can have work: skipping the
        # others saves a has_ready() per replica per round without changing the schedule.
        dirty = self._dirty
        dirty.update(n.id for n in self._up_nodes())
        for _ in range(MAX_ROUNDS):
            busy = False
            for node in self._up_nodes():
                if node.id in dirty:
                    if self._process(node):
                        busy = True
                    else:
                        dirty.discard(node.id)
            due = self.net.deliverable()
            for msg in due:
                self._deliver(msg)
            if not busy and not due:
                return

    def _process(self, node: _Node) -> bool:
        """One loop turn of ``node``; False if it had nothing to do."""
        driver = node.driver
        assert driver is not None
        try:
            # A leader's early messages hit the network before the sync, as in the node host:
            # a crash inside that sync then finds them already sent.
            out = driver.process_ready(lambda early: self._send_all(node, early))
        except _CrashNow:
            assert node.crash_at_sync is not None
            self.result.torn_crashes += 1
            self._crash(node, node.crash_at_sync, "after writing, before fsync")
            return True
        if not out.readies:
            return False
        self._handle_output(node, out)
        for replica in driver.replicas.values():
            self.checks.on_commit(replica.group, replica.commit_index)
        return True

    def _send_all(self, node: _Node, messages: list[Message]) -> None:
        for msg in messages:
            if self._trace is not None:
                self.log(f"send g{msg.group} {describe_message(msg)}")
            self.checks.on_send(node.id, msg)
            self.net.send(msg)
        self.result.messages += len(messages)

    def _handle_output(self, node: _Node, out: DriverOutput) -> None:
        self._send_all(node, out.messages)
        for group, rs in out.read_states:
            read = self._reads.get(rs.context)
            if read is None or read.group != group or read.node != node.id:
                raise Violation(f"read index: n{node.id} g{group} got an unknown read {rs}")
            if rs.index < read.required:
                raise Violation(
                    f"linearizable read: n{node.id} g{group} read {rs.context!r} at index "
                    f"{rs.index}, but {read.required} was committed before it was asked"
                )
            applied = self._state(node.id, group).index
            if applied < rs.index:
                raise Violation(
                    f"read index: driver released {rs} on n{node.id} g{group} at applied {applied}"
                )
            self.result.reads_served += 1
            self.log(f"n{node.id} g{group} serves read {rs.context!r} at {rs.index}")
        self.result.reads_dropped += len(out.dropped_reads)
        for group, ss in out.soft_states:
            self.log(f"n{node.id} g{group} is {ss.role.value}, leader {ss.leader}")

    def _deliver(self, msg: Message) -> None:
        node = self.nodes[msg.to]
        if node.driver is None:
            return
        if self._trace is not None:
            self.log(f"recv g{msg.group} {describe_message(msg)}")
        replica = node.driver.replicas.get(msg.group)
        if replica is None:
            return
        replica.step(msg)
        self._dirty.add(node.id)
        self._observe(node, replica)

    def _observe(self, node: _Node, replica: Replica) -> None:
        if replica.role is Role.LEADER and self.checks.on_leader(node.id, replica):
            self.log(f"n{node.id} g{replica.group} becomes leader of term {replica.term}")

    # ---- state machine hooks -------------------------------------------------------------

    def _on_apply(self, node_id: NodeId, group: GroupId, st: GroupState, entry: Entry) -> None:
        node = self.nodes[node_id]
        driver = node.driver
        assert driver is not None
        self.checks.on_apply(node_id, group, st, entry, driver.replicas[group].term)
        proposal = node.pending.pop((group, entry.index), None)
        if proposal is not None and proposal == (entry.term, entry.data):
            self.acked[group].append(entry.data)
            self.result.acked += 1

    def _on_restore(self, node_id: NodeId, group: GroupId, st: GroupState, snap: Snapshot) -> None:
        self.checks.on_restore(node_id, group, st, snap)
        node = self.nodes[node_id]
        if node.driver is not None and group in node.driver.replicas:
            self.result.snapshot_installs += 1
            self.log(f"n{node_id} g{group} installs snapshot {snap.meta.term}/{snap.meta.index}")
        # Proposals the snapshot covers can no longer be matched to their outcome here.
        for key in [k for k in node.pending if k[0] == group and k[1] <= snap.meta.index]:
            del node.pending[key]


def run_seed(
    params: SimParams,
    workdir: Path | None = None,
    trace: Callable[[str], None] | None = None,
) -> SimResult:
    """Run one seed in a fresh temporary directory; raise SimFailure (with the replay command)
    on any violation or unexpected exception."""
    with tempfile.TemporaryDirectory(dir=workdir, prefix=f"sim-{params.seed}-") as tmp:
        sim = Simulation(params, Path(tmp), trace)
        try:
            return sim.run()
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            raise SimFailure(params, sim.now, sim._phase, reason) from exc
        finally:
            sim.close()
