"""Our Raft library.

The pure core (no I/O, no clock, no unseeded randomness; a test enforces it):
``types`` (NodeId, GroupId), ``messages`` (entries, hard state, snapshots, the ``Message`` union),
``config`` (Config), ``errors`` (RaftError and its named subclasses), ``ready`` (Ready, the runtime
loop contract) and ``raft`` (Replica).

At the edge: ``codec`` converts messages to and from ``proto.raft_pb2``; ``wal`` and ``storage``
keep the durable log every group on a node shares.

Import from the modules themselves; this package re-exports nothing so importing one part never
drags in another (the core must stay importable without protobuf).
"""
