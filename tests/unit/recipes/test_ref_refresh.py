"""SPIN's reference refresh at the role level: RefRole.load_weights takes the actor's weights exactly."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.distributed as dist

from rlkit.data.batch import Batch
from rlkit.data.rl_dataset import PromptItem, collate_prompts
from rlkit.rollout.base import Completion
from rlkit.trainer.rollout_batch import completions_to_batch
from rlkit.training import ActorRole, RefRole
from rlkit.training.distributed import ensure_process_group


@pytest.fixture(scope="module")
def process_group() -> Iterator[None]:
    """A single-process gloo group for the module; torn down so other test modules start clean."""
    created = not dist.is_initialized()
    ensure_process_group()
    yield
    if created and dist.is_initialized():
        dist.destroy_process_group()


def rl_batch() -> Batch:
    items = [PromptItem([10 + i, 20, 30], "arith", "1", {}, [], i) for i in range(4)]
    columns = collate_prompts(items, pad_id=256)
    tensors = {k: v for k, v in columns.items() if isinstance(v, torch.Tensor)}
    prompts = Batch(tensors, {k: v for k, v in columns.items() if k not in tensors})
    samples = [[Completion([40 + i, 50, 60 + i], None, None, "stop")] for i in range(4)]
    batch = completions_to_batch(prompts, samples, pad_id=256, max_response_length=4)
    batch.set("advantages", torch.tensor([1.0, -1.0, 0.5, -0.5])[:, None] * batch["response_mask"])
    batch.set("uid", np.arange(4))
    return batch


def test_load_weights_makes_the_reference_the_current_actor(process_group: None) -> None:
    batch = rl_batch()
    actor = ActorRole("builtin:tiny", total_steps=1, lr=1e-2, micro_batch_tokens=64)
    ref = RefRole("builtin:tiny", micro_batch_tokens=64)
    actor.update(batch, loss_mode="gpg")
    moved = actor.compute_log_prob(batch, with_entropy=False)["old_log_probs"]
    before = ref.compute_ref_log_prob(batch)["ref_log_prob"]
    assert (moved - before).abs().max() > 1e-3  # the update moved the actor away from the reference
    ref.load_weights(actor.named_full_tensors(dtype=ref.dtype))
    torch.testing.assert_close(ref.compute_ref_log_prob(batch)["ref_log_prob"], moved)
    with pytest.raises(ValueError, match="no parameter or buffer"):
        ref.load_weights([("not.a.weight", torch.zeros(1))])
