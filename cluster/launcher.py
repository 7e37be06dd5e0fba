"""``python -m cluster up``: a whole local cluster (discovery plus shard nodes) as child processes.

The launcher owns nothing but processes and a file: ``DATA_DIR/cluster.json`` records the
cluster's identity, shape and every endpoint, so a second ``up`` on the same directory restarts
the same cluster on the same ports with all its data, and ``status``, tests and clients find it.
It talks to discovery through the generated stubs only (``cluster`` must not import ``dns``).

Ports: discovery replica i listens on ``base + 2(i-1)`` (public) and ``+1`` (Raft); node n on
``base + 20 + 2(n-1)`` and ``+1``. Everything binds to 127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc

from proto import discovery_pb2 as dpb
from proto import discovery_pb2_grpc as dpb_grpc
from proto import node_pb2 as npb
from proto import node_pb2_grpc as npb_grpc

T = TypeVar("T")
CLUSTER_FILE = "cluster.json"
PIDS_FILE = "pids.json"
FILE_FORMAT = 1


class LaunchError(Exception):
    """The cluster cannot be started as asked; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: int
    public: str
    internal: str


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """Everything ``cluster.json`` holds."""

    cluster_id: str
    groups: int
    rf: int
    discovery: tuple[Endpoint, ...]
    nodes: tuple[Endpoint, ...]
    format: int = FILE_FORMAT

    @property
    def discovery_targets(self) -> list[str]:
        return [d.public for d in self.discovery]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ClusterSpec:
        raw = json.loads(text)
        if raw.get("format") != FILE_FORMAT:
            raise LaunchError(f"{CLUSTER_FILE} has format {raw.get('format')}, expected 1")
        return cls(
            cluster_id=raw["cluster_id"],
            groups=raw["groups"],
            rf=raw["rf"],
            discovery=tuple(Endpoint(**d) for d in raw["discovery"]),
            nodes=tuple(Endpoint(**n) for n in raw["nodes"]),
        )


def plan(
    *, nodes: int, groups: int, rf: int, discovery_replicas: int, base_port: int, host: str
) -> ClusterSpec:
    if nodes < 1 or groups < 1:
        raise LaunchError("--nodes and --groups must be at least 1")
    if not 1 <= rf <= nodes:
        raise LaunchError(f"--rf must be between 1 and --nodes ({nodes}), got {rf}")
    if discovery_replicas not in (1, 3):
        raise LaunchError("--discovery-replicas must be 1 or 3")

    def ep(i: int, first: int) -> Endpoint:
        port = first + 2 * (i - 1)
        return Endpoint(i, f"{host}:{port}", f"{host}:{port + 1}")

    return ClusterSpec(
        cluster_id=uuid.uuid4().hex[:12],
        groups=groups,
        rf=rf,
        discovery=tuple(ep(i, base_port) for i in range(1, discovery_replicas + 1)),
        nodes=tuple(ep(n, base_port + 20) for n in range(1, nodes + 1)),
    )


def free_base_port(span: int = 64) -> int:
    """A base port whose next ``span`` ports are free now (for tests and ``--base-port 0``)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + span < 65000 and all(_port_free("127.0.0.1", base + i) for i in range(span)):
            return base
    raise LaunchError("could not find a free range of ports")


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        # As the gRPC servers do: connections of a just-stopped run in TIME_WAIT do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def check_ports_free(spec: ClusterSpec) -> None:
    for ep in (*spec.discovery, *spec.nodes):
        for addr in (ep.public, ep.internal):
            host, port = addr.rsplit(":", 1)
            if not _port_free(host, int(port)):
                raise LaunchError(
                    f"port {addr} is already in use (another cluster running on this data dir, "
                    "or pick another --base-port)"
                )


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        finally:
            log.close()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive and self.process is not None:
            self.process.send_signal(sig)

    def stop(self, timeout: float = 5.0) -> None:
        if self.process is None:
            return
        if self.alive:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        else:
            self.process.wait()


@dataclass
class LocalCluster:
    """The processes of one local cluster; used by ``cluster up`` and by the real-process tests."""

    spec: ClusterSpec
    data_dir: Path
    fsync: bool = True
    tick_ms: int = 50
    node_args: tuple[str, ...] = ()
    children: dict[str, Child] = field(default_factory=dict)

    # ---- construction ----------------------------------------------------------------------

    @classmethod
    def create_or_load(
        cls,
        data_dir: Path,
        *,
        nodes: int,
        groups: int,
        rf: int,
        discovery_replicas: int,
        base_port: int,
        host: str = "127.0.0.1",
        fsync: bool = True,
    ) -> LocalCluster:
        path = data_dir / CLUSTER_FILE
        if path.exists():
            spec = ClusterSpec.from_json(path.read_text())
            asked = (nodes, groups, rf, discovery_replicas)
            have = (len(spec.nodes), spec.groups, spec.rf, len(spec.discovery))
            if asked != have:
                raise LaunchError(
                    f"{path} holds a cluster of {have[0]} nodes, {have[1]} groups, rf {have[2]}, "
                    f"{have[3]} discovery replicas; start it with those flags or use another "
                    "--data-dir"
                )
        else:
            if base_port == 0:
                base_port = free_base_port()
            spec = plan(
                nodes=nodes,
                groups=groups,
                rf=rf,
                discovery_replicas=discovery_replicas,
                base_port=base_port,
                host=host,
            )
            data_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(spec.to_json())
            os.replace(tmp, path)
        return cls(spec, data_dir, fsync=fsync)

    def _python(self, module: str, *args: str) -> list[str]:
        return [sys.executable, "-m", module, *args]

    def discovery_child(self, ep: Endpoint) -> Child:
        peers = ",".join(f"{d.id}={d.internal}" for d in self.spec.discovery)
        argv = self._python(
            "dns",
            "--id", str(ep.id),
            "--listen", ep.public,
            "--internal-listen", ep.internal,
            "--peers", peers,
            "--data-dir", str(self.data_dir / f"discovery-{ep.id}"),
            "--tick-ms", str(self.tick_ms),
        )  # fmt: skip
        return Child(f"discovery-{ep.id}", argv, self.data_dir / "logs" / f"discovery-{ep.id}.log")

    def node_child(self, ep: Endpoint) -> Child:
        argv = self._python(
            "shards",
            "--node-id", str(ep.id),
            "--listen", ep.public,
            "--internal-listen", ep.internal,
            "--discovery", ",".join(self.spec.discovery_targets),
            "--data-dir", str(self.data_dir / f"node-{ep.id}"),
            "--tick-ms", str(self.tick_ms),
            *([] if self.fsync else ["--fsync=off"]),
            *self.node_args,
        )  # fmt: skip
        return Child(f"node-{ep.id}", argv, self.data_dir / "logs" / f"node-{ep.id}.log")

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Start discovery, bootstrap it (idempotent), start every node."""
        check_ports_free(self.spec)
        for ep in self.spec.discovery:
            self._spawn(self.discovery_child(ep))
        self.bootstrap(timeout)
        for ep in self.spec.nodes:
            self._spawn(self.node_child(ep))

    def _spawn(self, child: Child) -> None:
        self.children[child.name] = child
        child.start()
        self._write_pids()

    def _write_pids(self) -> None:
        """``DATA_DIR/pids.json``: what ``cluster down`` stops, even if this launcher died."""
        pids = {
            "launcher": os.getpid(),
            "children": {
                name: c.process.pid for name, c in self.children.items() if c.process is not None
            },
        }
        tmp = self.data_dir / (PIDS_FILE + ".tmp")
        tmp.write_text(json.dumps(pids, indent=2) + "\n")
        os.replace(tmp, self.data_dir / PIDS_FILE)

    def bootstrap(self, timeout: float) -> dpb.ClusterMap:
        request = dpb.BootstrapRequest(
            cluster_id=self.spec.cluster_id,
            nodes=[
                dpb.NodeAddress(id=n.id, public_addr=n.public, internal_addr=n.internal)
                for n in self.spec.nodes
            ],
            groups=self.spec.groups,
            rf=self.spec.rf,
        )
        reply: dpb.ClusterMap = self._discovery_call(
            lambda stub: stub.Bootstrap(request, timeout=2.0), timeout
        )
        return reply

    def get_map(self, timeout: float = 5.0) -> dpb.ClusterMap:
        reply: dpb.ClusterMap = self._discovery_call(
            lambda stub: stub.GetMap(dpb.GetMapRequest(), timeout=1.0), timeout
        )
        return reply

    def _discovery_call(self, call: Callable[[dpb_grpc.DiscoveryStub], T], timeout: float) -> T:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            for target in self.spec.discovery_targets:
                self._check_children()
                with grpc.insecure_channel(target) as channel:
                    try:
                        stub = dpb_grpc.DiscoveryStub(channel)  # type: ignore[no-untyped-call]
                        return call(stub)
                    except grpc.RpcError as exc:
                        last = exc
            time.sleep(0.1)  # poll interval while discovery starts or elects
        raise LaunchError(f"discovery did not answer within {timeout:.0f} s: {last}")

    def _check_children(self) -> None:
        for child in self.children.values():
            exited = child.process is not None and child.process.poll() not in (None, 0)
            if exited and child.name.startswith("discovery") and child.process is not None:
                raise LaunchError(
                    f"{child.name} exited with code {child.process.returncode}; "
                    f"see {child.log_path}:\n{_tail(child.log_path)}"
                )

    def wait_for_leaders(self, timeout: float = 30.0) -> dpb.ClusterMap:
        """Poll discovery until every group reports a leader; return that map."""
        deadline = time.monotonic() + timeout
        cmap = self.get_map(timeout)
        while time.monotonic() < deadline:
            cmap = self.get_map(max(0.5, deadline - time.monotonic()))
            if cmap.groups and all(g.leader for g in cmap.groups) and self._leaders_confirmed():
                return cmap
            for ep in self.spec.nodes:
                child = self.children.get(f"node-{ep.id}")
                if child is not None and child.process is not None and not child.alive:
                    raise LaunchError(
                        f"node {ep.id} exited with code {child.process.returncode}; see "
                        f"{child.log_path}:\n{_tail(child.log_path)}"
                    )
            time.sleep(0.05)  # poll interval
        missing = [g.group for g in cmap.groups if not g.leader]
        raise LaunchError(f"groups {missing} have no leader after {timeout:.0f} s")

    def _leaders_confirmed(self) -> bool:
        """Whether every group has a replica that says it leads, asked on the nodes' admin
        API. Discovery's map alone is not enough after a restart: it still holds the leaders
        reported before, while the restarted nodes are not even listening yet."""
        leading: set[int] = set()
        for ep in self.spec.nodes:
            with grpc.insecure_channel(ep.public) as channel:
                admin = npb_grpc.NodeAdminStub(channel)  # type: ignore[no-untyped-call]
                try:
                    status = admin.Status(npb.StatusRequest(), timeout=1.0)
                except grpc.RpcError:
                    continue  # not up yet (or down): its groups are led elsewhere or not yet
            leading.update(g.group for g in status.groups if g.role == "leader")
        return leading >= set(range(self.spec.groups))

    def stop(self) -> None:
        for child in self.children.values():
            child.signal(signal.SIGTERM)
        for child in self.children.values():
            child.stop()
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / PIDS_FILE).unlink()

    def node(self, node_id: int) -> Child:
        return self.children[f"node-{node_id}"]

    def restart(self, name: str) -> None:
        old = self.children[name]
        old.stop()
        fresh = Child(old.name, old.argv, old.log_path)
        self.children[name] = fresh
        fresh.start()
        self._write_pids()


def _tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def run_up(
    *,
    data_dir: Path,
    nodes: int,
    groups: int,
    rf: int,
    discovery_replicas: int,
    base_port: int,
    host: str,
    fsync: bool,
) -> int:
    """The foreground ``up`` command: start, report, wait for Ctrl-C, stop cleanly."""
    try:
        cluster = LocalCluster.create_or_load(
            data_dir,
            nodes=nodes,
            groups=groups,
            rf=rf,
            discovery_replicas=discovery_replicas,
            base_port=base_port,
            host=host,
            fsync=fsync,
        )
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    spec = cluster.spec
    print(
        f"cluster {spec.cluster_id}: {len(spec.discovery)} discovery + {len(spec.nodes)} nodes, "
        f"{spec.groups} groups x rf {spec.rf}, data in {data_dir.resolve()}"
    )

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM stops as cleanly as Ctrl-C

    signal.signal(signal.SIGTERM, _stop)
    started = time.monotonic()
    try:
        cluster.start()
        cmap = cluster.wait_for_leaders()
        print(f"every group has a leader after {time.monotonic() - started:.1f} s:")
        _print_endpoints(spec, cmap)
        print(f"endpoints in {data_dir / CLUSTER_FILE}; logs in {data_dir / 'logs'}; Ctrl-C stops")
        _watch(cluster)
    except KeyboardInterrupt:
        print("\nstopping ...")
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C (or the terminal's SIGINT reaching us twice) must not cut the
        # orderly stop short and leave children behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        cluster.stop()
    print("stopped; run the same command again to restart with all data")
    return 0


def _print_endpoints(spec: ClusterSpec, cmap: dpb.ClusterMap) -> None:
    for d in spec.discovery:
        print(f"  discovery {d.id}: {d.public}")
    leads: dict[int, list[int]] = {}
    for g in cmap.groups:
        leads.setdefault(g.leader, []).append(g.group)
    for n in spec.nodes:
        print(f"  node {n.id}: {n.public}  leads groups {leads.get(n.id, [])}")


def _watch(cluster: LocalCluster) -> None:
    """Stay in the foreground; say so when a child dies (it is not restarted automatically)."""
    reported: set[str] = set()
    while True:
        for child in cluster.children.values():
            if not child.alive and child.name not in reported and child.process is not None:
                reported.add(child.name)
                print(
                    f"{child.name} exited with code {child.process.returncode}; "
                    f"see {child.log_path}"
                )
        time.sleep(0.5)  # foreground idle loop, not synchronisation


def load_spec(data_dir: Path) -> ClusterSpec:
    path = data_dir / CLUSTER_FILE
    if not path.exists():
        raise LaunchError(
            f"no {CLUSTER_FILE} in {data_dir}: start a cluster with `python -m cluster up`"
        )
    return ClusterSpec.from_json(path.read_text())


def bootstrap_remote(
    *, discovery: list[str], nodes: str, groups: int, rf: int, cluster_id: str
) -> str:
    """``python -m cluster bootstrap``: parse ``ID=PUBLIC/INTERNAL,...`` and bootstrap."""
    endpoints: list[Endpoint] = []
    for item in nodes.split(","):
        try:
            raw_id, addrs = item.split("=", 1)
            public, internal = addrs.split("/", 1)
            endpoints.append(Endpoint(int(raw_id), public.strip(), internal.strip()))
        except ValueError as exc:
            raise LaunchError(f"--nodes: cannot parse {item!r} (want ID=PUBLIC/INTERNAL)") from exc
    if not discovery:
        raise LaunchError("--discovery: give at least one address")
    spec = ClusterSpec(
        cluster_id=cluster_id or uuid.uuid4().hex[:12],
        groups=groups,
        rf=rf,
        discovery=tuple(Endpoint(i + 1, a, "") for i, a in enumerate(discovery)),
        nodes=tuple(endpoints),
    )
    cmap = LocalCluster(spec, Path(".")).bootstrap(timeout=10.0)
    return (
        f"cluster {cmap.cluster_id} bootstrapped: {len(cmap.nodes)} nodes, "
        f"{cmap.group_count} groups, rf {cmap.rf}"
    )


def _alive(pid: int) -> bool:
    """Is ``pid`` running one of our programs? A pid from an old pids.json may belong to an
    unrelated process by now, which must not be signalled."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(
        argv[i] == b"-m" and argv[i + 1] in (b"cluster", b"dns", b"shards")
        for i in range(len(argv) - 1)
    )


def run_down(data_dir: Path, timeout: float = 15.0) -> int:
    """``python -m cluster down``: stop the cluster started by ``up`` on ``data_dir`` — the
    launcher (which stops its children cleanly), then any child it left behind."""
    path = data_dir / PIDS_FILE
    if not path.exists():
        print(f"no cluster is running on {data_dir} (no {PIDS_FILE})")
        return 0
    pids = json.loads(path.read_text())
    launcher = int(pids["launcher"])
    children = {str(k): int(v) for k, v in pids["children"].items()}
    deadline = time.monotonic() + timeout
    if _alive(launcher):
        os.kill(launcher, signal.SIGTERM)
        while _alive(launcher) and time.monotonic() < deadline:
            time.sleep(0.05)  # poll until the launcher has stopped its children
    left = {name: pid for name, pid in children.items() if _alive(pid)}
    for pid in left.values():
        os.kill(pid, signal.SIGTERM)
    while any(_alive(p) for p in left.values()) and time.monotonic() < deadline:
        time.sleep(0.05)  # poll until they exit
    for name, pid in left.items():
        if _alive(pid):
            print(f"{name} (pid {pid}) ignored SIGTERM; killing it")
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    print(f"cluster on {data_dir} stopped" + (f" ({len(left)} orphaned children)" if left else ""))
    return 0
