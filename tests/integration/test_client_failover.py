"""The client library against a real cluster: its failover is transparent to the caller.

``tests/unit/test_client_lib.py`` proves the library's failover logic against fake servers;
this proves it against real nodes. A subscribed ``AsyncChatClient`` loses its gateway to
SIGKILL while another user keeps sending: the caller sees only ConnectionEvents, every message
arrives once and in order, and the caller's own sends (awaited across the failover) land once.
"""

from __future__ import annotations

import asyncio

from clients import AsyncChatClient, ConnectionEvent, ConnectionState, MessageEvent
from tests.integration.chatkit import ChatClusterFactory, chat_cluster

__all__ = ["chat_cluster"]  # the fixture, used by name

PASSWORD = "failover-pw"


def test_a_subscribed_client_survives_its_gateway_being_killed(
    chat_cluster: ChatClusterFactory,
) -> None:
    cluster = chat_cluster(nodes=3, groups=4, rf=3)
    victim, *others = cluster.node_ids
    # bob's rotation starts at the victim; alice never talks to it.
    bob_nodes = [cluster.public(victim)] + [cluster.public(n) for n in others]
    alice_nodes = [cluster.public(n) for n in others]

    async def scenario() -> None:
        alice = await AsyncChatClient.connect(alice_nodes)
        bob = await AsyncChatClient.connect(bob_nodes)
        try:
            await alice.register("alice", PASSWORD)
            await bob.register("bob", PASSWORD)
            await alice.login("alice", PASSWORD)
            await bob.login("bob", PASSWORD)
            await alice.create_channel("ops")
            await bob.join_channel("ops")
            await bob.open_session()
            seen: list[int] = []
            states: list[ConnectionState] = []
            got_all = asyncio.Event()
            total = 60

            async def watch() -> None:
                async for event in bob.events():
                    if isinstance(event, ConnectionEvent):
                        states.append(event.state)
                    elif isinstance(event, MessageEvent) and event.message.conversation == "ops":
                        seen.append(event.message.seq)
                        if len(seen) >= total:
                            got_all.set()

            watcher = asyncio.create_task(watch())
            for i in range(total // 2):
                await alice.send(f"before {i}", "ops", idempotency_key=f"a-{i}")
            own = await bob.send("bob before", "ops", idempotency_key="b-0")
            cluster.kill(victim)
            for i in range(total // 2, total - 2):
                await alice.send(f"after {i}", "ops", idempotency_key=f"a-{i}")
            # bob's send goes out over the new gateway once the session resumed (same key).
            own_again = await bob.send("bob after", "ops", idempotency_key="b-1")
            async with asyncio.timeout(60):  # a deadline on the condition, not a sleep
                await got_all.wait()
            watcher.cancel()

            history = await bob.history("ops", after=0, limit=500)
            seqs = [m.seq for m in history.messages]
            assert seqs == list(range(1, total + 1))  # nothing lost, nothing doubled
            assert seen == seqs  # pushed once each, in order, across the failover
            assert own.seq < own_again.seq
            keys = [m.idempotency_key for m in history.messages if m.sender == "bob"]
            assert keys == ["b-0", "b-1"]
            assert ConnectionState.RECONNECTING in states
            assert states[-1] in (ConnectionState.RESUMED, ConnectionState.CONNECTED)
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(scenario())
