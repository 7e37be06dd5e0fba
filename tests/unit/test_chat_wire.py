"""The byte encoding of chat values between nodes (``shards.chat.wire``): every registered type
goes out and comes back equal and of the same class, and bytes that are not a wire value, or
that name anything not registered, are refused with ``WireError`` rather than building it."""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

# Imported for their registrations: a node imports all of them, so all are on its wire.
from shards.chat import feed, internal, queries, wire
from shards.chat.api import Gap
from shards.chat.commands import Code, Hlc, Posted, Rejected
from shards.chat.schema import HistoryPage, Message, SyncPage
from shards.chat.wire import WireError

REGISTERED: list[str] = sorted(wire._TYPES)
"""Every registered dataclass/NamedTuple name, read once at collection time."""


def _shape(value: object) -> object:
    """``value`` with the class of every part made explicit, so a round trip that turned a
    NamedTuple into a plain tuple (which compares equal to it) or a tuple into a list fails."""
    if isinstance(value, enum.Enum):
        return (type(value), value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)
        return (type(value), tuple(_shape(getattr(value, f.name)) for f in fields))
    if isinstance(value, tuple | list):
        return (type(value), tuple(_shape(v) for v in value))
    if isinstance(value, dict):
        return (dict, tuple((k, _shape(v)) for k, v in value.items()))
    return (type(value), value)


def _round_trip(value: object) -> None:
    data = wire.encode(value)
    back = wire.decode(data)
    assert back == value
    assert _shape(back) == _shape(value)
    assert wire.encode(back) == data  # deterministic: equal values, equal bytes


# ---- what goes through --------------------------------------------------------------------------


def test_the_registry_holds_the_chat_values_nodes_exchange() -> None:
    must = {
        "FeedBatch",  # Watch streams
        "MessageCommitted",
        "MembershipChanged",
        "RouteChanged",
        "Posted",  # Propose answers
        "Rejected",
        "HistoryPage",  # Query answers
        "SyncPage",
        "CatchUpPage",
        "Gap",
    }
    assert must <= set(REGISTERED)
    assert dict(wire._ENUMS) == {"Code": Code}
    # Every query the internal service accepts decodes into its own class.
    for cls in internal.QUERY_TYPES:
        assert wire._TYPES[cls.__name__] is cls


@pytest.mark.parametrize("name", REGISTERED)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_registered_type_round_trips(name: str, data: st.DataObject) -> None:
    value = data.draw(st.from_type(wire._TYPES[name]))
    _round_trip(value)


@pytest.mark.parametrize("member", list(Code))
def test_every_registered_enum_member_round_trips(member: Code) -> None:
    _round_trip(member)
    assert wire.decode(wire.encode(member)) is member


plain: st.SearchStrategy[object] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(plain)
def test_plain_values_round_trip(value: object) -> None:
    _round_trip(value)


def test_values_nest_inside_registered_types() -> None:
    message = Message("general", 3, "alice", 'with {"c": "Gap"} inside', Hlc(5, 1), "k")
    values: list[Any] = [
        HistoryPage([message], True, False),
        SyncPage([message], {"general": 3, "d": 0, "t": 1}, limited=True),
        feed.FeedBatch(2, 9, (feed.MessageCommitted(message),)),
        Posted("dm:alice:bob", 1, Hlc(1, 0), False, (4, 5)),
        Rejected(Code.NOT_FOUND, "conversation", "no channel 'x'"),
        queries.CatchUpPage(SyncPage([], {}, False), (Gap("general", 1, 10),)),
        [None, (1, ("x", [])), {"k": (True, False)}],
        {"c": "Gap", "f": [1, 2, 3]},  # a dict that looks like a tag stays a dict
    ]
    for value in values:
        _round_trip(value)


def test_decode_as_checks_the_top_level_type() -> None:
    data = wire.encode(Gap("general", 1, 2))
    assert wire.decode_as(data, Gap) == Gap("general", 1, 2)
    with pytest.raises(WireError, match="expected FeedBatch, got Gap"):
        wire.decode_as(data, feed.FeedBatch)


# ---- what is refused on decoding ----------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param({"c": "Nope", "f": []}, id="unknown-type"),
        pytest.param({"c": "subprocess.Popen", "f": [["ls"]]}, id="dotted-name"),
        pytest.param({"c": "WireError", "f": ["x"]}, id="unregistered-class-of-wire"),
        pytest.param({"e": "Nope", "v": 1}, id="unknown-enum"),
        pytest.param({"e": "Code", "v": "NOPE"}, id="bad-enum-value"),
        pytest.param({"e": "Code"}, id="enum-without-value"),
        pytest.param({"c": "Gap", "f": []}, id="too-few-fields"),
        pytest.param({"c": "Gap", "f": ["general", 1, 2, 3]}, id="too-many-fields"),
        pytest.param({"c": "Hlc", "f": [1]}, id="one-field-missing"),
        pytest.param({"c": "Gap"}, id="type-without-fields"),
        pytest.param({"c": "Gap", "f": "general,1,2"}, id="fields-not-a-list"),
        pytest.param({"t": 1}, id="tuple-not-a-list"),
        pytest.param({"d": [1]}, id="dict-not-an-object"),
        pytest.param({"x": 1}, id="unknown-tag"),
        pytest.param({}, id="empty-object"),
        pytest.param({"c": "Gap", "f": ["g", 1, 2], "x": 0}, id="three-keys"),
        pytest.param(1.5, id="float"),
        pytest.param([1, {"c": "Nope", "f": []}], id="nested-unknown-type"),
        pytest.param({"d": {"k": {"e": "Code", "v": 7}}}, id="nested-bad-enum"),
    ],
)
def test_malformed_wire_values_raise_wire_error(raw: object) -> None:
    with pytest.raises(WireError):
        wire.decode(json.dumps(raw).encode())


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"[1,", b"\xff\xfe\x00", b"\x80abc", b"nul", b'{"c": "Gap", "f": [}'],
)
def test_non_json_raises_wire_error(data: bytes) -> None:
    with pytest.raises(WireError, match="not JSON"):
        wire.decode(data)


def test_deeply_nested_input_raises_wire_error() -> None:
    with pytest.raises(WireError):
        wire.decode(b"[" * 100_000 + b"]" * 100_000)


# ---- what is refused on encoding ----------------------------------------------------------------


class _Plain:
    pass


@dataclasses.dataclass(frozen=True)
class _Stranger:
    x: int


class _StrangerTuple(NamedTuple):
    x: int


class _Colour(enum.Enum):
    RED = 1


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(_Plain(), id="plain-object"),
        pytest.param(1.5, id="float"),
        pytest.param(b"bytes", id="bytes"),
        pytest.param({1, 2}, id="set"),
        pytest.param(Hlc, id="a-class-itself"),
        pytest.param([1, _Plain()], id="nested"),
        pytest.param(
            _Stranger(1),
            id="unregistered-dataclass",
        ),
        pytest.param(
            _StrangerTuple(1),
            id="unregistered-namedtuple",
        ),
        pytest.param(
            _Colour.RED,
            id="unregistered-enum",
        ),
    ],
)
def test_an_unregistered_value_refuses_to_encode(value: object) -> None:
    with pytest.raises(TypeError):
        wire.encode(value)


@pytest.mark.parametrize(
    "value",
    [
        {1: "a"},
        {("a", 1): "b"},
        {"ok": {None: 1}},
        SyncPage([], {1: 2}, False),  # type: ignore[dict-item]
        [{"a": 1}, {2.5: 1}],
    ],
)
def test_a_dict_with_non_str_keys_is_refused(value: object) -> None:
    with pytest.raises(TypeError, match="str keys"):
        wire.encode(value)


def test_two_types_of_one_name_cannot_both_be_registered() -> None:
    other = dataclasses.make_dataclass("Gap", [("x", int)], frozen=True)  # api.Gap's name
    with pytest.raises(ValueError, match="two wire types named Gap"):
        wire.register(other)
    assert wire._TYPES["Gap"] is Gap
    wire.register(Gap)  # the same class again is fine
    assert wire.decode(wire.encode(Gap("c", 1, 2))) == Gap("c", 1, 2)
