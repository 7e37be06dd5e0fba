"""One's own messages are never unread: through the whole service (send -> apply on a real
ChatState -> UnreadCounts / MarkRead answers), and in the CLI's model, whose read marker follows
an acknowledged send as the server's does (shards/chat/posts.py moves the sender's marker to
each new message they send; a replay moves nothing)."""

from __future__ import annotations

import pytest

from clients.chat.model import ChatModel
from clients.models import Message, SendReceipt, Unread
from proto import chat_pb2 as pb
from shards.chat.service import Metadata
from tests.unit import test_chat_service
from tests.unit.test_chat_service import DM, World

Counts = list[tuple[str, int, int, int]]


world = test_chat_service.world
"""The service-test world fixture (pytest finds fixtures among a test module's names)."""


@pytest.fixture
def chat(world: World) -> tuple[World, Metadata, Metadata]:
    """alice created #general and bob joined it."""
    alice, bob = world.user("alice"), world.user("bob")
    world.call(world.svc.create_channel, pb.CreateChannelRequest(channel="general"), alice)
    world.call(world.svc.join_channel, pb.JoinChannelRequest(channel="general"), bob)
    return world, alice, bob


def _counts(world: World, meta: Metadata) -> Counts:
    """(conversation, last_seq, read_seq, unread) of every conversation of the caller."""
    resp = world.call(world.svc.unread_counts, pb.UnreadCountsRequest(), meta)
    return [(c.conversation, c.last_seq, c.read_seq, c.unread) for c in resp.conversations]


def test_a_sender_sees_nothing_unread_and_the_recipient_sees_it(
    chat: tuple[World, Metadata, Metadata],
) -> None:
    world, alice, bob = chat
    for i in range(3):
        assert world.send(alice, f"m{i}", f"k{i}", conv="general").seq == i + 1
    assert _counts(world, alice) == [("general", 3, 3, 0)]
    assert _counts(world, bob) == [("general", 3, 0, 3)]
    # bob writes: he has caught up (3 read), alice has one unread (his).
    assert world.send(bob, "hi", "b1", conv="general").seq == 4
    assert _counts(world, bob) == [("general", 4, 4, 0)]
    assert _counts(world, alice) == [("general", 4, 3, 1)]
    # MarkRead is unchanged: not behind the marker the send left, not beyond the last message.
    back = world.call(world.svc.mark_read, pb.MarkReadRequest(conversation="general", seq=1), bob)
    assert (back.read_seq, back.unread) == (4, 0)
    ahead = world.call(
        world.svc.mark_read, pb.MarkReadRequest(conversation="general", seq=4), alice
    )
    assert (ahead.read_seq, ahead.unread) == (4, 0)


def test_a_dm_both_ways_through_the_service(chat: tuple[World, Metadata, Metadata]) -> None:
    world, alice, bob = chat
    assert world.send(alice, "psst", "a1", to="bob").conversation == DM
    assert _counts(world, alice) == [(DM, 1, 1, 0), ("general", 0, 0, 0)]
    assert _counts(world, bob) == [(DM, 1, 0, 1), ("general", 0, 0, 0)]
    world.send(bob, "yes?", "b1", conv=DM)
    world.send(bob, "well?", "b2", to="alice")
    assert _counts(world, alice) == [(DM, 3, 1, 2), ("general", 0, 0, 0)]
    assert _counts(world, bob) == [(DM, 3, 3, 0), ("general", 0, 0, 0)]


def test_a_retried_send_moves_no_marker(chat: tuple[World, Metadata, Metadata]) -> None:
    world, alice, bob = chat
    world.send(alice, "one", "k1", conv="general")
    world.send(bob, "two", "k1", conv="general")
    before = world.router.dumps()
    again = world.send(alice, "one", "k1", conv="general")
    assert (again.seq, again.duplicate) == (1, True)
    assert world.router.dumps() == before  # nothing written, markers included
    assert _counts(world, alice) == [("general", 2, 1, 1)]
    assert _counts(world, bob) == [("general", 2, 2, 0)]


# ---- the CLI's model --------------------------------------------------------------------------


def _msg(seq: int, sender: str) -> Message:
    return Message("general", seq, sender, sender, f"m{seq}", 1_700_000_000_000 + seq, 0, "")


def test_the_cli_marker_follows_an_acknowledged_send() -> None:
    model = ChatModel("alice")
    model.apply_unread([Unread("general", "", 2, 0, 2)])
    conv = model.conversations["general"]
    assert conv.unread("alice") == 2
    pending = model.outbox.add("general", "me", "k1", 0)
    model.apply_receipt(pending, SendReceipt("general", 3, 0, 0, False, "k1"))
    # The server moved alice's marker to her message: 1 and 2 are read, as the server says.
    assert (conv.read_seq, conv.unread("alice")) == (3, 0)
    model.apply_message(_msg(4, "bob"))
    assert conv.unread("alice") == 1
    # A late receipt (a retry answered with the original seq) never moves the marker back.
    model.apply_read("general", 4)
    retry = model.outbox.add("general", "me", "k1", 0)
    model.apply_receipt(retry, SendReceipt("general", 3, 0, 0, True, "k1"))
    assert (conv.read_seq, conv.unread("alice")) == (4, 0)
