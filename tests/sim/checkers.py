"""Safety checkers for the simulation, fed incrementally by hooks on every observable event.

Each hook costs O(entries touched), so they can run after every step:

* election safety — at most one leader per (group, term), ever, across crashes;
* leader append-only — a leader only appends entries of its own term after its persisted log;
* log matching — all persisted entries with the same (index, term) have the same payload and the
  same predecessor term; by induction that makes the whole prefixes equal (the full pairwise
  comparison runs at the end, ``check_logs_match``);
* leader completeness — a new leader of term T holds every entry committed in a term < T (an
  entry counts as committed once applied anywhere; the term it was committed in is bounded by the
  smallest term of any replica that applied it);
* state machine safety — every apply is at ``applied + 1`` and equals the reference history of the
  group (the first apply of each index anywhere); a payload is applied at one index only;
  a restored snapshot's digest equals the reference digest at its index;
* durable state — a vote once persisted in a term never changes, terms and commit never go back,
  and what a restart loads is what was synced (or a later complete write) — never older;
* persist before send — a granted vote or a successful append acknowledgement leaves a node only
  when the vote / the acknowledged entries are durable there (or its durable term moved past it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cluster.messages import (
    AppendResponse,
    Entry,
    EntryKind,
    HardState,
    Message,
    Snapshot,
    StoredState,
    VoteResponse,
)
from cluster.raft import Replica
from cluster.types import NO_NODE, GroupId, NodeId
from tests.sim.model import GroupState, fold


class Violation(AssertionError):
    """A safety property failed. The message names the property first."""


@dataclass(slots=True)
class _RefLog:
    """The group's applied history as first seen anywhere; index 0 is the empty sentinel."""

    terms: list[int] = field(default_factory=lambda: [0])
    kinds: list[EntryKind] = field(default_factory=lambda: [EntryKind.NOOP])
    datas: list[bytes] = field(default_factory=lambda: [b""])
    digests: list[int] = field(default_factory=lambda: [0])
    commit_bound: list[int] = field(default_factory=lambda: [0])
    """An upper bound of the term each entry was committed in."""
    payload_at: dict[bytes, int] = field(default_factory=dict)

    @property
    def last(self) -> int:
        return len(self.terms) - 1


@dataclass(slots=True)
class _Persisted:
    """Mirror of the term of every entry a node's store holds for a group (from ``offset``)."""

    offset: int = 0
    offset_term: int = 0
    terms: list[int] = field(default_factory=list)
    synced: int = 0
    """The last index that survives a crash as written (entries up to it were synced since
    they were last written)."""

    @property
    def last(self) -> int:
        return self.offset + len(self.terms)

    def term_at(self, index: int) -> int | None:
        if index == self.offset:
            return self.offset_term
        pos = index - self.offset - 1
        return self.terms[pos] if 0 <= pos < len(self.terms) else None


@dataclass(slots=True)
class _Durable:
    """Hard state of one (node, group): last synced, and everything written since."""

    synced: HardState = field(default_factory=HardState)
    written: HardState = field(default_factory=HardState)
    since_sync: list[HardState] = field(default_factory=list)
    snapshot_synced: int = 0
    snapshot_written: int = 0


class Checkers:
    """Global knowledge of one simulated cluster, checked on every event."""

    def __init__(self, groups: Sequence[GroupId], voters: int = 0) -> None:
        self.voters = voters
        """Voters per group (0: skip the durable-commit check)."""
        self.leaders: dict[tuple[GroupId, int], NodeId] = {}
        self.refs: dict[GroupId, _RefLog] = {g: _RefLog() for g in groups}
        self.max_commit: dict[GroupId, int] = {g: 0 for g in groups}
        # (index, term) -> (data, kind, predecessor term), per group.
        self._seen: dict[GroupId, dict[tuple[int, int], tuple[bytes, EntryKind, int]]] = {
            g: {} for g in groups
        }
        self._persisted: dict[tuple[NodeId, GroupId], _Persisted] = {}
        self._durable: dict[tuple[NodeId, GroupId], _Durable] = {}
        self.elections = 0

    # ---- roles -----------------------------------------------------------------------------

    def on_leader(self, node: NodeId, replica: Replica) -> bool:
        """``replica`` is a leader now; True the first time this (group, term) is seen."""
        key = (replica.group, replica.term)
        holder = self.leaders.get(key)
        if holder == node:
            return False
        if holder is not None:
            raise Violation(
                f"election safety: group {replica.group} term {replica.term} has two leaders, "
                f"{holder} and {node}"
            )
        self.leaders[key] = node
        self.elections += 1
        self._check_completeness(node, replica)
        return True

    def _check_completeness(self, node: NodeId, replica: Replica) -> None:
        ref = self.refs[replica.group]
        term = replica.term
        snap = replica.snapshot_meta
        if snap is not None and snap.index <= ref.last and snap.term != ref.terms[snap.index]:
            raise Violation(
                f"leader completeness: new leader {node} of group {replica.group} term {term} "
                f"has a snapshot at {snap.term}/{snap.index}, committed entry there has term "
                f"{ref.terms[snap.index]}"
            )
        for index in range(replica.first_index, ref.last + 1):
            if ref.commit_bound[index] >= term:
                continue
            have = replica.term_at(index)
            if have != ref.terms[index]:
                raise Violation(
                    f"leader completeness: new leader {node} of group {replica.group} term {term} "
                    f"lacks committed entry {ref.terms[index]}/{index} (has term {have}, "
                    f"last index {replica.last_index})"
                )

    def on_commit(self, group: GroupId, commit: int) -> None:
        """A replica reports ``commit``. The first time an index commits, a quorum must hold
        it durably (synced, with the same term): what counts toward a commit must survive a
        crash of every node, the leader's own copy included (its appends may leave before its
        fsync, see cluster.ready)."""
        if commit > self.max_commit[group]:
            if self.voters:
                holders: Counter[int | None] = Counter()  # by the term they hold there
                for (_, g), mirror in self._persisted.items():
                    if g == group and mirror.synced >= commit:
                        holders[mirror.term_at(commit)] += 1
                best = max(holders.values(), default=0)
                if best < self.voters // 2 + 1:
                    raise Violation(
                        f"durable commit: group {group} commits {commit}, but at most {best} "
                        f"of {self.voters} nodes hold one entry there synced"
                    )
            self.max_commit[group] = commit

    # ---- persistence -----------------------------------------------------------------------

    def on_append(
        self, node: NodeId, group: GroupId, entries: Sequence[Entry], leading_term: int | None
    ) -> None:
        if not entries:
            return
        mirror = self._persisted.setdefault((node, group), _Persisted())
        first = entries[0].index
        where = f"node {node} group {group}"
        if first > mirror.last + 1:
            raise Violation(f"log gap: {where} appends {first} after its last {mirror.last}")
        if first <= mirror.offset:
            raise Violation(
                f"log overwrite below snapshot: {where} appends {first}, "
                f"snapshot at {mirror.offset}"
            )
        if leading_term is not None:
            if first <= mirror.last:
                raise Violation(
                    f"leader append-only: leader {node} of group {group} term {leading_term} "
                    f"overwrites its entries from {first} (persisted up to {mirror.last})"
                )
            foreign = [e for e in entries if e.term != leading_term]
            if foreign:
                raise Violation(
                    f"leader append-only: leader {node} of group {group} term {leading_term} "
                    f"appends an entry of term {foreign[0].term} at {foreign[0].index}"
                )
        prev_term = mirror.term_at(first - 1)
        assert prev_term is not None
        seen = self._seen[group]
        expect = first
        for e in entries:
            if e.index != expect:
                raise Violation(f"log gap: {where} appends non-contiguous entries at {e.index}")
            expect += 1
            if e.term < prev_term:
                raise Violation(
                    f"log matching: {where} entry {e.term}/{e.index} follows term {prev_term}"
                )
            key = (e.index, e.term)
            value = (e.data, e.kind, prev_term)
            old = seen.get(key)
            if old is None:
                seen[key] = value
            elif old != value:
                raise Violation(
                    f"log matching: {where} holds {e.term}/{e.index} = {e.data!r} {e.kind.name} "
                    f"after term {prev_term}; elsewhere it is {old[0]!r} {old[1].name} after "
                    f"term {old[2]}"
                )
            prev_term = e.term
        del mirror.terms[first - mirror.offset - 1 :]
        mirror.terms.extend(e.term for e in entries)
        mirror.synced = min(mirror.synced, first - 1)

    def on_hard_state(self, node: NodeId, group: GroupId, hs: HardState) -> None:
        d = self._durable.setdefault((node, group), _Durable())
        old = d.written
        where = f"node {node} group {group}"
        if hs.term < old.term:
            raise Violation(f"durable state: {where} term goes back {old.term} -> {hs.term}")
        if hs.term == old.term and old.voted_for != NO_NODE and hs.voted_for != old.voted_for:
            raise Violation(
                f"durable state: {where} changes its vote in term {hs.term} "
                f"from {old.voted_for} to {hs.voted_for}"
            )
        if hs.commit < old.commit:
            raise Violation(f"durable state: {where} commit goes back {old.commit} -> {hs.commit}")
        d.written = hs
        d.since_sync.append(hs)

    def on_snapshot(
        self, node: NodeId, group: GroupId, snapshot: Snapshot, discard_log: bool
    ) -> None:
        meta = snapshot.meta
        mirror = self._persisted.setdefault((node, group), _Persisted())
        where = f"node {node} group {group}"
        if meta.index < mirror.offset:
            raise Violation(f"snapshot: {where} saves {meta.index}, older than {mirror.offset}")
        if discard_log:
            mirror.offset, mirror.offset_term, mirror.terms = meta.index, meta.term, []
            mirror.synced = min(mirror.synced, meta.index)
        else:
            have = mirror.term_at(meta.index)
            if have != meta.term:
                raise Violation(
                    f"snapshot: {where} compacts at {meta.term}/{meta.index}, its log has term "
                    f"{have} there"
                )
            del mirror.terms[: meta.index - mirror.offset]
            mirror.offset, mirror.offset_term = meta.index, meta.term
        d = self._durable.setdefault((node, group), _Durable())
        d.snapshot_written = max(d.snapshot_written, meta.index)

    def on_sync(self, node: NodeId) -> None:
        for (n, _), mirror in self._persisted.items():
            if n == node:
                mirror.synced = mirror.last
        for (n, _), d in self._durable.items():
            if n == node:
                d.synced = d.written
                d.since_sync.clear()
                d.snapshot_synced = d.snapshot_written

    def on_send(self, node: NodeId, msg: Message) -> None:
        """``msg`` leaves ``node`` after its loop turn: what it promises must be durable."""
        if isinstance(msg, VoteResponse):
            if not msg.granted or msg.pre_vote:
                return
            hs = self._durable.setdefault((node, msg.group), _Durable()).synced
            if hs.term < msg.term or (hs.term == msg.term and hs.voted_for != msg.to):
                raise Violation(
                    f"persist before send: node {node} group {msg.group} grants its term "
                    f"{msg.term} vote to {msg.to}, but its durable state is {hs}"
                )
        elif isinstance(msg, AppendResponse) and not msg.reject:
            hs = self._durable.setdefault((node, msg.group), _Durable()).synced
            mirror = self._persisted.setdefault((node, msg.group), _Persisted())
            if mirror.synced < msg.index and hs.term <= msg.term:
                raise Violation(
                    f"persist before send: node {node} group {msg.group} acknowledges index "
                    f"{msg.index} in term {msg.term}, but its synced log ends at "
                    f"{mirror.synced} (written: {mirror.last})"
                )

    def on_load(self, node: NodeId, group: GroupId, stored: StoredState) -> None:
        """A restart read ``stored`` back: it must be what was synced, or a later write."""
        where = f"node {node} group {group}"
        d = self._durable.setdefault((node, group), _Durable())
        hs = stored.hard_state
        if hs != d.synced and hs not in d.since_sync:
            raise Violation(
                f"durable state: {where} loads {hs}, but synced {d.synced} "
                f"(unsynced writes since: {d.since_sync})"
            )
        d.synced = d.written = hs
        d.since_sync.clear()
        snap_index = stored.snapshot.meta.index if stored.snapshot else 0
        if snap_index < d.snapshot_synced:
            raise Violation(
                f"durable state: {where} loads snapshot {snap_index}, synced {d.snapshot_synced}"
            )
        d.snapshot_synced = d.snapshot_written = snap_index
        mirror = _Persisted()
        if stored.snapshot is not None:
            mirror.offset, mirror.offset_term = snap_index, stored.snapshot.meta.term
        seen = self._seen[group]
        prev_term = mirror.offset_term
        for pos, e in enumerate(stored.entries):
            if e.index != snap_index + pos + 1:
                raise Violation(f"storage: {where} loads entries out of order at {e.index}")
            if seen.get((e.index, e.term)) != (e.data, e.kind, prev_term):
                raise Violation(
                    f"storage: {where} loads {e.term}/{e.index} = {e.data!r}, which was never "
                    f"written that way"
                )
            prev_term = e.term
        mirror.terms = [e.term for e in stored.entries]
        mirror.synced = mirror.last
        self._persisted[(node, group)] = mirror

    # ---- state machine ---------------------------------------------------------------------

    def on_apply(
        self, node: NodeId, group: GroupId, st: GroupState, entry: Entry, term: int
    ) -> None:
        ref = self.refs[group]
        where = f"node {node} group {group}"
        if entry.index != st.index + 1:
            raise Violation(f"state machine safety: {where} applies {entry.index} after {st.index}")
        if st.digest != ref.digests[st.index]:
            raise Violation(
                f"state machine safety: {where} state at {st.index} differs from the history"
            )
        if entry.index <= ref.last:
            i = entry.index
            if (ref.terms[i], ref.kinds[i], ref.datas[i]) != (entry.term, entry.kind, entry.data):
                raise Violation(
                    f"state machine safety: {where} applies {entry.term}/{i} = {entry.data!r}, "
                    f"another node applied {ref.terms[i]}/{i} = {ref.datas[i]!r}"
                )
            if term < ref.commit_bound[i]:
                ref.commit_bound[i] = term
            return
        if entry.index != ref.last + 1:
            raise Violation(
                f"state machine safety: {where} applies {entry.index}; "
                f"nobody applied {ref.last + 1}"
            )
        if entry.kind is EntryKind.NORMAL:
            other = ref.payload_at.get(entry.data)
            if other is not None:
                raise Violation(
                    f"exactly once: {where} applies {entry.data!r} at {entry.index}, "
                    f"already applied at {other}"
                )
            ref.payload_at[entry.data] = entry.index
        ref.terms.append(entry.term)
        ref.kinds.append(entry.kind)
        ref.datas.append(entry.data)
        ref.digests.append(fold(ref.digests[-1], entry))
        ref.commit_bound.append(term)
        self.on_commit(group, entry.index)

    def on_restore(self, node: NodeId, group: GroupId, st: GroupState, snapshot: Snapshot) -> None:
        ref = self.refs[group]
        meta = snapshot.meta
        where = f"node {node} group {group}"
        if (st.index, st.term) != (meta.index, meta.term):
            raise Violation(
                f"snapshot: {where} snapshot meta {meta.term}/{meta.index} but data at "
                f"{st.term}/{st.index}"
            )
        if meta.index > ref.last:
            raise Violation(f"snapshot: {where} restores {meta.index}, nobody applied it yet")
        if st.digest != ref.digests[meta.index] or meta.term != ref.terms[meta.index]:
            raise Violation(
                f"state machine safety: {where} restores a snapshot at {meta.index} that differs "
                f"from the history"
            )


def check_logs_match(group: GroupId, replicas: Mapping[NodeId, Replica]) -> None:
    """Full pairwise log matching: where two logs share an (index, term), they are equal up to
    there (over the indexes both still hold)."""
    logs: dict[NodeId, tuple[int, list[Entry]]] = {}
    for node, r in replicas.items():
        logs[node] = (r.first_index, r.entries(r.first_index, r.last_index + 1))
    nodes = sorted(logs)
    for i, a in enumerate(nodes):
        first_a, ents_a = logs[a]
        for b in nodes[i + 1 :]:
            first_b, ents_b = logs[b]
            lo = max(first_a, first_b)
            hi = min(first_a + len(ents_a), first_b + len(ents_b)) - 1
            common = 0
            for index in range(hi, lo - 1, -1):
                if ents_a[index - first_a].term == ents_b[index - first_b].term:
                    common = index
                    break
            for index in range(lo, common + 1):
                ea, eb = ents_a[index - first_a], ents_b[index - first_b]
                if ea != eb:
                    raise Violation(
                        f"log matching: group {group} nodes {a} and {b} share entry term "
                        f"{ents_a[common - first_a].term} at {common} but differ at {index}: "
                        f"{ea} vs {eb}"
                    )
