"""A byte encoding of chat values between nodes: apply results, queries, their answers, events.

Why not protobuf: these values are the state machine's own frozen dataclasses (``Posted``,
``HistoryPage``, ``Message`` …); mirroring each in a .proto message would double every type and
add a conversion layer per type. Nodes of one cluster run the same code, so a self-describing
encoding of those dataclasses is enough: tagged JSON, decoded only into the types registered
here (never an arbitrary class), so bytes from a peer cannot build anything else.

Encoding of a value:

- ``None``, ``bool``, ``int``, ``str``: themselves; a list: a JSON list;
- a tuple: ``{"t": [...]}``; a dict with string keys: ``{"d": {...}}``;
- a registered dataclass or NamedTuple: ``{"c": "<name>", "f": [field values in order]}``;
- a registered enum member: ``{"e": "<name>", "v": <value>}``.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


class WireError(ValueError):
    """Bytes that are not a value of this encoding (or name a type not registered)."""


_TYPES: dict[str, type[Any]] = {}
_ENUMS: dict[str, type[enum.Enum]] = {}


def register(*types: type[Any]) -> None:
    """Allow ``types`` (frozen dataclasses, NamedTuples, enums) on the wire, by class name."""
    for cls in types:
        table: dict[str, Any] = _ENUMS if issubclass(cls, enum.Enum) else _TYPES
        held = table.get(cls.__name__)
        if held is not None and held is not cls:
            raise ValueError(f"two wire types named {cls.__name__}")
        table[cls.__name__] = cls


def _is_namedtuple(value: object) -> bool:
    return isinstance(value, tuple) and hasattr(value, "_fields")


def _enc(value: object) -> object:
    if value is None or isinstance(value, bool | int | str):
        return value
    name = type(value).__name__
    if isinstance(value, enum.Enum):
        _check_registered(_ENUMS, name, value)
        return {"e": name, "v": value.value}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        _check_registered(_TYPES, name, value)
        fields = [_enc(getattr(value, f.name)) for f in dataclasses.fields(value)]
        return {"c": name, "f": fields}
    if _is_namedtuple(value):
        _check_registered(_TYPES, name, value)
        return {"c": name, "f": [_enc(v) for v in value]}  # type: ignore[attr-defined]
    if isinstance(value, list):
        return [_enc(v) for v in value]
    if isinstance(value, tuple):
        return {"t": [_enc(v) for v in value]}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("only dicts with str keys go on the wire")
        return {"d": {k: _enc(v) for k, v in value.items()}}
    raise TypeError(f"{type(value).__name__} does not go on the wire")


def _check_registered(table: dict[str, Any], name: str, value: object) -> None:
    if table.get(name) is not type(value):
        raise TypeError(f"{type(value).__qualname__} is not a registered wire type")


def _dec(raw: object) -> object:
    if raw is None or isinstance(raw, bool | int | str):
        return raw
    if isinstance(raw, list):
        return [_dec(v) for v in raw]
    if not isinstance(raw, dict) or len(raw) not in (1, 2):
        raise WireError(f"not a wire value: {raw!r:.80}")
    if "t" in raw and isinstance(raw["t"], list):
        return tuple(_dec(v) for v in raw["t"])
    if "d" in raw and isinstance(raw["d"], dict):
        return {str(k): _dec(v) for k, v in raw["d"].items()}
    if "e" in raw:
        enum_cls = _ENUMS.get(str(raw["e"]))
        if enum_cls is None:
            raise WireError(f"unknown wire enum {raw['e']!r}")
        try:
            return enum_cls(raw.get("v"))
        except ValueError as exc:
            raise WireError(str(exc)) from exc
    if "c" in raw and isinstance(raw.get("f"), list):
        cls = _TYPES.get(str(raw["c"]))
        if cls is None:
            raise WireError(f"unknown wire type {raw['c']!r}")
        try:
            return cls(*(_dec(v) for v in raw["f"]))
        except TypeError as exc:
            raise WireError(f"bad fields for {raw['c']}: {exc}") from exc
    raise WireError(f"not a wire value: {raw!r:.80}")


def encode(value: object) -> bytes:
    """``value`` as bytes; TypeError for anything this module does not carry."""
    return json.dumps(_enc(value), ensure_ascii=False, separators=(",", ":")).encode()


def decode(data: bytes) -> object:
    """The value ``data`` encodes; WireError if it is not one."""
    try:
        return _dec(json.loads(data))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"not JSON: {exc}") from exc
    except RecursionError as exc:
        raise WireError("nested too deeply") from exc


def decode_as(data: bytes, cls: type[T]) -> T:
    """Decode and check the top-level type."""
    value = decode(data)
    if not isinstance(value, cls):
        raise WireError(f"expected {cls.__name__}, got {type(value).__name__}")
    return value


def _register_chat_types() -> None:
    from shards.chat import commands, schema

    results: Iterable[type[Any]] = (
        commands.Rejected,
        commands.UserRegistered,
        commands.ChannelCreated,
        commands.Joined,
        commands.Left,
        commands.Posted,
        commands.ReadMarked,
        commands.RouteSet,
        commands.RouteDropped,
        commands.DmAdded,
        commands.FollowUpAcked,
        commands.SessionOpened,
        commands.SessionClosed,
        commands.Code,
        commands.Hlc,
    )
    records: Iterable[type[Any]] = (
        schema.UserRecord,
        schema.ChannelInfo,
        schema.Message,
        schema.ConversationRef,
        schema.Route,
        schema.FollowUp,
        schema.HistoryPage,
        schema.SyncPage,
    )
    register(*results, *records)


_register_chat_types()
