from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AppendRequest(_message.Message):
    __slots__ = ("group", "records")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    group: int
    records: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, group: _Optional[int] = ..., records: _Optional[_Iterable[bytes]] = ...) -> None: ...

class AppendResponse(_message.Message):
    __slots__ = ("positions",)
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    positions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, positions: _Optional[_Iterable[int]] = ...) -> None: ...

class ReadRequest(_message.Message):
    __slots__ = ("group", "from_position", "limit", "stale_ok")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    FROM_POSITION_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    STALE_OK_FIELD_NUMBER: _ClassVar[int]
    group: int
    from_position: int
    limit: int
    stale_ok: bool
    def __init__(self, group: _Optional[int] = ..., from_position: _Optional[int] = ..., limit: _Optional[int] = ..., stale_ok: _Optional[bool] = ...) -> None: ...

class ReadResponse(_message.Message):
    __slots__ = ("records", "count")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedScalarFieldContainer[bytes]
    count: int
    def __init__(self, records: _Optional[_Iterable[bytes]] = ..., count: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FollowerProgress(_message.Message):
    __slots__ = ("node", "match")
    NODE_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    node: int
    match: int
    def __init__(self, node: _Optional[int] = ..., match: _Optional[int] = ...) -> None: ...

class GroupStatus(_message.Message):
    __slots__ = ("group", "role", "term", "leader", "commit", "applied", "last_index", "progress", "snapshot_index")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    LAST_INDEX_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_INDEX_FIELD_NUMBER: _ClassVar[int]
    group: int
    role: str
    term: int
    leader: int
    commit: int
    applied: int
    last_index: int
    progress: _containers.RepeatedCompositeFieldContainer[FollowerProgress]
    snapshot_index: int
    def __init__(self, group: _Optional[int] = ..., role: _Optional[str] = ..., term: _Optional[int] = ..., leader: _Optional[int] = ..., commit: _Optional[int] = ..., applied: _Optional[int] = ..., last_index: _Optional[int] = ..., progress: _Optional[_Iterable[_Union[FollowerProgress, _Mapping]]] = ..., snapshot_index: _Optional[int] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node_id", "cluster_id", "groups", "fsyncs", "applied_entries", "ready_rounds")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    FSYNCS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    READY_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    cluster_id: str
    groups: _containers.RepeatedCompositeFieldContainer[GroupStatus]
    fsyncs: int
    applied_entries: int
    ready_rounds: int
    def __init__(self, node_id: _Optional[int] = ..., cluster_id: _Optional[str] = ..., groups: _Optional[_Iterable[_Union[GroupStatus, _Mapping]]] = ..., fsyncs: _Optional[int] = ..., applied_entries: _Optional[int] = ..., ready_rounds: _Optional[int] = ...) -> None: ...
