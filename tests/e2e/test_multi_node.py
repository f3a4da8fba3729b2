"""``rlkit train --nodes 2`` on a real two-node Ray cluster on 127.0.0.1 (issue #25).

The cluster (:mod:`_loopback_cluster`) is its own process with its own Ray temp folder, and every
``rlkit`` command runs as a subprocess that joins it through ``RAY_ADDRESS``: the test session's
shared Ray (``ray_session``) is never touched. The tests share the one cluster and run in file
order; the last one kills the second node. The first two are the CI check; the stall/resume and
lost-node tests are ``slow`` (each starts more runs).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

HELPER = Path(__file__).with_name("_loopback_cluster.py")
# Starting two raylets, then the workers, takes a while on a loaded 2-core box; a step is seconds.
_CLUSTER_START_S = 180.0
_RUN_S = 300.0
# A lost node must be reported within seconds: Ray's health checks (1 s x 3 here) plus the group's grace.
_LOST_NODE_S = 30.0


@dataclass
class LoopbackCluster:
    proc: subprocess.Popen[str]
    address: str
    node_ids: list[str]
    second_raylet_pid: int
    env: dict[str, str]

    def rlkit(self, *args: str, timeout: float = _RUN_S) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "rlkit", *args]
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=False)


def _read_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """The helper's next stdout line, or a failure after ``timeout_s`` (a hung start never hangs the suite)."""
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout_s)
    if not out or not out[0]:
        pytest.fail(f"the loopback cluster did not answer within {timeout_s:g} s")
    return out[0]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LoopbackCluster]:
    # Short and private: Ray's socket paths must stay under 108 characters, and ray.init() elsewhere
    # must not find this cluster through /tmp/ray/ray_current_cluster.
    tmp = tempfile.mkdtemp(prefix="rk", dir="/tmp")
    env = {
        **os.environ,
        "RAY_TMPDIR": tmp,
        "RAY_AUTH_MODE": "disabled",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    env.pop("RAY_ADDRESS", None)
    log = open(Path(tmp) / "cluster.log", "w")  # noqa: SIM115 (open for the fixture's lifetime)
    proc = subprocess.Popen(
        [sys.executable, str(HELPER)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        env=env,
        text=True,
    )
    try:
        info = json.loads(_read_line(proc, _CLUSTER_START_S))
        env["RAY_ADDRESS"] = info["address"]
        yield LoopbackCluster(proc, info["address"], info["nodes"], info["second_raylet_pid"], env)
    finally:
        proc.stdin.close()  # type: ignore[union-attr]  # end of input: the helper stops the cluster
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _placement(stderr: str) -> dict[str, list[int]]:
    """Node id prefix -> ranks, from the ``nodes`` line of the run's opening."""
    line = next(x for x in stderr.splitlines() if x.startswith("nodes"))
    out = {}
    for node, ranks in re.findall(r"node (\w+) \([\d.]+\): ranks? ([\d-]+)", line):
        first, _, last = ranks.partition("-")
        out[node] = list(range(int(first), int(last or first) + 1))
    return out


def test_grpo_run_places_a_worker_on_each_node(
    cluster: LoopbackCluster, tmp_path: Path, tiny_run: list[str]
) -> None:
    run = tmp_path / "run"
    proc = cluster.rlkit("train", "grpo", "--nodes", "2", *tiny_run, f"trainer.out_dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Both nodes, one rank each, although the head alone has CPUs for both workers.
    assert _placement(proc.stderr) == {cluster.node_ids[0][:6]: [0], cluster.node_ids[1][:6]: [1]}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert (run / "checkpoints" / "step_2").is_dir()


def test_more_nodes_than_the_cluster_has_is_one_line(
    cluster: LoopbackCluster, tmp_path: Path, tiny_run: list[str]
) -> None:
    start = time.monotonic()
    proc = cluster.rlkit("train", "grpo", "--nodes", "4", *tiny_run, f"trainer.out_dir={tmp_path / 'run'}")
    took = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "asked for 4 nodes x 1 CPU, Ray reports 2 live nodes:" in line
    assert f"{cluster.node_ids[0][:6]} 2 CPU" in line and f"{cluster.node_ids[1][:6]} 1 CPU" in line
    assert took < 90, f"took {took:.0f} s"  # data, imports and Ray's connect; the pool itself waits 5 s


def _steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    text = path.read_text() if path.is_file() else ""
    return [json.loads(line)["step"] for line in text.splitlines() if line.strip()]


def _worker_on_second_node(cluster: LoopbackCluster) -> psutil.Process:
    """The rlkit worker process (rank 1) that the second node's raylet started."""
    raylet = psutil.Process(cluster.second_raylet_pid)
    workers = [p for p in raylet.children(recursive=True) if "WorkerHost" in " ".join(p.cmdline())]
    assert len(workers) == 1, [p.cmdline() for p in workers]
    return workers[0]


@pytest.mark.slow  # two more runs' start-up (minutes on a loaded 2-core box)
def test_a_stalled_rank_dumps_stacks_and_resume_continues(
    cluster: LoopbackCluster, tmp_path: Path, tiny_run: list[str]
) -> None:
    run = tmp_path / "run"
    args = [*tiny_run, "trainer.save_every=1", "hardware.stage_timeout_s=15", f"trainer.out_dir={run}"]
    cmd = [sys.executable, "-m", "rlkit", "train", "grpo", "--nodes", "2", *args, "trainer.total_steps=500"]
    train = subprocess.Popen(cmd, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stopped: psutil.Process | None = None
    try:
        deadline = time.monotonic() + _RUN_S
        while not (run / "checkpoints" / "step_1").is_dir() or not _steps(run):
            assert train.poll() is None, train.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.2)
        stopped = _worker_on_second_node(cluster)
        stopped.suspend()  # SIGSTOP: rank 1 stops answering; rank 0 waits in its collective
        _, stderr = train.communicate(timeout=15 + 120)
    finally:
        if train.poll() is None:
            train.kill()
        if stopped is not None and stopped.is_running():
            stopped.kill()
    assert train.returncode == 1, stderr[-3000:]
    (line,) = [x for x in stderr.splitlines() if x.startswith("error:")]
    assert re.search(r"stage \w+\.\w+ overran its 15 s deadline on rank [\d, ]*1", line), line
    assert "rank 1 did not answer" in line and "worker stacks: " in line
    (stacks,) = run.glob("stacks-*.txt")
    assert "rank 1: no answer" in stacks.read_text() and "Thread" in stacks.read_text()

    # The stall may hit a step after its row was written but before its checkpoint: resume from the checkpoint.
    done = max(int(c.name.removeprefix("step_")) for c in (run / "checkpoints").glob("step_*"))
    proc = cluster.rlkit("train", "grpo", "--nodes", "2", *args, f"trainer.total_steps={done + 1}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming at step {done}" in proc.stderr
    assert _steps(run)[-1] == done + 1


@pytest.mark.slow  # a second run's start-up (a minute on a loaded 2-core box); the run above is the CI check
def test_a_lost_node_is_reported_within_seconds(
    cluster: LoopbackCluster, tmp_path: Path, tiny_run: list[str]
) -> None:
    run = tmp_path / "run"
    args = [*tiny_run, "trainer.total_steps=500", "trainer.save_every=0", f"trainer.out_dir={run}"]
    cmd = [sys.executable, "-m", "rlkit", "train", "grpo", "--nodes", "2", *args]
    train = subprocess.Popen(cmd, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + _RUN_S
        while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text().strip():
            assert train.poll() is None, train.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no step finished"
            time.sleep(0.2)
        cluster.proc.stdin.write("kill\n")  # type: ignore[union-attr]
        cluster.proc.stdin.flush()  # type: ignore[union-attr]
        assert _read_line(cluster.proc, 60).strip() == "killed"
        killed = time.monotonic()
        _, stderr = train.communicate(timeout=_LOST_NODE_S + 60)
        took = time.monotonic() - killed
    finally:
        if train.poll() is None:
            train.kill()
    assert train.returncode == 1, stderr[-3000:]
    (line,) = [x for x in stderr.splitlines() if x.startswith("error:")]
    assert "on rank 1: the worker process died" in line, line
    print(f"lost node reported {took:.1f} s after it was killed")
    assert took < _LOST_NODE_S, f"reported {took:.0f} s after the node was lost"
