"""``python -m cluster up`` and ``down`` as a user runs them: real commands, real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from cluster.launcher import PIDS_FILE, LocalCluster
from tests.integration.logclient import wait_for


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cluster", *args]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_up(data_dir: Path) -> subprocess.Popen[bytes]:
    up = subprocess.Popen(
        _cli("up", "--data-dir", str(data_dir), "--nodes", "3", "--groups", "2", "--base-port",
             "0"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    pids = data_dir / PIDS_FILE

    def ready() -> bool:
        if up.poll() is not None:
            raise AssertionError(f"cluster up exited with {up.returncode}")
        if not pids.exists() or len(json.loads(pids.read_text())["children"]) < 4:
            return False
        cluster = LocalCluster.create_or_load(
            data_dir, nodes=3, groups=2, rf=3, discovery_replicas=1, base_port=0
        )
        return all(g.leader for g in cluster.get_map(timeout=2.0).groups)

    wait_for(ready, 30.0, "the cluster to be up with leaders")
    return up


def test_down_stops_the_launcher_and_every_process(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    up = _start_up(data_dir)
    children = json.loads((data_dir / PIDS_FILE).read_text())["children"]
    try:
        out = subprocess.run(
            _cli("down", "--data-dir", str(data_dir)), capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert up.wait(timeout=30) == 0
        assert not any(_alive(pid) for pid in children.values())
        assert not (data_dir / PIDS_FILE).exists()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        for pid in children.values():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_down_stops_children_a_killed_launcher_left_behind(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    up = _start_up(data_dir)
    children = json.loads((data_dir / PIDS_FILE).read_text())["children"]
    try:
        up.send_signal(signal.SIGKILL)
        up.wait()
        assert all(_alive(pid) for pid in children.values())  # orphans, holding the ports
        out = subprocess.run(
            _cli("down", "--data-dir", str(data_dir)), capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert "orphaned" in out.stdout
        wait_for(lambda: not any(_alive(p) for p in children.values()), 10.0, "orphans gone")
    finally:
        for pid in children.values():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
