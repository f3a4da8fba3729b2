"""TeacherRole / Teachers and the actor's GKD term on one process: top-k against a padded forward,
several teachers per row, micro-batch invariance, and a student pulled toward its teacher."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rlkit.errors import UserError
from rlkit.models import CausalLM, init_weights, load_causal_lm, save_hf
from rlkit.training.actor import ActorRole
from rlkit.training.teacher import TeacherRole, Teachers

from ._builders import rl_batch, tiny_decoder_config

pytestmark = pytest.mark.usefixtures("process_group")

P, R, K = 6, 5, 8
PROMPTS = [6, 3, 5, 1, 4, 6, 2, 5]
RESPONSES = [5, 2, 4, 5, 1, 3, 5, 2]


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny checkpoint (another seed): a teacher that differs from the student."""
    model = CausalLM(tiny_decoder_config())
    init_weights(model, seed=7)
    out = tmp_path_factory.mktemp("tiny_teacher")
    save_hf(model, out)
    return out


def _padded_log_softmax(path: Path, batch) -> torch.Tensor:
    model = load_causal_lm(str(path))
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"]).float()
    return logits[:, P - 1 : -1].log_softmax(-1)


def test_teacher_topk_matches_a_padded_forward(tiny_model_dir: Path) -> None:
    batch = rl_batch(PROMPTS, RESPONSES, P, R, seed=3)
    out = TeacherRole(str(tiny_model_dir), micro_batch_tokens=16, logprob_chunk_tokens=3).compute_teacher(
        batch, topk=K
    )
    full = _padded_log_softmax(tiny_model_dir, batch)
    mask = batch["response_mask"].bool()
    top, ids = full.topk(K, -1)
    assert out["teacher_topk_log_probs"].shape == (len(PROMPTS), R, K)
    torch.testing.assert_close(out["teacher_topk_log_probs"][mask], top[mask], atol=1e-5, rtol=1e-5)
    assert torch.equal(out["teacher_topk_ids"][mask], ids[mask])
    sampled = full.gather(-1, batch["responses"][..., None]).squeeze(-1)
    torch.testing.assert_close(out["teacher_log_prob"][mask], sampled[mask], atol=1e-5, rtol=1e-5)
    assert torch.all(out["teacher_log_prob"][~mask] == 0)


def test_each_row_gets_its_own_teacher(tiny_model_dir: Path, other_model_dir: Path) -> None:
    batch = rl_batch(PROMPTS, RESPONSES, P, R, seed=4)
    names = ["b", "a", "", "b", None, "a", "a", "b"]
    batch.set("teacher", np.array(names, dtype=object))
    teachers = Teachers({"a": str(tiny_model_dir), "b": str(other_model_dir)}, micro_batch_tokens=64)
    out = teachers.compute_teacher(batch, topk=K)
    alone_a = teachers.roles["a"].compute_teacher(batch, topk=K)
    alone_b = teachers.roles["b"].compute_teacher(batch, topk=K)
    for row, name in enumerate(names):
        source = alone_b if name == "b" else alone_a  # empty / missing: the first teacher
        for key in ("teacher_log_prob", "teacher_topk_log_probs", "teacher_topk_ids"):
            assert torch.equal(out[key][row], source[key][row]), (row, key)
    batch.set("teacher", np.array(["c"] * len(names), dtype=object))
    with pytest.raises(UserError, match="not configured"):
        teachers.compute_teacher(batch, topk=K)


def _actor(path: Path, budget: int) -> ActorRole:
    return ActorRole(str(path), lr=3e-3, total_steps=20, micro_batch_tokens=budget, logprob_chunk_tokens=7)


def _with_teacher(batch, teacher_dir: Path):
    out = TeacherRole(str(teacher_dir)).compute_teacher(batch, topk=K)
    batch.set("teacher_topk_log_probs", out["teacher_topk_log_probs"])
    batch.set("teacher_topk_ids", out["teacher_topk_ids"])
    return batch


def test_gkd_update_is_the_same_for_one_or_eight_micro_batches(
    tiny_model_dir: Path, other_model_dir: Path
) -> None:
    batch = _with_teacher(rl_batch(PROMPTS, RESPONSES, P, R, seed=5), other_model_dir)
    gkd = {"loss": "jsd", "coef": 2.0, "beta": 0.5}
    results = []
    for budget in (P + R, 8 * (P + R)):
        actor = _actor(tiny_model_dir, budget)
        metrics = actor.update(batch, gkd=gkd)
        results.append((metrics, dict(actor.named_full_tensors(torch.float32))))
    (m_small, p_small), (m_big, p_big) = results
    for key in ("distill/gkd_loss", "distill/divergence", "actor/grad_norm"):
        assert m_small[key] == pytest.approx(m_big[key], rel=1e-5, abs=1e-6), key
    # Adam's first step moves each weight by lr * g / (|g| + eps): exactly +-lr unless |g| is near eps,
    # where float noise in g can move the step anywhere in [-lr, lr]; elsewhere it is exact.
    lr = 3e-3
    for name in p_small:
        gap = (p_small[name] - p_big[name]).abs()
        assert gap.max().item() <= 2 * lr, name
        assert (gap > 1e-5).float().mean().item() < 1e-3, name


def test_gkd_pulls_the_student_toward_the_teacher(tiny_model_dir: Path, other_model_dir: Path) -> None:
    batch = _with_teacher(rl_batch(PROMPTS, RESPONSES, P, R, seed=6), other_model_dir)
    batch.set("advantages", torch.zeros_like(batch["advantages"]))  # the GKD term alone
    actor = _actor(tiny_model_dir, 64)
    divergences = [
        actor.update(batch, gkd={"loss": "forward_kl", "coef": 1.0})["distill/divergence"] for _ in range(6)
    ]
    assert divergences[-1] < 0.8 * divergences[0]
    with pytest.raises(UserError, match="unknown GKD loss"):
        actor.update(batch, gkd={"loss": "tvd"})
    # a student equal to its teacher gets no gradient from the term
    same = _with_teacher(rl_batch(PROMPTS, RESPONSES, P, R, seed=6), tiny_model_dir)
    same.set("advantages", torch.zeros_like(same["advantages"]))
    fresh = _actor(tiny_model_dir, 64)
    metrics = fresh.update(same, gkd={"loss": "reverse_kl", "coef": 1.0})
    assert metrics["distill/divergence"] < 1e-5 and metrics["actor/grad_norm"] < 1e-4


def test_actor_returns_sum_pi_squared_for_otb(tiny_model_dir: Path) -> None:
    batch = rl_batch(PROMPTS, RESPONSES, P, R, seed=8)
    out = _actor(tiny_model_dir, 16).compute_log_prob(batch, with_entropy=False, with_sum_pi_squared=True)
    full = _padded_log_softmax(tiny_model_dir, batch).exp().square().sum(-1)
    mask = batch["response_mask"].bool()
    torch.testing.assert_close(out["sum_pi_squared"][mask], full[mask], atol=1e-5, rtol=1e-5)
    assert torch.all(out["sum_pi_squared"][~mask] == 0)
