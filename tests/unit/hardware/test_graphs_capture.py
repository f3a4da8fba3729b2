"""Device graphs and profiler hooks of the device layer: refused on CPU, working on a GPU."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from rlkit.hardware import capture, graphs
from rlkit.hardware import device as hw

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_graphs_are_refused_off_gpu() -> None:
    cpu = torch.device("cpu")
    assert not graphs.graphs_supported(cpu)
    with pytest.raises(RuntimeError, match="device graphs need a CUDA or ROCm GPU"):
        graphs.capture_graph(lambda: None, cpu)
    with pytest.raises(RuntimeError, match="device graphs"), graphs.side_stream(cpu):
        pass
    with pytest.raises(RuntimeError, match="device graphs"):
        graphs.graph_pool(cpu)


@pytest.mark.skipif(hw.device_type() != "cpu", reason="checks the CPU behaviour")
def test_capture_hooks_on_cpu() -> None:
    capture.profiler_range_start()
    capture.profiler_range_stop()
    capture.nvtx_push("x")
    capture.nvtx_pop()
    assert not capture.nvtx_supported()
    with pytest.raises(RuntimeError, match="memory snapshots"):
        capture.dump_memory_snapshot("/dev/null")


@gpu
@needs_cuda
def test_graph_capture_and_replay_on_gpu() -> None:
    dev = hw.current_device(0)
    assert graphs.graphs_supported(dev)
    x = torch.zeros(16, device=dev)

    def step() -> None:
        x.add_(1.0)

    with graphs.side_stream(dev):
        step()  # warm-up outside the capture
    graph = graphs.capture_graph(step, dev, graphs.graph_pool(dev))
    hw.synchronize(dev)
    before = x.clone()
    graph.replay()
    graph.replay()
    hw.synchronize(dev)
    assert torch.equal(x, before + 2)


@gpu
@needs_cuda
def test_memory_snapshot_and_nvtx_on_gpu(tmp_path: Path) -> None:
    dev = hw.current_device(0)
    assert capture.memory_snapshots_supported() and capture.nvtx_supported()
    capture.record_memory_history(True)
    kept = torch.empty(1 << 20, device=dev)
    capture.nvtx_push("range")
    capture.nvtx_pop()
    path = tmp_path / "snap.pickle"
    capture.dump_memory_snapshot(path)
    capture.record_memory_history(False)
    snapshot = pickle.loads(path.read_bytes())
    assert snapshot["segments"] and kept.numel() == 1 << 20
