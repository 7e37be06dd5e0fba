"""The chat CLI's UI-free state (clients/chat/model.py, outbox.py, status.py, mentions.py,
colors.py): merging messages by seq, holes, unread counts and mentions, the read marker, the
order of pending sends, and the words of the status line."""

from __future__ import annotations

import subprocess
import sys

from clients.chat.colors import PALETTE, color_index
from clients.chat.mentions import mention_spans, mentions
from clients.chat.model import ChatModel, Kind
from clients.chat.outbox import Outbox, SendState
from clients.chat.status import (
    Leader,
    LinkState,
    LinkStatus,
    describe_changes,
    leader_changes,
    settled,
)
from clients.models import Message, SendReceipt, Unread

T0 = 1_700_000_000_000


def msg(conv: str, seq: int, sender: str = "bob", text: str = "", key: str = "") -> Message:
    return Message(conv, seq, sender, sender, text or f"m{seq}", T0 + seq * 1000, 0, key)


# ---- mentions and colours -------------------------------------------------------------------


def test_mentions_are_whole_words() -> None:
    assert mentions("hi @alice!", "alice")
    assert mentions("@alice", "alice")
    assert not mentions("hi @alicex", "alice")
    assert not mentions("mail bob@alice", "alice")
    assert not mentions("@al", "alice")
    assert not mentions("alice", "alice")
    assert not mentions("@@alice", "alice")
    assert mentions("(@a-b)", "a-b")
    assert list(mention_spans("@bo and @bob, @bob", "bob")) == [(8, 12), (14, 18)]


def test_colour_per_user_is_stable_across_processes() -> None:
    here = [color_index(u) for u in ("alice", "bob", "carol", "dave")]
    code = "from clients.chat.colors import color_index as c; print([c(u) for u in "
    code += "('alice','bob','carol','dave')])"
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert there.strip() == str(here)
    assert all(0 <= i < len(PALETTE) for i in here)
    assert len({color_index(f"user{i}") for i in range(100)}) == len(PALETTE)
    assert not any(c in PALETTE for c in ("ansiblack", "ansiwhite", "ansigray"))


# ---- conversations --------------------------------------------------------------------------


def test_messages_merge_by_seq_whatever_the_order() -> None:
    model = ChatModel("alice")
    model.apply_message(msg("general", 3))
    model.apply_page("general", [msg("general", s) for s in (1, 2, 3)], oldest=True)
    assert not model.apply_message(msg("general", 2))
    conv = model.conversations["general"]
    assert conv.seqs == [1, 2, 3]
    assert conv.reached_oldest and conv.last_seq == 3
    assert conv.holes() == []
    assert conv.kind is Kind.CHANNEL and "general" in model.channels


def test_holes_between_held_messages_and_up_to_the_last_seq() -> None:
    model = ChatModel("alice")
    model.apply_unread([Unread("general", "", 20, 0, 20)])
    conv = model.conversations["general"]
    assert conv.holes() == []  # nothing loaded yet: the first page will come
    model.apply_page("general", [msg("general", s) for s in (5, 6)], oldest=False)
    model.apply_message(msg("general", 9))
    assert conv.holes() == [(7, 8), (10, 20)]
    conv.trim_before(9)
    assert conv.seqs == [9] and not conv.reached_oldest
    assert conv.holes() == [(10, 20)]


def test_dm_conversations_are_made_from_their_id() -> None:
    model = ChatModel("bob")
    model.apply_message(msg("dm:alice:bob", 1, "alice"))
    conv = model.conversations["dm:alice:bob"]
    assert conv.kind is Kind.DM and conv.peer == "alice"
    assert model.label(conv.id) == "@alice"
    assert "alice" in model.users_known()


def test_unread_counts_skip_own_messages_and_follow_the_marker() -> None:
    model = ChatModel("alice")
    model.apply_unread([Unread("general", "", 2, 2, 0)])
    for seq, sender in [(3, "bob"), (4, "alice"), (5, "carol")]:
        model.apply_message(msg("general", seq, sender))
    conv = model.conversations["general"]
    # alice's own message at 4 (sent from any device) moved her marker there, as the server
    # does: only carol's 5 is unread.
    assert conv.read_seq == 4
    assert conv.unread("alice") == 1
    model.apply_read("general", 5)
    assert conv.unread("alice") == 0
    model.apply_read("general", 3)  # markers never move back
    assert conv.read_seq == 5


def test_mention_counts_channels_by_name_and_every_unread_dm() -> None:
    model = ChatModel("alice")
    model.apply_message(msg("general", 1, "alice", "@alice talking to myself"))
    model.apply_message(msg("general", 2, "bob", "hi @alice"))
    model.apply_message(msg("general", 3, "bob", "hi all"))
    model.apply_message(msg("dm:alice:bob", 1, "bob", "psst"))
    assert model.conversations["general"].mention_count("alice") == 1
    assert model.conversations["dm:alice:bob"].mention_count("alice") == 1
    model.apply_read("general", 2)
    assert model.conversations["general"].mention_count("alice") == 0


def test_switch_places_the_read_marker_only_when_something_is_unread() -> None:
    model = ChatModel("alice")
    model.apply_unread([Unread("general", "", 5, 3, 2), Unread("random", "", 4, 4, 0)])
    assert model.switch("general") is not None
    assert model.conversations["general"].marker_seq == 3
    model.apply_read("general", 5)
    assert model.conversations["general"].marker_seq == 3  # stays while the user reads on
    model.switch("random")
    assert model.conversations["general"].marker_seq is None
    assert model.conversations["random"].marker_seq is None


def test_next_unread_prefers_mentions_and_wraps_around() -> None:
    model = ChatModel("alice")
    model.apply_unread(
        [
            Unread("a", "", 1, 0, 1),
            Unread("b", "", 0, 0, 0),
            Unread("c", "", 0, 0, 0),
        ]
    )
    model.apply_message(msg("c", 1, "bob", "@alice look"))
    model.switch("b")
    nxt = model.next_unread()
    assert nxt is not None and nxt.id == "c"  # the mention first
    model.apply_read("c", 1)
    nxt = model.next_unread()
    assert nxt is not None and nxt.id == "a"  # then anything unread, wrapping around
    model.apply_read("a", 1)
    assert model.next_unread() is None


def test_sidebar_order_channels_then_dms() -> None:
    model = ChatModel("alice")
    for conv in ("zeta", "dm:alice:carol", "alpha", "dm:alice:bob"):
        model.ensure(conv)
    assert [c.id for c in model.ordered()] == ["alpha", "zeta", "dm:alice:bob", "dm:alice:carol"]
    model.switch("zeta")
    model.remove("zeta")
    assert model.current is None


def test_receipt_and_push_of_an_own_message_are_one_message() -> None:
    model = ChatModel("alice")
    model.switch("general")
    pending = model.outbox.add("general", "hello", "k1", T0)
    receipt = SendReceipt("general", 7, T0, 0, False, "k1")
    model.apply_receipt(pending, receipt)
    assert len(model.outbox) == 0
    model.apply_message(msg("general", 7, "alice", "hello", key="k1"))
    conv = model.conversations["general"]
    assert conv.seqs == [7] and conv.messages[7].text == "hello"
    # The other order: the push first confirms the pending send by its key.
    model.outbox.add("general", "again", "k2", T0)
    model.apply_message(msg("general", 8, "alice", "again", key="k2"))
    assert model.outbox.pending("general") == []


def test_notes_are_anchored_after_the_newest_message() -> None:
    model = ChatModel("alice")
    model.note("before anything")
    assert [n.text for n in model.home_notes] == ["before anything"]
    model.apply_message(msg("general", 4))
    model.switch("general")
    model.note("joined")
    assert model.conversations["general"].notes[0].after_seq == 4


# ---- the outbox -----------------------------------------------------------------------------


def test_outbox_sends_one_at_a_time_in_order() -> None:
    box = Outbox()
    a = box.add("general", "a", "ka", T0)
    b = box.add("general", "b", "kb", T0)
    other = box.add("random", "x", "kx", T0)
    assert box.next_to_send("general") is a
    box.start(a)
    assert box.next_to_send("general") is None  # a is on the wire: b waits
    assert box.next_to_send("random") is other  # another conversation is independent
    box.done("ka")
    assert box.next_to_send("general") is b
    assert box.busy


def test_a_failed_send_holds_later_ones_until_retry_or_drop() -> None:
    box = Outbox()
    a = box.add("general", "a", "ka", T0)
    b = box.add("general", "b", "kb", T0)
    box.start(a)
    box.failed("ka", "unavailable: no quorum")
    assert a.state is SendState.FAILED and a.error.startswith("unavailable")
    assert box.held(b) and not box.held(a)
    assert box.next_to_send("general") is None
    assert not box.busy  # only a failure is left: nothing will move by itself
    assert box.failed_sends() == [a]
    assert box.retry("random") is None
    assert box.retry("general") is a  # same key: a send that did commit is not doubled
    assert box.next_to_send("general") is a and a.key == "ka"
    box.start(a)
    assert a.attempts == 2
    box.failed("ka", "again")
    assert box.drop("general") is a
    assert box.next_to_send("general") is b
    assert len(box) == 1


# ---- the status line ------------------------------------------------------------------------


def test_link_status_words() -> None:
    assert LinkStatus().describe(0) == "connecting"
    retrying = LinkStatus(LinkState.RECONNECTING, "h:1", retry_at=10.0)
    assert retrying.describe(8.75) == "reconnecting in 1.2 s"
    assert retrying.describe(11.0) == "reconnecting in 0.0 s"
    assert LinkStatus(LinkState.CLOSED, reason="bad token").describe(0) == "closed: bad token"
    assert LinkStatus(LinkState.RESUMED, "h:2", 2).gateway == "node 2 (h:2)"
    assert LinkStatus().gateway == "no gateway"


def test_leader_changes_after_a_failover() -> None:
    before = {0: Leader(1, 1), 1: Leader(2, 1), 2: Leader(1, 1), 3: Leader(3, 1)}
    during = {0: Leader(1, 1), 1: Leader(2, 1), 2: Leader(0, 2), 3: Leader(3, 1)}
    after = {0: Leader(2, 2), 1: Leader(2, 1), 2: Leader(3, 2), 3: Leader(3, 1), 9: Leader(2, 1)}
    assert not settled(during, 1)
    assert settled(after, 1)
    assert not settled({}, 1)
    changes = leader_changes(before, after)
    assert [(c.group, c.before, c.after) for c in changes] == [(0, 1, 2), (2, 1, 3)]
    assert describe_changes(changes, 1) == "node 1 lost: g0→n2 g2→n3"
    assert describe_changes([], 1) == "node 1 lost: no group changed leader"
    two = leader_changes({0: Leader(1, 1), 5: Leader(1, 1)}, {0: Leader(2, 2), 5: Leader(2, 2)})
    assert describe_changes(two, 0) == "gateway lost: g0,g5→n2"
