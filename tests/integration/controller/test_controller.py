"""The Ray single controller on CPU: dispatch modes over gloo, colocation, split placement, failures.

Ray actors take a second or two to start on a small box, so one 2-worker group serves most tests
and the failure tests that break a group use small groups of their own.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

import numpy as np
import pytest
import ray
import torch
import torch.distributed as dist

from rlkit.controller import ResourcePool, WorkerError, WorkerGroup, dispatch, probe, worker_context
from rlkit.data.batch import Batch
from rlkit.errors import UserError
from rlkit.hardware import current_device

pytestmark = pytest.mark.usefixtures("ray_session")


class Toy:
    """A role whose methods exercise each dispatch mode with real gloo collectives."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        self.shared = torch.zeros(3)
        self.ticks = 0

    @dispatch("broadcast")
    def rank_sum(self) -> float:
        t = torch.tensor([float(dist.get_rank())])
        dist.all_reduce(t)
        return t.item()

    @dispatch("rank0")
    def all_reduce_plus_rank(self, x: float) -> float:
        t = torch.tensor([x + dist.get_rank()])
        dist.all_reduce(t)
        return t.item()

    @dispatch("rank0")
    def env(self) -> dict[str, str | None]:
        keys = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"]
        return {k: os.environ.get(k) for k in keys}

    @dispatch("shard")
    def scale_rows(self, batch: Batch, offset: float = 0.0) -> Batch:
        rank = dist.get_rank()
        return Batch(
            {"y": batch["x"] * self.scale + offset},
            {"rank": [rank] * len(batch), "uid": batch["uid"]},
            {"rank": rank, "kind": "scaled"},
        )

    @dispatch("shard")
    def shard_metrics(self, batch: Batch) -> dict[str, object]:
        return {"loss": float(dist.get_rank()), "rows": [len(batch)], "kind": "metrics"}

    @dispatch("broadcast")
    def rows_seen(self, batch: Batch) -> int:
        return len(batch)

    @dispatch("broadcast")
    def pid(self) -> int:
        return os.getpid()

    @dispatch("broadcast")
    def read_shared(self) -> list[float]:
        return self.shared.tolist()

    @dispatch("broadcast")
    def fail_on(self, rank: int) -> None:
        if dist.get_rank() == rank:
            raise ValueError(f"bad input seen on rank {rank}")

    @dispatch("broadcast")
    def exit_on(self, rank: int) -> None:
        if dist.get_rank() == rank:
            os._exit(1)
        dist.all_reduce(torch.zeros(1))  # the survivor waits in a collective for the dead rank

    @dispatch("broadcast")
    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    @dispatch("broadcast")
    def tick(self, times: int, every_s: float) -> int:
        for _ in range(times):
            self.ticks += 1
            time.sleep(every_s)
        return self.ticks

    @probe
    def read_ticks(self) -> int:
        return self.ticks

    @probe
    def broken_probe(self) -> int:
        raise RuntimeError("a probe that fails")

    def undecorated(self) -> None:
        """Not callable from the controller."""


class Peer:
    """A second role colocated with Toy: it reaches Toy's objects in-process."""

    def __init__(self) -> None:
        self.toy = worker_context().roles["toy"]

    @dispatch("broadcast")
    def pid_and_rank(self) -> tuple[int, int, int]:
        ctx = worker_context()
        return os.getpid(), ctx.rank, ctx.world_size

    @dispatch("broadcast")
    def bump_shared(self, value: float) -> None:
        self.toy.shared += value  # in place: Toy sees it only if it is the same object


class BadInit:
    def __init__(self) -> None:
        raise RuntimeError("cannot build this role")


@pytest.fixture(scope="module")
def group() -> Iterator[WorkerGroup]:
    g = WorkerGroup(
        ResourcePool(nodes=1, devices_per_node=2, device="cpu"),
        {"toy": Toy, "peer": Peer},
        {"toy": {"scale": 2.0}},
        call_timeout_s=60,
        dist_timeout_s=60,
    )
    yield g
    g.shutdown()


def test_broadcast_and_rank0_use_real_collectives(group: WorkerGroup) -> None:
    assert group.world_size == 2
    assert group.role("toy").rank_sum() == [1.0, 1.0]
    assert group.call("toy", "all_reduce_plus_rank", 10.0) == 21.0  # (10 + 0) + (10 + 1), rank 0's copy
    env = group.role("toy").env()
    assert env["RANK"] == "0" and env["WORLD_SIZE"] == "2" and env["LOCAL_RANK"] == "0"
    assert env["MASTER_ADDR"] and int(env["MASTER_PORT"] or 0) > 0


def test_shard_pads_chunks_concats_and_unpads(group: WorkerGroup) -> None:
    batch = Batch({"x": torch.arange(5, dtype=torch.float32)}, {"uid": [f"u{i}" for i in range(5)]})
    out = group.role("toy").scale_rows(batch, offset=1.0)
    assert len(out) == 5
    assert torch.equal(out["y"], batch["x"] * 2.0 + 1.0)
    assert list(out["uid"]) == list(batch["uid"])
    assert list(out["rank"]) == [0, 0, 0, 1, 1]  # 5 rows + 1 pad -> 3 per rank, pad dropped
    assert out.meta == {"rank": 0.5, "kind": "scaled"}  # numbers averaged, equal values kept
    metrics = group.role("toy").shard_metrics(batch)
    assert metrics == {"loss": 0.5, "rows": [3, 3], "kind": "metrics"}


def test_broadcast_sends_the_same_batch_to_every_rank(group: WorkerGroup) -> None:
    big = Batch({"x": torch.zeros(10_000, 8)}, {"u": np.array(["a"] * 10_000, dtype=object)})
    assert group.role("toy").rows_seen(big) == [10_000, 10_000]


def test_undecorated_methods_are_refused(group: WorkerGroup) -> None:
    with pytest.raises(AttributeError, match="@dispatch"):
        group.role("toy").undecorated()
    with pytest.raises(AttributeError, match="@dispatch"):
        group.call("toy", "undecorated")
    with pytest.raises(AttributeError, match="no method"):
        group.call("toy", "missing")
    with pytest.raises(KeyError, match="critic"):
        group.role("critic")


def test_probes_answer_while_a_call_runs(group: WorkerGroup) -> None:
    """A probe reads a role's state on the worker's spare thread while a long call changes it."""
    import threading

    start = group.probe("toy", "read_ticks")
    call = threading.Thread(target=group.role("toy").tick, args=(40, 0.05))
    call.start()
    seen = []
    while call.is_alive():
        seen.append(group.probe("toy", "read_ticks"))
        time.sleep(0.1)
    call.join()
    during = [ticks for ticks in seen if ticks[0] is not None and start[0] < ticks[0] < start[0] + 40]
    assert len({tuple(t) for t in during}) >= 2, seen  # several values seen in mid-call
    assert group.probe("toy", "read_ticks") == [start[0] + 40, start[1] + 40]
    assert group.probe("toy", "broken_probe") == [None, None]  # a failing probe is no failure
    with pytest.raises(AttributeError, match="not a probe"):
        group.probe("toy", "rank_sum")
    assert group.role("toy").rank_sum() == [1.0, 1.0]  # the group is fine


def test_colocated_roles_share_process_and_objects(group: WorkerGroup) -> None:
    toy_pids = group.role("toy").pid()
    peer = group.role("peer").pid_and_rank()
    assert [p[0] for p in peer] == toy_pids == group.pids
    assert len(set(toy_pids)) == 2
    assert [(p[1], p[2]) for p in peer] == [(0, 2), (1, 2)]
    group.role("peer").bump_shared(1.5)
    assert group.role("toy").read_shared() == [[1.5] * 3, [1.5] * 3]


def test_worker_exception_reaches_controller(group: WorkerGroup) -> None:
    start = time.monotonic()
    with pytest.raises(WorkerError) as info:
        group.role("toy").fail_on(1)
    assert time.monotonic() - start < 10
    err = info.value
    assert (err.role, err.method, err.rank, err.exc_type) == ("toy", "fail_on", 1, "ValueError")
    assert str(err) == "toy.fail_on on rank 1: ValueError: bad input seen on rank 1"  # one line
    assert "in fail_on" in (err.remote_traceback or "") and "in fail_on" in err.details()
    assert group.role("toy").rank_sum() == [1.0, 1.0]  # every rank had returned: still usable


def test_split_pool_groups_of_world_size_one_and_deadline(caplog: pytest.LogCaptureFixture) -> None:
    pool = ResourcePool(1, 2, "cpu")
    left, right = pool.split([1, 1])
    with WorkerGroup(left, {"toy": Toy}, call_timeout_s=60) as a, WorkerGroup(right, {"peer": Toy}) as b:
        assert a.world_size == b.world_size == 1
        assert a.role("toy").rank_sum() == [0.0] and b.role("peer").rank_sum() == [0.0]
        assert a.pids != b.pids
        out = a.role("toy").scale_rows(Batch({"x": torch.ones(3)}, {"uid": ["a", "b", "c"]}))
        assert torch.equal(out["y"], torch.ones(3))

        start = time.monotonic()
        with caplog.at_level(logging.ERROR, logger="rlkit.controller.group"):
            with pytest.raises(WorkerError, match=r"toy\.sleep overran its 1 s deadline on rank 0") as info:
                a.call("toy", "sleep", 60, timeout_s=1)
        assert time.monotonic() - start < 20
        assert "rank 0" in (info.value.stacks or "") and "in sleep" in (info.value.stacks or "")
        assert "in sleep" in caplog.text
        with pytest.raises(WorkerError, match="broken"):
            a.role("toy").pid()
        assert b.role("peer").pid() == b.pids  # the other group is unaffected
    with pytest.raises(RuntimeError, match="shut down"):
        WorkerGroup(left, {"toy": Toy})


def test_role_constructor_failure_is_reported() -> None:
    with pytest.raises(WorkerError, match=r"worker.setup on rank 0: RuntimeError: cannot build") as info:
        WorkerGroup(ResourcePool(1, 1, "cpu"), {"bad": BadInit})
    assert info.value.rank == 0


def test_dead_worker_is_reported_promptly() -> None:
    with WorkerGroup(ResourcePool(1, 2, "cpu"), {"toy": Toy}, dist_timeout_s=120) as g:
        start = time.monotonic()
        with pytest.raises(WorkerError, match="rank 1: the worker process died") as info:
            g.role("toy").exit_on(1)
        assert time.monotonic() - start < 15  # rank 0 is still blocked in all_reduce: not waited on
        assert info.value.rank == 1
        with pytest.raises(WorkerError, match="broken"):
            g.role("toy").pid()
        ray.kill(g._actors[0])


def test_pool_larger_than_cluster_fails_fast() -> None:
    start = time.monotonic()
    with pytest.raises(
        UserError, match=r"asked for 1 node x 8 GPU, Ray reports 1 live node: \w+ 0 GPU"
    ) as info:
        ResourcePool(nodes=1, devices_per_node=8, device="cuda").wait()  # can never fit: no long wait
    assert time.monotonic() - start < 15
    assert "smaller --profile" in str(info.value)
    with pytest.raises(UserError, match="unknown device"):
        ResourcePool(1, 1, "tpu")


class GpuToy:
    @dispatch("broadcast")
    def info(self) -> tuple[str, str, float, str]:
        t = torch.ones(1, device=current_device()) * (dist.get_rank() + 1)
        dist.all_reduce(t)
        return os.environ["CUDA_VISIBLE_DEVICES"], str(t.device), t.item(), str(dist.get_backend())


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_gpu_group_pins_one_device_per_rank_and_uses_nccl() -> None:
    with WorkerGroup(ResourcePool(1, 2, "cuda"), {"toy": GpuToy}, call_timeout_s=300) as g:
        infos = g.role("toy").info()
    assert len({visible for visible, *_ in infos}) == 2  # each rank sees its own GPU only
    assert all(dev == "cuda:0" and total == 3.0 and backend == "nccl" for _, dev, total, backend in infos)
