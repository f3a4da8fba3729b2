"""ProfilerRole in real Ray workers (CPU, gloo): one torch trace per rank, labelled with the worker methods."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from rlkit.controller import ResourcePool, WorkerGroup, dispatch
from rlkit.profiling.profiler import ProfilerRole

pytestmark = pytest.mark.usefixtures("ray_session")


class Busy:
    """A role doing a little tensor work and a collective, like a training step."""

    @dispatch("broadcast")
    def work(self) -> float:
        x = torch.randn(64, 64) @ torch.randn(64, 64)
        dist.all_reduce(x)
        return float(x.sum())


def test_one_trace_per_rank_with_method_ranges(tmp_path: Path) -> None:
    pool = ResourcePool(1, 2, "cpu")
    with WorkerGroup(pool, {"busy": Busy, "profiler": ProfilerRole}, call_timeout_s=120) as group:
        profiler, busy = group.role("profiler"), group.role("busy")
        busy.work()  # before the window: not in the trace
        profiler.start(str(tmp_path / "profile"), "torch", "_steps1-1")
        busy.work()
        busy.work()
        written = profiler.stop()
        assert profiler.stop() == [[], []]  # stopping twice is harmless
    assert written == [[str(tmp_path / "profile" / f"torch_rank{r}_steps1-1.pt.trace.json")] for r in (0, 1)]
    for (path,) in written:
        events = json.loads(Path(path).read_text())["traceEvents"]
        labels = [e["name"] for e in events if e.get("name") == "busy.work"]
        assert len(labels) == 2, path  # the two calls inside the window, named role.method
        assert any(e.get("name") == "aten::mm" for e in events)
    pool.shutdown()
