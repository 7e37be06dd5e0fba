"""The chat guarantees (DESIGN.md section 4) on real processes: discovery and chat nodes started
by the launcher on loopback, driven through the public ``Chat`` API by ``chatkit``.

Clusters: one 5-node (rf 3) cluster is shared by the tests that only add their own users and
channels (every name carries the test's prefix), so every one of them also crosses gateways
that do not host the groups they touch; each test that kills or restarts processes gets its own
cluster. Every wait polls a condition or awaits a pushed frame, with a deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from proto import chat_pb2 as pb
from tests.integration import chatkit
from tests.integration.chatkit import (
    PASSWORD,
    Account,
    ChatCluster,
    ChatClusterFactory,
    ChatKit,
    Sent,
    SessionProbe,
    StoredMessage,
    eventually,
    start_chat_cluster,
    trailing,
)

chat_cluster = chatkit.chat_cluster
"""The per-test cluster fixture (pytest finds fixtures among a test module's names)."""

DmId = str


def dm(a: str, b: str) -> DmId:
    low, high = sorted((a, b))
    return f"dm:{low}:{high}"


def run(scenario: Coroutine[Any, Any, None], timeout: float = 90.0) -> None:
    """Run one async scenario; a hang fails the test instead of stalling the suite."""
    asyncio.run(asyncio.wait_for(scenario, timeout))


def seq_sender_text(messages: Sequence[pb.ChatMessage]) -> list[tuple[int, str, str]]:
    return [(m.seq, m.sender, m.text) for m in messages]


def check_one_order(messages: Sequence[pb.ChatMessage]) -> None:
    """Seqs 1..n with no gap, stamps strictly rising with seq (guarantees 2 and 7)."""
    assert [m.seq for m in messages] == list(range(1, len(messages) + 1))
    stamps = [(m.hlc_ms, m.hlc_counter) for m in messages]
    assert all(a < b for a, b in itertools.pairwise(stamps)), "HLC stamps do not rise with seq"


def clean(probe: SessionProbe) -> None:
    assert not probe.pushed.violations, probe.pushed.violations
    assert not probe.pushed.gaps, probe.pushed.gaps


async def rpc_error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    try:
        answer = await call
    except grpc.aio.AioRpcError as err:
        return err
    raise AssertionError(f"expected an error, got {answer!r}")


async def open_session(
    kit: ChatKit,
    nodes: Sequence[int],
    account: Account,
    *,
    cursors: dict[str, int] | None = None,
    session_id: str | None = None,
    timeout: float = 20.0,
) -> SessionProbe:
    """A session on the first of ``nodes`` that establishes one (a client reconnecting after
    a crash tries the nodes in turn; a group may still be electing)."""
    deadline = time.monotonic() + timeout
    for node in itertools.cycle(nodes):
        probe = SessionProbe(kit, node, account, session_id=session_id, cursors=cursors)
        try:
            await probe.open()
            return probe
        except AssertionError:
            await probe.close()
            if probe.code not in (grpc.StatusCode.UNAVAILABLE, None) or (
                time.monotonic() > deadline
            ):
                raise
        await asyncio.sleep(0.1)  # retry backoff
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatCluster]:
    """Five nodes, four groups on three replicas each: every node is a gateway for groups it
    does not host."""
    made: list[ChatCluster] = []
    try:
        start_chat_cluster(tmp_path_factory.mktemp("shared"), nodes=5, groups=4, rf=3, started=made)
        yield made[0]
    finally:
        for cluster in made:
            cluster.stop()


# ---------------------------------------------------------------------------------------------
# 1. Chat across gateways, a late reader, an offline user.
# ---------------------------------------------------------------------------------------------


def test_two_gateways_chat_a_late_joiner_reads_all_an_offline_user_catches_up(
    shared_cluster: ChatCluster,
) -> None:
    run(_chat_across_gateways(shared_cluster))


async def _chat_across_gateways(cluster: ChatCluster) -> None:
    room = "t1-room"
    async with ChatKit(cluster.spec) as kit:
        alice = await kit.account("t1-alice", 1, display_name="Alice A.")
        bob = await kit.account("t1-bob", 2)
        carol = await kit.account("t1-carol", 3)
        await kit.register("t1-dave", 4)  # registered, not logged in: offline
        await kit.call(1, "CreateChannel", pb.CreateChannelRequest(channel=room), alice)
        joined = await kit.call(2, "JoinChannel", pb.JoinChannelRequest(channel=room), bob)
        assert not joined.already_member
        pa = await open_session(kit, [1], alice)
        pb_ = await open_session(kit, [2], bob)
        assert pa.resumed is not None and pa.resumed.node_id == 1
        assert pb_.resumed is not None and pb_.resumed.node_id == 2
        assert pa.resumed.cursors[room] == 0

        async def alice_talks() -> None:
            for frame in range(5):  # three sends per frame: one proposal batch each
                results = await pa.send(
                    [
                        pb.SendRequest(
                            conversation=room, text=f"alice {3 * frame + i}", idempotency_key=k
                        )
                        for i, k in enumerate(f"a{3 * frame + i}" for i in range(3))
                    ]
                )
                assert all(r.HasField("sent") for r in results), results

        async def bob_talks() -> None:
            for i in range(15):
                request = pb.SendRequest(
                    conversation=room, text=f"bob {i}", idempotency_key=f"b{i}"
                )
                await kit.send(bob, request, [2])

        await asyncio.gather(alice_talks(), bob_talks())
        await pa.wait_messages(room, 30)
        await pb_.wait_messages(room, 30)
        seen_a, seen_b = pa.messages(room), pb_.messages(room)
        assert seq_sender_text(seen_a) == seq_sender_text(seen_b)
        check_one_order(seen_a)
        for who in ("alice", "bob"):
            mine = [m.text for m in seen_a if m.text.startswith(who)]
            assert mine == [f"{who} {i}" for i in range(15)], f"{who}'s own order changed"
        # Keys only on the reader's own messages; the sender is the session's user.
        assert all(bool(m.idempotency_key) == (m.sender == alice.user) for m in seen_a)
        assert {m.sender for m in seen_a} == {alice.user, bob.user}
        assert {m.sender_display for m in seen_b if m.sender == alice.user} == {"Alice A."}

        # Direct messages both ways: a session send by name, a unary send by DM id.
        dm_ab = dm(alice.user, bob.user)
        (first,) = await pa.send(
            [pb.SendRequest(to_user=bob.user, text="psst", idempotency_key="d1")]
        )
        assert first.sent.conversation == dm_ab and first.sent.seq == 1
        reply = pb.SendRequest(conversation=dm_ab, text="yes?", idempotency_key="d2")
        assert (await kit.send(bob, reply, [2])).response.seq == 2
        for probe in (pa, pb_):
            await probe.wait_messages(dm_ab, 2)
            assert seq_sender_text(probe.messages(dm_ab)) == [
                (1, alice.user, "psst"),
                (2, bob.user, "yes?"),
            ]
            clean(probe)
        await pa.close()
        await pb_.close()

        # A late joiner reads the whole history in order, page by page, on a third gateway.
        await kit.call(3, "JoinChannel", pb.JoinChannelRequest(channel=room), carol)
        history = await kit.history(carol, room, 3, page=7)
        assert seq_sender_text(history) == seq_sender_text(seen_a)
        assert all(not m.idempotency_key for m in history)
        before = await kit.call(
            3, "History", pb.HistoryRequest(conversation=room, before=11, limit=4), carol
        )
        assert [m.seq for m in before.messages] == [7, 8, 9, 10]
        newest = await kit.call(3, "History", pb.HistoryRequest(conversation=room), carol)
        assert [m.seq for m in newest.messages] == list(range(1, 31))
        assert newest.reached_oldest and newest.reached_newest

        # DMs to an offline user, from two people through two more gateways.
        dave_name = "t1-dave"
        for i in range(3):
            request = pb.SendRequest(
                to_user=dave_name, text=f"from alice {i}", idempotency_key=f"ad{i}"
            )
            await kit.send(alice, request, [5])
        for i in range(2):
            request = pb.SendRequest(
                to_user=dave_name, text=f"from bob {i}", idempotency_key=f"bd{i}"
            )
            await kit.send(bob, request, [1])
        dave = await kit.login(dave_name, 4)
        dm_ad, dm_bd = dm(alice.user, dave_name), dm(bob.user, dave_name)
        assert await kit.unread(dave, 4) == {dm_ad: (3, 0, 3), dm_bd: (2, 0, 2)}
        synced = await kit.call(4, "Sync", pb.SyncRequest(cursors={dm_ad: 0, dm_bd: 0}), dave)
        assert [(m.conversation, m.seq, m.text) for m in synced.messages] == [
            (dm_ad, 1, "from alice 0"),
            (dm_ad, 2, "from alice 1"),
            (dm_ad, 3, "from alice 2"),
            (dm_bd, 1, "from bob 0"),
            (dm_bd, 2, "from bob 1"),
        ]
        assert dict(synced.cursors) == {dm_ad: 3, dm_bd: 2} and not synced.limited
        # The same through a resumed session: everything after the cursors, once.
        pd = await open_session(kit, [4], dave, cursors={dm_ad: 1, dm_bd: 0})
        await pd.wait_messages(dm_ad, 3)
        await pd.wait_messages(dm_bd, 2)
        assert [m.seq for m in pd.messages(dm_ad)] == [2, 3]
        assert [m.seq for m in pd.messages(dm_bd)] == [1, 2]
        clean(pd)
        marked = await kit.call(4, "MarkRead", pb.MarkReadRequest(conversation=dm_ad, seq=3), dave)
        assert (marked.read_seq, marked.unread) == (3, 0)
        await pd.write(
            pb.ClientFrame(mark_reads=[pb.MarkReadRequest(conversation=dm_bd, seq=1)], heartbeat=99)
        )
        await pd.wait_for(lambda: 99 in pd.pushed.heartbeats, 10.0, "the mark-read frame's echo")
        assert not pd.pushed.errors, pd.pushed.errors
        assert await kit.unread(dave, 2) == {dm_ad: (3, 3, 0), dm_bd: (2, 1, 1)}
        await pd.close()


# ---------------------------------------------------------------------------------------------
# 2. SIGKILL of a busy group's leader during 1,000 sends.
# ---------------------------------------------------------------------------------------------

SENDERS = 5
SENDS_EACH = 200


def test_sigkill_of_the_leader_during_1000_sends_loses_and_doubles_nothing(
    chat_cluster: ChatClusterFactory,
) -> None:
    cluster = chat_cluster(nodes=3, groups=2)
    run(_kill_leader_during_sends(cluster), timeout=100.0)


async def _kill_leader_during_sends(cluster: ChatCluster) -> None:
    room = "busy"
    nodes = cluster.node_ids
    async with ChatKit(cluster.spec) as kit:
        users = [await kit.account(f"sender{i}", nodes[i % 3]) for i in range(SENDERS)]
        await kit.call(1, "CreateChannel", pb.CreateChannelRequest(channel=room), users[0])
        for i, user in enumerate(users[1:], 1):
            await kit.call(nodes[i % 3], "JoinChannel", pb.JoinChannelRequest(channel=room), user)
        group = cluster.group_of(room)
        leader = await kit.leader_of(group, users[0], nodes)
        acked: dict[str, Sent] = {}
        acked_at: list[float] = []
        flowing = asyncio.Event()

        async def sender(i: int, user: Account) -> None:
            rotation = [nodes[(i + k) % 3] for k in range(3)]
            for n in range(SENDS_EACH):
                key = f"{user.user}-{n}"
                request = pb.SendRequest(
                    conversation=room, text=f"{user.user} #{n}", idempotency_key=key
                )
                acked[key] = await kit.send(user, request, rotation, timeout=40.0)
                acked_at.append(time.monotonic())
                if len(acked) >= 300:
                    flowing.set()

        started = time.monotonic()
        senders = [asyncio.create_task(sender(i, u)) for i, u in enumerate(users)]
        async with asyncio.timeout(60):
            await flowing.wait()
        cluster.kill(leader)
        killed_at, killed_time = len(acked), time.monotonic()
        await asyncio.gather(*senders)
        took = time.monotonic() - started
        # DESIGN 4.5's target (sends resume within 1 s of a leader's death, p99) is a figure
        # here, not an assertion: the longest pause between acknowledgements after the kill.
        resumed = [killed_time, *(t for t in acked_at if t > killed_time)]
        stall = max(b - a for a, b in itertools.pairwise(resumed))
        duplicates = sum(s.response.duplicate for s in acked.values())
        retried = sum(s.attempts > 1 for s in acked.values())
        print(
            f"\n{len(acked)} sends acknowledged in {took:.1f} s; leader {leader} killed after "
            f"{killed_at}; {retried} needed a retry, {duplicates} answered as duplicates; "
            f"longest pause in acknowledgements after the kill {stall * 1000:.0f} ms"
        )
        assert len(acked) == SENDERS * SENDS_EACH
        # Retrying after the failover, through another gateway, still finds each first answer.
        live = [n for n in nodes if n != leader]
        for user in users:
            for n in (0, SENDS_EACH // 2, SENDS_EACH - 1):
                key = f"{user.user}-{n}"
                request = pb.SendRequest(conversation=room, text="retry", idempotency_key=key)
                again = await kit.send(user, request, live[::-1])
                assert again.response.duplicate, key
                assert again.response.seq == acked[key].response.seq, key

        # Every acknowledged send is in the history exactly once, at its acknowledged seq.
        total = SENDERS * SENDS_EACH
        by_seq: dict[int, pb.ChatMessage] = {}
        for user in users:
            history = await kit.history(user, room, live[0], page=500)
            assert len(history) == total, f"{len(history)} messages, {total} acknowledged"
            check_one_order(history)
            for m in history:
                if m.sender == user.user:
                    by_seq[m.seq] = m
        assert sorted(by_seq) == list(range(1, total + 1))
        keys = [m.idempotency_key for m in by_seq.values()]
        assert len(set(keys)) == total, "an idempotency key appears twice"
        assert set(keys) == set(acked)
        for key, sent in acked.items():
            assert by_seq[sent.response.seq].idempotency_key == key, key

        # Every replica holds the same order: the two live ones now, the killed one after it
        # restarted and caught up.
        expected = [
            StoredMessage(m.seq, m.sender, m.text, m.hlc_ms, m.hlc_counter, m.idempotency_key)
            for m in (by_seq[s] for s in sorted(by_seq))
        ]

        async def replicas_equal(on: Sequence[int]) -> bool:
            return all(cluster.stored_messages(n, room) == expected for n in on)

        await eventually(lambda: replicas_equal(live), 20.0, "the live replicas to agree")
        cluster.restart_node(leader)
        await eventually(lambda: replicas_equal(nodes), 30.0, f"node {leader} to catch up")
        # And it serves again: a send through the restarted node lands right after.
        after = pb.SendRequest(conversation=room, text="after", idempotency_key="after-restart")
        sent = await kit.send(users[0], after, [leader, *live], timeout=30.0)
        assert sent.response.seq == total + 1


# ---------------------------------------------------------------------------------------------
# 3. SIGKILL of a subscriber's gateway; resume elsewhere from the last cursors.
# ---------------------------------------------------------------------------------------------


def test_a_session_resumes_on_another_node_after_its_gateway_is_killed(
    chat_cluster: ChatClusterFactory,
) -> None:
    cluster = chat_cluster(nodes=3, groups=4)
    run(_resume_after_gateway_kill(cluster))


async def _resume_after_gateway_kill(cluster: ChatCluster) -> None:
    room = "ops"
    async with ChatKit(cluster.spec) as kit:
        kim = await kit.account("kim", 1)
        lee = await kit.account("lee", 1)
        await kit.call(1, "CreateChannel", pb.CreateChannelRequest(channel=room), kim)
        await kit.call(1, "JoinChannel", pb.JoinChannelRequest(channel=room), lee)
        # Kim's gateway is the channel group's leader: the kill costs a failover as well.
        gateway = await kit.leader_of(cluster.group_of(room), kim, cluster.node_ids)
        sender_node, resume_node = (n for n in cluster.node_ids if n != gateway)
        dm_kl = dm(kim.user, lee.user)
        old = await open_session(kit, [gateway], kim)
        counter = itertools.count()
        sent: list[Sent] = []

        async def lee_sends(n: int) -> None:
            for _ in range(n):
                i = next(counter)
                target = {"to_user": kim.user} if i % 3 == 2 else {"conversation": room}
                request = pb.SendRequest(text=f"lee {i}", idempotency_key=f"lee-{i}", **target)
                sent.append(await kit.send(lee, request, [sender_node, resume_node]))

        await lee_sends(12)
        await old.wait_messages(room, 8)
        await old.wait_messages(dm_kl, 4)
        background = asyncio.create_task(lee_sends(48))
        await eventually(holds(lambda: len(sent) >= 20), 20.0, "sends flowing")
        at_kill = len(sent)
        cluster.kill(gateway)
        assert await old.wait_ended() is grpc.StatusCode.UNAVAILABLE
        cursors = dict(old.cursors)
        # Messages committed while kim is away: the resumed session must replay them.
        await eventually(holds(lambda: len(sent) >= at_kill + 5), 20.0, "sends while away")
        missed = [s for s in sent if s.response.seq > cursors[s.response.conversation]]
        assert len(missed) >= 5
        new = await open_session(kit, [resume_node, sender_node], kim, cursors=cursors)
        assert new.resumed is not None
        assert {c: new.resumed.cursors[c] for c in cursors} == cursors
        await background
        last = {room: 0, dm_kl: 0}
        for s in sent:
            last[s.response.conversation] = max(last[s.response.conversation], s.response.seq)
        assert sum(last.values()) == 60
        await new.wait_messages(room, last[room])
        await new.wait_messages(dm_kl, last[dm_kl])
        for probe in (old, new):
            clean(probe)
        for conv in (room, dm_kl):
            both = old.messages(conv) + new.messages(conv)
            history = await kit.history(kim, conv, resume_node)
            assert seq_sender_text(both) == seq_sender_text(history), conv
            check_one_order(history)
        await new.close()


def holds(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """A plain predicate as the coroutine function ``eventually`` polls."""

    async def check() -> bool:
        return predicate()

    return check


# ---------------------------------------------------------------------------------------------
# 4. A session that moves to another node.
# ---------------------------------------------------------------------------------------------


def test_a_session_moved_to_another_node_ends_the_old_stream_aborted(
    shared_cluster: ChatCluster,
) -> None:
    run(_session_moves(shared_cluster))


async def _session_moves(cluster: ChatCluster) -> None:
    async with ChatKit(cluster.spec) as kit:
        erin = await kit.account("t4-erin", 1)
        frank = await kit.account("t4-frank", 2)
        conv = dm(erin.user, frank.user)
        sent = itertools.count(1)

        async def frank_says(text: str) -> int:
            request = pb.SendRequest(to_user=erin.user, text=text, idempotency_key=f"f{text}")
            return int((await kit.send(frank, request, [2])).response.seq)

        async def erin_online_on(nodes: list[int]) -> bool:
            who = await kit.call(5, "Who", pb.WhoRequest(), frank)
            mine = [(s.node_id, s.node_address) for s in who.sessions if s.user == erin.user]
            return mine == [(n, cluster.public(n)) for n in nodes]

        laptop = await open_session(kit, [4], erin, session_id="t4-laptop")  # another device
        old = await open_session(kit, [1], erin, session_id="t4-phone")
        assert await frank_says("one") == next(sent)
        await old.wait_messages(conv, 1)
        # The phone reconnects on node 3: the stream on node 1 ends, messages go to node 3.
        new = await open_session(kit, [3], erin, session_id="t4-phone", cursors=old.cursors)
        assert await old.wait_ended() is grpc.StatusCode.ABORTED, old.details
        assert await frank_says("two") == next(sent)
        await new.wait_messages(conv, 2)
        assert [m.text for m in old.messages(conv)] == ["one"]
        assert [m.text for m in new.messages(conv)] == ["two"]
        await eventually(lambda: erin_online_on([3, 4]), 10.0, "erin on nodes 3 and 4 only")
        # ... and again on the same node: the newer stream wins, the route stays.
        newest = await open_session(kit, [3], erin, session_id="t4-phone", cursors=new.cursors)
        assert await new.wait_ended() is grpc.StatusCode.ABORTED, new.details
        assert await frank_says("three") == next(sent)
        await newest.wait_messages(conv, 3)
        await laptop.wait_messages(conv, 3)
        assert [m.text for m in new.messages(conv)] == ["two"]
        assert [m.text for m in newest.messages(conv)] == ["three"]
        assert [m.text for m in laptop.messages(conv)] == ["one", "two", "three"]
        assert await erin_online_on([3, 4]), "the superseded stream dropped the live route"
        for probe in (old, new, newest, laptop):
            clean(probe)
        await newest.close()
        await laptop.close()


# ---------------------------------------------------------------------------------------------
# 5. The whole cluster restarted on its data dir.
# ---------------------------------------------------------------------------------------------


def test_a_whole_cluster_restart_keeps_history_accounts_and_read_markers(
    chat_cluster: ChatClusterFactory,
) -> None:
    cluster = chat_cluster(nodes=3, groups=4)
    run(_whole_restart(cluster))


@dataclass(frozen=True, slots=True)
class Snapshot:
    histories: dict[str, list[tuple[int, str, str, int, int]]]
    unread: dict[str, dict[str, tuple[int, int, int]]]
    channels: list[tuple[str, str, int, int]]


async def _snapshot(kit: ChatKit, people: Sequence[Account], convs: Sequence[str]) -> Snapshot:
    histories = {
        c: [
            (m.seq, m.sender, m.text, m.hlc_ms, m.hlc_counter)
            for m in await kit.history(people[0], c, 2)
        ]
        for c in convs
    }
    unread = {p.user: await kit.unread(p, 3) for p in people}
    listing = await kit.retrying([1], "ListChannels", pb.ListChannelsRequest(), people[0])
    channels = [(c.name, c.creator, c.member_count, c.last_seq) for c in listing.channels]
    return Snapshot(histories, unread, channels)


async def _whole_restart(cluster: ChatCluster) -> None:
    room = "journal"
    async with ChatKit(cluster.spec) as kit:
        mia = await kit.account("mia", 1)
        ned = await kit.account("ned", 2)
        await kit.call(1, "CreateChannel", pb.CreateChannelRequest(channel=room), mia)
        await kit.call(2, "JoinChannel", pb.JoinChannelRequest(channel=room), ned)
        conv = dm(mia.user, ned.user)
        for i in range(20):
            who, node = (mia, 1) if i % 2 else (ned, 2)
            await kit.send(
                who,
                pb.SendRequest(conversation=room, text=f"r{i}", idempotency_key=f"r{i}"),
                [node],
            )
        for i in range(5):
            await kit.send(
                mia, pb.SendRequest(to_user=ned.user, text=f"d{i}", idempotency_key=f"d{i}"), [3]
            )
        await kit.call(1, "MarkRead", pb.MarkReadRequest(conversation=room, seq=12), mia)
        await kit.call(2, "MarkRead", pb.MarkReadRequest(conversation=conv, seq=3), ned)
        before = await _snapshot(kit, [mia, ned], [room, conv])
        # Sending moves one's own marker (ned last wrote seq 19, mia seq 20 and all the DMs);
        # mia's MarkRead to 12 is then behind her marker and moves nothing.
        assert before.unread[ned.user] == {room: (20, 19, 1), conv: (5, 3, 2)}
        assert before.unread[mia.user] == {room: (20, 20, 0), conv: (5, 5, 0)}

    cluster.restart_all()

    async with ChatKit(cluster.spec) as kit:
        # Old tokens are still open sessions, and the passwords still log in.
        after = await _snapshot(kit, [mia, ned], [room, conv])
        assert after == before
        again = await kit.login("mia", 3)
        assert again.token != mia.token
        wrong = await rpc_error(
            kit.call(1, "Login", pb.LoginRequest(user="ned", password=PASSWORD + "x"))
        )
        assert wrong.code() is grpc.StatusCode.UNAUTHENTICATED
        # The dedup table survived: an old key answers its old seq; new sends go on after it.
        old_key = pb.SendRequest(conversation=room, text="r3", idempotency_key="r3")
        replay = await kit.send(mia, old_key, [2])
        assert replay.response.duplicate and replay.response.seq == 4
        fresh = pb.SendRequest(conversation=room, text="after restart", idempotency_key="r20")
        assert (await kit.send(again, fresh, [3])).response.seq == 21
        # A session resumes from cursors taken before the restart.
        probe = await open_session(kit, [2], ned, cursors={room: 19, conv: 5})
        await probe.wait_messages(room, 21)
        assert [m.text for m in probe.messages(room)] == ["r19", "after restart"]
        clean(probe)
        await probe.close()


# ---------------------------------------------------------------------------------------------
# 6. Bad inputs: the status, the field, and nothing changed.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bad:
    name: str
    method: str
    request: object
    who: str  # an account name, or "metadata:<authorization value>", or "" for none
    code: grpc.StatusCode
    field: str


INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTH = grpc.StatusCode.UNAUTHENTICATED
TOO_BIG = grpc.StatusCode.RESOURCE_EXHAUSTED
NOT_FOUND = grpc.StatusCode.NOT_FOUND

ROOM6 = "t6-room"
DM6 = "dm:t6-gina:t6-hank"


def _send(text: str = "hello", key: str = "bad-1", **target: str) -> pb.SendRequest:
    return pb.SendRequest(text=text, idempotency_key=key, **(target or {"conversation": ROOM6}))


BAD_INPUTS = (
    Bad("unknown token", "History", pb.HistoryRequest(conversation=ROOM6),
        "metadata:Bearer t6-gina." + "A" * 43, UNAUTH, "authorization"),
    Bad("not a bearer token", "Send", _send(), "metadata:Token abc", UNAUTH, "authorization"),
    Bad("no token", "Send", _send(), "", UNAUTH, "authorization"),
    Bad("logged-out token", "Send", _send(), "t6-gina-old", UNAUTH, "authorization"),
    Bad("wrong password", "Login", pb.LoginRequest(user="t6-gina", password="wrong-password"),
        "", UNAUTH, "password"),
    Bad("unknown user login", "Login", pb.LoginRequest(user="t6-nobody", password=PASSWORD),
        "", UNAUTH, "password"),
    Bad("others' DM history", "History", pb.HistoryRequest(conversation=DM6),
        "t6-ivan", DENIED, "conversation"),
    Bad("send into others' DM", "Send", _send(conversation=DM6), "t6-ivan", DENIED,
        "conversation"),
    Bad("channel history of a non-member", "History", pb.HistoryRequest(conversation=ROOM6),
        "t6-ivan", DENIED, "conversation"),
    Bad("send by a non-member", "Send", _send(), "t6-ivan", DENIED, "conversation"),
    Bad("text of 4097 bytes", "Send", _send("x" * 4097), "t6-gina", TOO_BIG, "text"),
    Bad("text of 4098 bytes in 2049 chars", "Send", _send("é" * 2049), "t6-gina", TOO_BIG,
        "text"),
    Bad("empty text", "Send", _send(""), "t6-gina", INVALID, "text"),
    Bad("whitespace text", "Send", _send(" \n\t"), "t6-gina", INVALID, "text"),
    Bad("empty idempotency key", "Send", _send(key=""), "t6-gina", INVALID, "idempotency_key"),
    Bad("key with a space", "Send", _send(key="a b"), "t6-gina", INVALID, "idempotency_key"),
    Bad("no target", "Send", pb.SendRequest(text="x", idempotency_key="k"), "t6-gina", INVALID,
        "conversation"),
    Bad("bad channel name", "CreateChannel", pb.CreateChannelRequest(channel="Bad Name"),
        "t6-gina", INVALID, "channel"),
    Bad("channel name of 33", "CreateChannel", pb.CreateChannelRequest(channel="c" * 33),
        "t6-gina", INVALID, "channel"),
    Bad("bad user name", "Register", pb.RegisterRequest(user="T6-Upper", password=PASSWORD),
        "", INVALID, "user"),
    Bad("short password", "Register", pb.RegisterRequest(user="t6-short", password="1234567"),
        "", INVALID, "password"),
    Bad("user taken", "Register", pb.RegisterRequest(user="t6-gina", password=PASSWORD),
        "", grpc.StatusCode.ALREADY_EXISTS, "user"),
    Bad("channel taken", "CreateChannel", pb.CreateChannelRequest(channel=ROOM6), "t6-ivan",
        grpc.StatusCode.ALREADY_EXISTS, "channel"),
    Bad("bad DM peer name", "Send", _send(to_user="Not A Name"), "t6-gina", INVALID, "to_user"),
    Bad("DM to oneself", "Send", _send(to_user="t6-gina"), "t6-gina", INVALID, "to_user"),
    Bad("DM to an unknown user", "Send", _send(to_user="t6-nobody"), "t6-gina", NOT_FOUND,
        "to_user"),
    Bad("malformed DM id", "Send", _send(conversation="dm:t6-hank:t6-gina"), "t6-gina",
        INVALID, "conversation"),
    Bad("join an unknown channel", "JoinChannel", pb.JoinChannelRequest(channel="t6-nosuch"),
        "t6-gina", NOT_FOUND, "channel"),
    Bad("send to an unknown channel", "Send", _send(conversation="t6-nosuch"), "t6-gina",
        NOT_FOUND, "conversation"),
    Bad("history limit 10,000", "History", pb.HistoryRequest(conversation=ROOM6, limit=10_000),
        "t6-gina", INVALID, "limit"),
    Bad("history before 0", "History", pb.HistoryRequest(conversation=ROOM6, before=0),
        "t6-gina", INVALID, "before"),
    Bad("history after -1", "History", pb.HistoryRequest(conversation=ROOM6, after=-1),
        "t6-gina", INVALID, "after"),
    Bad("negative cursor", "Sync", pb.SyncRequest(cursors={ROOM6: -1}), "t6-gina", INVALID,
        f"cursors[{ROOM6}]"),
    Bad("cursor of an unknown channel", "Sync", pb.SyncRequest(cursors={"t6-nosuch": 0}),
        "t6-gina", DENIED, "cursors[t6-nosuch]"),
    Bad("cursor of others' DM", "Sync", pb.SyncRequest(cursors={DM6: 0}), "t6-ivan", DENIED,
        f"cursors[{DM6}]"),
    Bad("cursor of a malformed id", "Sync", pb.SyncRequest(cursors={"No Id": 0}), "t6-gina",
        INVALID, "cursors[No Id]"),
    Bad("sync limit 501", "Sync", pb.SyncRequest(cursors={ROOM6: 0}, limit=501), "t6-gina",
        INVALID, "limit"),
    Bad("mark read seq 0", "MarkRead", pb.MarkReadRequest(conversation=ROOM6, seq=0),
        "t6-gina", INVALID, "seq"),
    Bad("mark read past the end", "MarkRead", pb.MarkReadRequest(conversation=ROOM6, seq=99),
        "t6-gina", grpc.StatusCode.FAILED_PRECONDITION, "seq"),
)  # fmt: skip


def test_bad_inputs_name_their_field_and_change_nothing(shared_cluster: ChatCluster) -> None:
    run(_bad_inputs(shared_cluster))


async def _bad_inputs(cluster: ChatCluster) -> None:
    async with ChatKit(cluster.spec) as kit:
        gina = await kit.account("t6-gina", 1)
        hank = await kit.account("t6-hank", 2)
        ivan = await kit.account("t6-ivan", 3)
        gone = await kit.login("t6-gina", 4)
        await kit.call(4, "Logout", pb.LogoutRequest(), gone)
        accounts = {a.user: a for a in (gina, hank, ivan)}
        accounts["t6-gina-old"] = gone
        await kit.call(1, "CreateChannel", pb.CreateChannelRequest(channel=ROOM6), gina)
        await kit.call(2, "JoinChannel", pb.JoinChannelRequest(channel=ROOM6), hank)
        first = await kit.send(gina, _send("first", key="g1"), [1])
        await kit.send(hank, _send("second", key="h1"), [2])
        await kit.send(gina, _send("psst", key="g2", to_user=hank.user), [1])
        people = [gina, hank, ivan]
        before = await _snapshot(kit, [gina, hank], [ROOM6, DM6])
        unread_before = {p.user: await kit.unread(p, 5) for p in people}

        wrong: list[str] = []
        for i, bad in enumerate(BAD_INPUTS):
            node = cluster.node_ids[i % len(cluster.node_ids)]
            if bad.who.startswith("metadata:"):
                meta: tuple[tuple[str, str], ...] = (
                    ("authorization", bad.who.removeprefix("metadata:")),
                )
            else:
                meta = accounts[bad.who].metadata if bad.who else ()
            err = await rpc_error(kit.call(node, bad.method, bad.request, metadata=meta))
            got = (err.code(), trailing(err).get("x-field"))
            details = err.details() or ""
            if got != (bad.code, bad.field) or not details.startswith(f"{bad.field}: "):
                wrong.append(f"{bad.name}: got {got} {err.details()!r}, want {bad.code, bad.field}")
        assert not wrong, "\n".join(wrong)

        # The same for a session: a bad first frame ends the stream naming the field; a bad
        # send inside a good stream fails alone.
        for cursors, code, field in (
            ({ROOM6: -1}, INVALID, f"resume.cursors[{ROOM6}]"),
            ({DM6: 0}, DENIED, f"resume.cursors[{DM6}]"),
            ({"t6-nosuch": 0}, DENIED, "resume.cursors[t6-nosuch]"),
        ):
            who = ivan if cursors.get(DM6) == 0 else gina
            probe = SessionProbe(kit, 2, who, cursors=cursors)
            with pytest.raises(AssertionError):
                await probe.open()
            await probe.close()
            assert (probe.code, probe.trailers.get("x-field")) == (code, field), (
                cursors,
                probe.code,
                probe.details,
            )
        probe = await open_session(kit, [3], gina)
        results = await probe.send(
            [_send("x" * 4097, key="s1"), _send("", key="s2"), _send(key="s3", to_user="t6-nobody")]
        )
        assert [(r.error.code, r.error.field) for r in results] == [
            (TOO_BIG.value[0], "sends[0].text"),
            (INVALID.value[0], "sends[1].text"),
            (NOT_FOUND.value[0], "sends[2].to_user"),
        ]
        await probe.write(
            pb.ClientFrame(mark_reads=[pb.MarkReadRequest(conversation=ROOM6, seq=50)], heartbeat=7)
        )
        await probe.wait_for(lambda: 7 in probe.pushed.heartbeats, 10.0, "the heartbeat echo")
        assert [(e.code, e.field) for e in probe.pushed.errors] == [
            (grpc.StatusCode.FAILED_PRECONDITION.value[0], "mark_reads[0].seq")
        ]
        assert not probe.messages(ROOM6)
        await probe.close()

        # A retried key changes nothing either: it answers the first send's seq.
        again = await kit.send(gina, _send("first", key="g1"), [4])
        assert again.response.duplicate and again.response.seq == first.response.seq
        assert await _snapshot(kit, [gina, hank], [ROOM6, DM6]) == before
        assert {p.user: await kit.unread(p, 5) for p in people} == unread_before


def test_the_send_rate_limit_answers_resource_exhausted_with_a_retry_after(
    chat_cluster: ChatClusterFactory,
) -> None:
    cluster = chat_cluster(
        nodes=1, groups=1, rf=1, node_args=("--send-rate", "2", "--send-burst", "3")
    )
    run(_rate_limit(cluster))


async def _rate_limit(cluster: ChatCluster) -> None:
    async with ChatKit(cluster.spec) as kit:
        rose = await kit.account("rose", 1)
        await kit.call(1, "CreateChannel", pb.CreateChannelRequest(channel="fast"), rose)

        def send(i: int) -> pb.SendRequest:
            return pb.SendRequest(conversation="fast", text=f"m{i}", idempotency_key=f"k{i}")

        for i in range(3):  # the burst
            await kit.call(1, "Send", send(i), rose)
        err = await rpc_error(kit.call(1, "Send", send(3), rose))
        meta = trailing(err)
        assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, err
        assert meta.get("x-field") == "text", meta
        wait_ms = int(meta["x-retry-after-ms"])
        assert 0 < wait_ms <= 500, meta  # one token at 2/s
        history = await kit.call(1, "History", pb.HistoryRequest(conversation="fast"), rose)
        assert [m.text for m in history.messages] == ["m0", "m1", "m2"]
        # Retrying after the time the server named succeeds, with the same key.
        await asyncio.sleep(wait_ms / 1000)  # the protocol's back-off, not synchronisation
        answer = await kit.call(1, "Send", send(3), rose)
        assert answer.seq == 4 and not answer.duplicate
        # On a session, sends over the rate fail alone, each naming itself and when to retry
        # (three sends need 1.5 s of refill; the session opens far sooner).
        probe = await open_session(kit, [1], rose)
        results = await probe.send([send(i) for i in range(4, 7)])
        await probe.close()
        failed = [(i, r.error) for i, r in enumerate(results) if r.HasField("error")]
        assert failed, results
        for i, failure in failed:
            assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], failure
            assert failure.field.startswith(f"sends[{i}]"), failure
            assert 0 < failure.retry_after_ms <= 1500, failure
        went = [f"m{4 + i}" for i, r in enumerate(results) if r.HasField("sent")]
        history = await kit.call(1, "History", pb.HistoryRequest(conversation="fast"), rose)
        assert [m.text for m in history.messages] == ["m0", "m1", "m2", "m3", *went]


# ---------------------------------------------------------------------------------------------
# 7. A gateway that does not host the conversation's group.
# ---------------------------------------------------------------------------------------------


def test_a_gateway_forwards_for_groups_it_does_not_host(shared_cluster: ChatCluster) -> None:
    run(_forwarding(shared_cluster))


async def _forwarding(cluster: ChatCluster) -> None:
    gateway = 1
    async with ChatKit(cluster.spec) as kit:
        probe_user = await kit.account("t7-probe", 2)
        status = await kit.status(gateway, probe_user)
        hosted = {g.group for g in status.groups}
        assert len(hosted) < cluster.spec.groups, "the gateway hosts every group"
        assert hosted == {g for g in range(cluster.spec.groups) if gateway in cluster.replicas(g)}

        def foreign(prefix: str, key: Any) -> str:
            return next(
                name for name in (f"{prefix}{i}" for i in range(1000)) if key(name) not in hosted
            )

        room = foreign("t7-room", cluster.group_of)
        olga_name = foreign("t7-olga", lambda u: cluster.placement.group_for(f"user:{u}"))
        olga = await kit.account(olga_name, gateway)  # her own group is foreign too
        pat = await kit.account("t7-pat", 2)
        conv = dm(olga.user, pat.user)
        host = cluster.replicas(cluster.group_of(room))[0]
        await kit.call(gateway, "CreateChannel", pb.CreateChannelRequest(channel=room), olga)
        await kit.call(host, "JoinChannel", pb.JoinChannelRequest(channel=room), pat)
        probe = await open_session(kit, [gateway], olga)
        sent = await kit.send(
            olga, pb.SendRequest(conversation=room, text="via 1", idempotency_key="o1"), [gateway]
        )
        assert sent.response.seq == 1 and sent.gateways == (gateway,)
        (result,) = await probe.send(
            [pb.SendRequest(conversation=room, text="session", idempotency_key="o2")]
        )
        assert result.sent.seq == 2
        await kit.send(
            pat, pb.SendRequest(conversation=room, text="from pat", idempotency_key="p1"), [host]
        )
        await kit.send(
            pat, pb.SendRequest(to_user=olga.user, text="dm", idempotency_key="p2"), [host]
        )
        await probe.wait_messages(room, 3)
        await probe.wait_messages(conv, 1)
        assert [m.text for m in probe.messages(room)] == ["via 1", "session", "from pat"]
        clean(probe)
        history = await kit.history(olga, room, gateway)
        assert seq_sender_text(history) == seq_sender_text(probe.messages(room))
        stale = await kit.history(olga, room, gateway, stale_ok=True)
        assert [m.seq for m in stale] == [m.seq for m in history][: len(stale)]
        synced = await kit.call(gateway, "Sync", pb.SyncRequest(cursors={room: 1, conv: 0}), olga)
        # By conversation id ("dm:..." sorts first), then seq.
        assert [(m.conversation, m.seq) for m in synced.messages] == [
            (conv, 1),
            (room, 2),
            (room, 3),
        ]
        await kit.call(gateway, "MarkRead", pb.MarkReadRequest(conversation=room, seq=3), olga)
        assert (await kit.unread(olga, gateway))[room] == (3, 3, 0)
        listing = await kit.call(
            gateway, "ListChannels", pb.ListChannelsRequest(joined_only=True), olga
        )
        assert [c.name for c in listing.channels] == [room]
        await probe.close()


def test_chatkit_reads_the_layout_the_nodes_write(shared_cluster: ChatCluster) -> None:
    """The replica files ``stored_messages`` opens are where the nodes keep their groups."""
    for node in shared_cluster.node_ids:
        for group in range(shared_cluster.spec.groups):
            exists = shared_cluster.database(node, group).exists()
            assert exists == (node in shared_cluster.replicas(group)), (node, group)
