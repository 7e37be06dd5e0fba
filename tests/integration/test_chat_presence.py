"""Presence across a gateway crash, on real processes: when the node serving a user's only
session is SIGKILLed, the user's contacts on other nodes are told the user went offline, and
``Who`` stops listing them, whether the node

- stays dead: the route reaper (``shards.chat.reaper``) of each group's leader drops the dead
  gateway's routes once discovery has shown it down for ``--route-grace`` seconds. It takes the
  dead node's discovery lease (3 s, the launcher's default), then the grace period (2 s here),
  then the next reaper poll (1 s): ~4-7 s after the kill;
- or comes back: the restarted node drops the routes it held before it started (``ChatApp``),
  long before the reaper's grace period (set to 10 minutes there) would.
"""

from __future__ import annotations

import asyncio
import time

from proto import chat_pb2 as pb
from tests.integration import chatkit
from tests.integration.chatkit import (
    NO_RATE_LIMIT,
    ChatCluster,
    ChatClusterFactory,
    ChatKit,
    SessionProbe,
    eventually,
)

chat_cluster = chatkit.chat_cluster
"""The per-test cluster fixture (pytest finds fixtures among a test module's names)."""

OFFLINE_WITHIN = 20.0
"""Seconds allowed from the kill to the pushed offline event (~7 s expected, see above)."""


def test_contacts_see_a_user_go_offline_when_their_gateway_dies(
    chat_cluster: ChatClusterFactory,
) -> None:
    cluster = chat_cluster(node_args=(*NO_RATE_LIMIT, "--route-grace", "2"))
    asyncio.run(asyncio.wait_for(_offline_after_gateway_kill(cluster, restart=False), 60.0))


def test_contacts_see_a_user_go_offline_when_their_gateway_restarts(
    chat_cluster: ChatClusterFactory,
) -> None:
    cluster = chat_cluster(node_args=(*NO_RATE_LIMIT, "--route-grace", "600"))
    asyncio.run(asyncio.wait_for(_offline_after_gateway_kill(cluster, restart=True), 60.0))


async def _offline_after_gateway_kill(cluster: ChatCluster, *, restart: bool) -> None:
    ann_gateway, bob_gateway = 1, 2  # the observer is on a node that survives
    async with ChatKit(cluster.spec) as kit:
        ann = await kit.account("ann", bob_gateway)
        bob = await kit.account("bob", bob_gateway)
        await kit.call(bob_gateway, "CreateChannel", pb.CreateChannelRequest(channel="pals"), ann)
        await kit.call(bob_gateway, "JoinChannel", pb.JoinChannelRequest(channel="pals"), bob)

        bob_probe = SessionProbe(kit, bob_gateway, bob)
        ann_probe = SessionProbe(kit, ann_gateway, ann, session_id="ann-phone")
        await bob_probe.open()
        try:
            await ann_probe.open()

            def presence_of_ann(online: bool) -> bool:
                return any(
                    p.user == "ann" and p.online == online for p in bob_probe.pushed.presence
                )

            await bob_probe.wait_for(lambda: presence_of_ann(True), 15.0, "ann online")

            async def who_lists_ann() -> bool:
                who = await kit.call(bob_gateway, "Who", pb.WhoRequest(channel="pals"), bob)
                return any(s.user == "ann" for s in who.sessions)

            assert await who_lists_ann()

            cluster.kill(ann_gateway)
            killed = time.monotonic()
            if restart:
                cluster.restart_node(ann_gateway)
            await bob_probe.wait_for(
                lambda: presence_of_ann(False), OFFLINE_WITHIN, "ann offline after the kill"
            )
            took = time.monotonic() - killed
            how = "killed and restarted" if restart else "killed"
            print(f"\nann offline at bob {took:.1f} s after her gateway was {how}")
            offline = [p for p in bob_probe.pushed.presence if p.user == "ann" and not p.online]
            assert len(offline) == 1, offline
            assert not bob_probe.ended, (bob_probe.code, bob_probe.details)

            async def who_forgot_ann() -> bool:
                return not await who_lists_ann()

            await eventually(who_forgot_ann, 10.0, "Who without ann")
        finally:
            await ann_probe.close()  # its stream ended with the node; this stops its tasks
            await bob_probe.close()
