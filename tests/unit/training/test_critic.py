"""CriticRole on one process: values read at the predicting position, and the value loss falls."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlkit.models import ValueModel
from rlkit.training.critic import CriticRole

from ._builders import rl_batch

pytestmark = pytest.mark.usefixtures("process_group")

P, R = 6, 5


def test_values_are_read_before_each_response_token(tiny_model_dir: Path) -> None:
    batch = rl_batch([6, 3, 1, 4], [5, 2, 5, 1], P, R)
    critic = CriticRole(str(tiny_model_dir), total_steps=10, micro_batch_tokens=12)
    values = critic.compute_values(batch)["values"]
    reference = ValueModel.from_causal_lm(str(tiny_model_dir))
    with torch.no_grad():
        padded = reference(batch["input_ids"], batch["attention_mask"])  # (B, L)
    expected = padded[:, P - 1 : -1] * batch["attention_mask"][:, P:]
    torch.testing.assert_close(values, expected, atol=1e-6, rtol=1e-5)


def test_value_loss_falls_on_a_fixed_batch(tiny_model_dir: Path) -> None:
    batch = rl_batch([6, 3, 5, 1, 4, 6], [5, 2, 4, 5, 1, 3], P, R, seed=1)
    critic = CriticRole(str(tiny_model_dir), lr=1e-2, total_steps=10, micro_batch_tokens=30)
    returns = torch.linspace(-1.0, 1.0, len(batch))[:, None] * batch["response_mask"]
    batch.set("returns", returns)
    losses = []
    for _ in range(6):
        batch.set("values", critic.compute_values(batch)["values"])
        metrics = critic.update(batch, num_mini_batches=2, cliprange_value=0.5)
        losses.append(metrics["critic/vf_loss"])
    assert losses[-1] < 0.5 * losses[0]
    assert set(metrics) >= {
        "critic/vf_loss",
        "critic/vf_clipfrac",
        "critic/grad_norm",
        "critic/lr",
        "critic/vpred_mean",
    }
    assert 0.0 <= metrics["critic/vf_clipfrac"] <= 1.0
    assert critic.engine.optimizer_steps == 12
    names = [name for name, _ in critic.named_full_tensors()]
    assert names[0] == "model.embed_tokens.weight" and names[-2:] == ["score.weight", "score.bias"]
