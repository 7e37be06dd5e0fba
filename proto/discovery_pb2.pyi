from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeAddress(_message.Message):
    __slots__ = ("id", "public_addr", "internal_addr")
    ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_ADDR_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_ADDR_FIELD_NUMBER: _ClassVar[int]
    id: int
    public_addr: str
    internal_addr: str
    def __init__(self, id: _Optional[int] = ..., public_addr: _Optional[str] = ..., internal_addr: _Optional[str] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("id", "public_addr", "internal_addr", "up", "last_seen_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_ADDR_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_ADDR_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_MS_FIELD_NUMBER: _ClassVar[int]
    id: int
    public_addr: str
    internal_addr: str
    up: bool
    last_seen_ms: int
    def __init__(self, id: _Optional[int] = ..., public_addr: _Optional[str] = ..., internal_addr: _Optional[str] = ..., up: _Optional[bool] = ..., last_seen_ms: _Optional[int] = ...) -> None: ...

class GroupInfo(_message.Message):
    __slots__ = ("group", "replicas", "leader", "term")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    group: int
    replicas: _containers.RepeatedScalarFieldContainer[int]
    leader: int
    term: int
    def __init__(self, group: _Optional[int] = ..., replicas: _Optional[_Iterable[int]] = ..., leader: _Optional[int] = ..., term: _Optional[int] = ...) -> None: ...

class DiscoveryReplica(_message.Message):
    __slots__ = ("id", "public_addr")
    ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_ADDR_FIELD_NUMBER: _ClassVar[int]
    id: int
    public_addr: str
    def __init__(self, id: _Optional[int] = ..., public_addr: _Optional[str] = ...) -> None: ...

class ClusterMap(_message.Message):
    __slots__ = ("cluster_id", "epoch", "group_count", "rf", "nodes", "groups", "discovery", "lease_ms", "now_ms")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    GROUP_COUNT_FIELD_NUMBER: _ClassVar[int]
    RF_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    DISCOVERY_FIELD_NUMBER: _ClassVar[int]
    LEASE_MS_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    epoch: int
    group_count: int
    rf: int
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    groups: _containers.RepeatedCompositeFieldContainer[GroupInfo]
    discovery: _containers.RepeatedCompositeFieldContainer[DiscoveryReplica]
    lease_ms: int
    now_ms: int
    def __init__(self, cluster_id: _Optional[str] = ..., epoch: _Optional[int] = ..., group_count: _Optional[int] = ..., rf: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ..., groups: _Optional[_Iterable[_Union[GroupInfo, _Mapping]]] = ..., discovery: _Optional[_Iterable[_Union[DiscoveryReplica, _Mapping]]] = ..., lease_ms: _Optional[int] = ..., now_ms: _Optional[int] = ...) -> None: ...

class BootstrapRequest(_message.Message):
    __slots__ = ("cluster_id", "nodes", "groups", "rf")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    RF_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    nodes: _containers.RepeatedCompositeFieldContainer[NodeAddress]
    groups: int
    rf: int
    def __init__(self, cluster_id: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[NodeAddress, _Mapping]]] = ..., groups: _Optional[int] = ..., rf: _Optional[int] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("node_id", "public_addr", "internal_addr")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_ADDR_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_ADDR_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    public_addr: str
    internal_addr: str
    def __init__(self, node_id: _Optional[int] = ..., public_addr: _Optional[str] = ..., internal_addr: _Optional[str] = ...) -> None: ...

class LeaderReport(_message.Message):
    __slots__ = ("group", "leader", "term")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    group: int
    leader: int
    term: int
    def __init__(self, group: _Optional[int] = ..., leader: _Optional[int] = ..., term: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_id", "leaders")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LEADERS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    leaders: _containers.RepeatedCompositeFieldContainer[LeaderReport]
    def __init__(self, node_id: _Optional[int] = ..., leaders: _Optional[_Iterable[_Union[LeaderReport, _Mapping]]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("epoch",)
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    def __init__(self, epoch: _Optional[int] = ...) -> None: ...

class GetMapRequest(_message.Message):
    __slots__ = ("min_epoch",)
    MIN_EPOCH_FIELD_NUMBER: _ClassVar[int]
    min_epoch: int
    def __init__(self, min_epoch: _Optional[int] = ...) -> None: ...
