"""A rollout worker on real Ray takes a weight push while it generates (partial rollouts).

The push arrives on a second thread of the worker's actor while ``generate`` runs on the first
(the engine reports sequences running before it is sent), exactly as the trainer sends it with
``trainer.partial_rollouts=continue``: buckets in Ray's object store, checked by version and
checksum. Every token's ``rollout_versions`` entry names the trainer step whose weights sampled
it, and its log-prob equals a recomputation under those weights.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import ray
import torch

from rlkit.controller import ResourcePool, WorkerGroup
from rlkit.data.batch import Batch
from rlkit.models import load_causal_lm
from rlkit.rollout.weight_sync import ChecksumTap
from rlkit.trainer.workers import RolloutWorker

pytestmark = pytest.mark.usefixtures("ray_session")

MODEL = "builtin:tiny-arith"
RESPONSE = 160
TEMPERATURE = 1.0
# fp32 logits of a 4-layer model: rounding ~1e-6; the margin covers other summation orders.
ATOL = 1e-4


def _export(model: torch.nn.Module) -> dict[str, Any]:
    """What ``ActorWorker.export_weights`` returns: buckets in the object store and their checksums."""
    tap = ChecksumTap((name, t.detach().clone()) for name, t in model.state_dict().items())
    bucket = list(tap)
    return {"buckets": [ray.put(bucket)], "checksums": tap.checksums()}


def _prompts() -> Batch:
    ids = torch.tensor([[0, 5, 6, 7], [8, 9, 10, 11], [0, 0, 12, 13]])
    mask = (torch.arange(4)[None] >= torch.tensor([1, 0, 2])[:, None]).long()
    return Batch(tensors={"prompts": ids * mask, "prompt_attention_mask": mask})


def _logprobs(model: Any, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens]))[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits / TEMPERATURE, -1).gather(1, torch.tensor(tokens)[:, None])[:, 0]


def test_a_push_reaches_a_running_generation_and_versions_name_each_tokens_step() -> None:
    settings = {
        "engine": "native",
        "model_path": MODEL,
        "dtype": "float32",
        "max_num_seqs": 8,
        "cuda_graphs": False,
        "gpu_memory_utilization": 0.5,
        "max_model_len": 4 + RESPONSE,
        "seed": 0,
        "partial_rollouts": "continue",
    }
    old = load_causal_lm(MODEL, dtype=torch.float32, device="cpu", seed=0).eval()
    new = load_causal_lm(MODEL, dtype=torch.float32, device="cpu", seed=0).eval()
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    params = {"n": 2, "temperature": TEMPERATURE, "max_tokens": RESPONSE, "seed": 1, "stop_token_ids": []}
    with WorkerGroup(ResourcePool(1, 1, "cpu"), {"rollout": RolloutWorker}, {"rollout": settings}) as group:
        group.call("rollout", "load_weights", 3, _export(old))  # the weights of step 3
        result: dict[str, Any] = {}

        def generate() -> None:
            result["batch"] = group.call("rollout", "generate", _prompts(), params, 0, RESPONSE)

        generating = threading.Thread(target=generate)
        generating.start()
        deadline = time.monotonic() + 60
        while not any((g or {}).get("running_seqs", 0) > 0 for g in group.probe("rollout", "live_gauges")):
            assert time.monotonic() < deadline, "the generation never started"
            time.sleep(0.01)
        pushed = group.call("rollout", "load_weights", 4, _export(new))  # step 4's, mid-generation
        generating.join(timeout=120)
    assert pushed[0]["version"] == 2
    batch = result["batch"]
    versions, mask = batch["rollout_versions"], batch["response_mask"].bool()
    prompts = [
        row[m.bool()].tolist()
        for row, m in zip(batch["prompts"], batch["prompt_attention_mask"], strict=True)
    ]
    spanning = 0
    for i, prompt in enumerate(prompts):
        tokens, row = batch["responses"][i][mask[i]].tolist(), versions[i][mask[i]].tolist()
        assert row == sorted(row) and set(row) <= {3, 4}
        before = row.count(3)
        spanning += 0 < before < len(row)
        got = batch["rollout_log_probs"][i][mask[i]]
        torch.testing.assert_close(got[:before], _logprobs(old, prompt, tokens)[:before], atol=ATOL, rtol=0)
        torch.testing.assert_close(got[before:], _logprobs(new, prompt, tokens)[before:], atol=ATOL, rtol=0)
    assert spanning > 0, "the push did not land while sequences were in flight"
