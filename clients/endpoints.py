"""Where the chat nodes are, and in which order a client tries them.

Any node is a gateway for any call (it forwards writes to the owning group's leader), so a client
needs only a list of public addresses and one rule for moving on when a node fails. The list comes
from one of three places:

- :func:`static` — addresses the caller knows (flags, tests);
- :func:`from_cluster_file` — ``DATA_DIR/cluster.json`` written by ``python -m cluster up``;
- :func:`from_discovery` — the discovery service's cluster map, nodes whose lease is valid first
  (a node that just missed a heartbeat stays in the rotation, last, rather than out of it).

:class:`Endpoints` is the rotation, shared by every call and the session of one client: when a
call fails on the current node it moves on *only if that node is still current*, so 64 calls
failing on the same dead node move the rotation once, not 64 times. :class:`Backoff` says how
long to wait before the next attempt: the first failover is immediate (another node is probably
fine), later ones back off exponentially up to a cap, with jitter from an injected random so that
many clients do not retry in lockstep and tests replay exactly.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path

from cluster.launcher import CLUSTER_FILE, ClusterSpec
from dns.client import DiscoveryClient

DEFAULT_DISCOVERY_TIMEOUT = 10.0


def check_address(address: str) -> str:
    """``host:port`` with a non-empty host and a port in 1..65535 (IPv6 as ``[::1]:port``)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or any(c.isspace() for c in address):
        raise ValueError(f"{address!r} is not host:port")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{address!r} has no port in 1..65535")
    return address


class Endpoints:
    """An ordered rotation of node addresses; ``current`` is where calls go now."""

    def __init__(self, addresses: Iterable[str], *, start: int = 0) -> None:
        self._addresses: list[str] = []
        for address in addresses:
            self._add(check_address(address))
        if not self._addresses:
            raise ValueError("at least one node address is required")
        self._current = start % len(self._addresses)

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(self._addresses)

    @property
    def current(self) -> str:
        return self._addresses[self._current]

    def failed(self, address: str) -> str:
        """``address`` failed a call: move to the next node if it is still the current one (a
        concurrent call may have moved on already). Returns the new current address."""
        if self._addresses[self._current] == address:
            self._current = (self._current + 1) % len(self._addresses)
        return self.current

    def prefer(self, address: str) -> None:
        """Make ``address`` (a leader hint) current, adding it to the rotation if new."""
        self._add(check_address(address))
        self._current = self._addresses.index(address)

    def _add(self, address: str) -> None:
        if address not in self._addresses:
            self._addresses.append(address)

    def __len__(self) -> int:
        return len(self._addresses)

    def __repr__(self) -> str:
        return f"Endpoints({self._addresses!r}, current={self.current!r})"


def static(addresses: Sequence[str], *, rng: random.Random | None = None) -> Endpoints:
    """A fixed list; with ``rng`` the rotation starts at a random node (spreads many clients
    over the cluster), else at the first."""
    return Endpoints(addresses, start=_start(len(addresses), rng))


def from_cluster_file(path: str | Path, *, rng: random.Random | None = None) -> Endpoints:
    """The nodes of a local cluster: ``path`` is its ``cluster.json`` or the data directory
    holding it."""
    file = Path(path)
    if file.is_dir():
        file = file / CLUSTER_FILE
    spec = ClusterSpec.from_json(file.read_text())
    return static([node.public for node in spec.nodes], rng=rng)


async def from_discovery(
    targets: Sequence[str],
    *,
    rng: random.Random | None = None,
    timeout: float = DEFAULT_DISCOVERY_TIMEOUT,
) -> Endpoints:
    """The nodes of the cluster map served by the discovery replicas at ``targets``: nodes that
    are up first, then the others (a lapsed lease is not proof of death)."""
    async with DiscoveryClient(targets, timeout=timeout) as discovery:
        cmap = await discovery.get_map()
    up = [n.public_addr for n in cmap.nodes if n.up and n.public_addr]
    down = [n.public_addr for n in cmap.nodes if not n.up and n.public_addr]
    if not up and not down:
        raise ValueError(f"the cluster map from {list(targets)} has no nodes")
    first = _start(len(up), rng)
    return Endpoints([*up[first:], *up[:first], *down])


def _start(n: int, rng: random.Random | None) -> int:
    return rng.randrange(n) if rng is not None and n > 0 else 0


class Backoff:
    """Delays between attempts: 0 before the first retry, then ``base * 2**(k-1)`` capped at
    ``cap``, each scaled by a random factor in [0.5, 1.0)."""

    def __init__(
        self, *, base: float = 0.05, cap: float = 2.0, rng: random.Random | None = None
    ) -> None:
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        self._base = base
        self._cap = cap
        self._rng = rng if rng is not None else random.Random()

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (1, 2, ...)."""
        if failures <= 1:
            return 0.0
        raw = min(self._cap, self._base * 2.0 ** min(failures - 2, 30))
        return raw * (0.5 + self._rng.random() / 2)
