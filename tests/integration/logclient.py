"""A small synchronous client for the shard nodes' ShardLog API, used by real-process tests.

It finds a group's leader from discovery's map and follows the ``x-leader`` hints of
FAILED_PRECONDITION answers, the way the real client library will.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar, cast

import grpc

from cluster.launcher import ClusterSpec
from proto import discovery_pb2 as dpb
from proto import discovery_pb2_grpc as dpb_grpc
from proto import node_pb2 as npb
from proto import node_pb2_grpc as npb_grpc

T = TypeVar("T")
CHANNEL_OPTIONS = (
    # Reconnect to a restarted node within ~a second, not gRPC's default minutes of backoff.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
)


@dataclass(frozen=True, slots=True)
class WriteFailed(Exception):
    code: grpc.StatusCode
    details: str


class LogClient:
    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self._channels: dict[str, grpc.Channel] = {}
        self._leader_hint: dict[int, str] = {}

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def _channel(self, target: str) -> grpc.Channel:
        if target not in self._channels:
            self._channels[target] = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        return self._channels[target]

    def log(self, target: str) -> npb_grpc.ShardLogStub:
        return npb_grpc.ShardLogStub(self._channel(target))  # type: ignore[no-untyped-call]

    def admin(self, target: str) -> npb_grpc.NodeAdminStub:
        return npb_grpc.NodeAdminStub(self._channel(target))  # type: ignore[no-untyped-call]

    def cluster_map(self) -> dpb.ClusterMap:
        last: grpc.RpcError | None = None
        for target in self.spec.discovery_targets:
            stub = dpb_grpc.DiscoveryStub(self._channel(target))  # type: ignore[no-untyped-call]
            try:
                reply: dpb.ClusterMap = stub.GetMap(dpb.GetMapRequest(), timeout=1.0)
                return reply
            except grpc.RpcError as exc:
                last = exc
        raise AssertionError(f"no discovery replica answered: {last}")

    def _candidates(self, group: int) -> list[str]:
        first = [self._leader_hint[group]] if group in self._leader_hint else []
        return first + [n.public for n in self.spec.nodes if n.public not in first]

    def append(self, group: int, records: Iterable[bytes], timeout: float = 5.0) -> list[int]:
        """Append to ``group`` via its leader; WriteFailed with the last error if none accepts."""
        request = npb.AppendRequest(group=group, records=list(records))
        deadline = time.monotonic() + timeout
        last = WriteFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "no attempt")
        while time.monotonic() < deadline:
            for target in self._candidates(group):
                budget = deadline - time.monotonic()
                if budget <= 0:
                    break
                try:
                    reply = self.log(target).Append(request, timeout=min(budget, 2.0))
                    self._leader_hint[group] = target
                    return list(reply.positions)
                except grpc.RpcError as exc:
                    last = WriteFailed(exc.code(), exc.details() or "")
                    hint = _metadata(exc).get("x-leader", "")
                    if exc.code() is grpc.StatusCode.FAILED_PRECONDITION and hint:
                        self._leader_hint[group] = hint
                        break  # retry at once, starting with the hinted leader
        raise last

    def read_all(self, target: str, group: int, *, stale_ok: bool = True) -> list[bytes]:
        out: list[bytes] = []
        while True:
            reply = self.log(target).Read(
                npb.ReadRequest(group=group, from_position=len(out) + 1, limit=1000,
                                stale_ok=stale_ok),
                timeout=5.0,
            )  # fmt: skip
            out.extend(reply.records)
            if not reply.records:
                return out

    def status(self, target: str) -> npb.NodeStatus:
        reply: npb.NodeStatus = self.admin(target).Status(npb.StatusRequest(), timeout=2.0)
        return reply


def _metadata(exc: grpc.RpcError) -> dict[str, str]:
    trailing = (
        cast(
            "Iterable[tuple[str, str | bytes]]",
            exc.trailing_metadata() if isinstance(exc, grpc.Call) else None,
        )
        or ()
    )
    return {k: v if isinstance(v, str) else v.decode() for k, v in trailing}


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns a truthy value; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)  # poll interval, bounded by the deadline
