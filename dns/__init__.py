"""Discovery service: the authoritative, epoch-numbered cluster map (``python -m dns``).

Public API:

- ``dns.client``: ``DiscoveryClient(endpoints)`` with ``get_map``, ``bootstrap``, ``register``,
  ``heartbeat``, ``cached_map``; errors ``DiscoveryClientError`` / ``DiscoveryUnavailable``.
- ``dns.clustermap``: the map as frozen values (``ClusterMap``, ``NodeStatus``, ``NodeAddress``,
  ``GroupPlacement``, ``DiscoveryEndpoint``).
- ``dns.codec``: the map and requests to and from ``proto.discovery_pb2``.
- ``dns.state``: the replicated state machine (``DiscoveryState``) and its commands
  (``LeaderReport`` is what a heartbeat carries).
- ``dns.service`` / ``dns.server``: one replica's request handling and process wiring.

The package name shadows the third-party ``dns`` package (dnspython), which the project does not
use; the root ``conftest.py`` keeps the repo first on ``sys.path``.
"""
