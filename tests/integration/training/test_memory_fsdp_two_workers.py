"""The memory model's FSDP2 terms against measured peaks of two FSDP2 workers (gloo, CPU).

Two spawned processes shard the native decoder with :func:`rlkit.training.engine.shard_module`
under :class:`rlkit.training.heads.PackedPolicy`, as the actor does, and each measures the peak of
one micro-batch's forward, chunked log-prob and backward with the CPU memory profiler: what the
layers save, the gathered layers and root, the fp32 gradient shards. See
tests/unit/models/test_memory.py for the one-rank terms.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rlkit.models import load_hf_config
from rlkit.models import memory as mem

pytestmark = pytest.mark.slow

TOKENS, SEQS, CHUNK = 2048, 8, 1024
# Measured when written (torch 2.13): within 3 %.
TOLERANCE = 0.10


def _shapes() -> dict[str, dict[str, Any]]:
    tiny = dict(load_hf_config("builtin:tiny-arith"))
    return {"tiny": tiny, "large-vocab": {**tiny, "vocab_size": 16384, "num_hidden_layers": 2}}


def _measure(hf: dict[str, Any], checkpointing: bool) -> int:
    """This rank's peak over one micro-batch of the sharded policy (bytes created in the pass)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler import _memory_profiler as profiler_memory

    from rlkit.models import CausalLM, DecoderConfig
    from rlkit.training.engine import shard_module
    from rlkit.training.heads import PackedPolicy

    torch.manual_seed(0)
    model = CausalLM(DecoderConfig.from_hf(hf))
    model.set_gradient_checkpointing(checkpointing)
    root = shard_module(PackedPolicy(model), compute_dtype=torch.float32)
    root.train()
    ids = torch.randint(0, hf["vocab_size"], (TOKENS,))
    pos = torch.arange(TOKENS // SEQS).repeat(SEQS)
    cu = torch.arange(0, TOKENS + 1, TOKENS // SEQS, dtype=torch.int32)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        logprobs, _ = root(ids, pos, cu, torch.arange(TOKENS), ids, chunk_tokens=CHUNK)
        logprobs.sum().backward()
        del logprobs
    live = peak = 0
    for _, action, _, size in profiler_memory.MemoryProfile(prof.profiler.kineto_results).timeline:
        live += size if action == profiler_memory.Action.CREATE else 0
        live -= size if action == profiler_memory.Action.DESTROY else 0
        peak = max(peak, live)
    return peak


def _worker(rank: int, tmp: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)  # two workers on a shared machine; CPU attention's workspace is per thread
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=2, timeout=timedelta(seconds=120)
    )
    try:
        peaks = {f"{n}-{c}": _measure(hf, c) for n, hf in _shapes().items() for c in (False, True)}
        torch.save(peaks, f"{tmp}/peaks_{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    os._exit(0)  # as tests/integration/training/test_fsdp_two_workers.py: no gloo teardown at exit


@pytest.fixture(scope="module")
def peaks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    tmp: Path = tmp_path_factory.mktemp("memory_fsdp")
    ctx = mp.start_processes(_worker, args=(str(tmp),), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 300.0
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("FSDP workers did not finish within 300 s")
    return torch.load(tmp / "peaks_0.pt")  # type: ignore[no-any-return]


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("name", ["tiny", "large-vocab"])
def test_two_fsdp_workers_peak_as_estimated(peaks: dict[str, int], name: str, checkpointing: bool) -> None:
    hf = _shapes()[name]
    step = mem.MicroBatchPass(TOKENS, 4, checkpointing, CHUNK, grad_bytes=4 / 2, fsdp=True)
    moment, parts = mem.update_peak(mem.ModelShape.from_hf(hf), step)
    estimate, measured = sum(parts.values()), peaks[f"{name}-{checkpointing}"]
    print(
        f"FSDP2 x 2, {name}, checkpointing={checkpointing}: estimate {estimate / 2**20:.1f} MiB at "
        f"{moment}, measured {measured / 2**20:.1f} MiB"
    )
    assert abs(estimate - measured) <= TOLERANCE * measured, (moment, estimate, measured)
