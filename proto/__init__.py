"""Wire formats: ``raft.proto`` and the code generated from it (``raft_pb2``, ``raft_pb2_grpc``).

The generated files are committed and never hand-edited; ``proto/generate.py`` regenerates them and
``tests/unit/test_proto_current.py`` fails when they are stale. Only edge code (``cluster.codec``,
gRPC servicers and clients) imports this package; the Raft core never does.
"""
