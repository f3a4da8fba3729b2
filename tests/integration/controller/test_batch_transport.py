from __future__ import annotations

import numpy as np
import pytest
import ray
import torch

from rlkit.data.batch import Batch

pytestmark = pytest.mark.usefixtures("ray_session")


def test_10k_row_batch_round_trips_through_the_object_store() -> None:
    n = 10_000
    gen = torch.Generator().manual_seed(0)
    batch = Batch(
        {
            "input_ids": torch.randint(0, 32_000, (n, 256), generator=gen),
            "attention_mask": torch.rand(n, 256, generator=gen) > 0.1,
            "old_log_probs": torch.randn(n, 128, generator=gen).to(torch.bfloat16),
            "scores": torch.randn(n, generator=gen, dtype=torch.float64),
        },
        {"uid": [f"prompt-{i // 8}" for i in range(n)], "ground_truth": [{"answer": i} for i in range(n)]},
        {"temperature": 0.7, "global_steps": 3},
    )
    out = ray.get(ray.put(batch))
    assert out.keys() == batch.keys() and out.meta == batch.meta
    for key, value in batch.tensors.items():
        assert out[key].dtype == value.dtype and out[key].shape == value.shape
        assert torch.equal(out[key], value), key
    for key, value in batch.non_tensors.items():
        assert out[key].dtype == object and list(out[key]) == list(value), key
    out["input_ids"][0, 0] = -1  # what comes out of the object store is an ordinary writable tensor
    assert batch["input_ids"][0, 0] != -1
    assert isinstance(out["uid"], np.ndarray)
