"""ActorRole / RefRole on one process: packed log-probs, micro-batch invariance, learning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlkit.models import load_causal_lm
from rlkit.training.actor import ActorRole
from rlkit.training.ref import RefRole

from ._builders import rl_batch

pytestmark = pytest.mark.usefixtures("process_group")

P, R = 6, 5
PROMPTS = [6, 3, 5, 1, 4, 6, 2, 5]
RESPONSES = [5, 2, 4, 5, 1, 3, 5, 2]


def _actor(path: Path, **kw: object) -> ActorRole:
    settings: dict[str, object] = {
        "lr": 1e-3,
        "total_steps": 10,
        "micro_batch_tokens": 64,
        "logprob_chunk_tokens": 7,
    }
    settings.update(kw)
    return ActorRole(str(path), **settings)  # type: ignore[arg-type]


def _reference_logprobs(path: Path, batch, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain padded forward + log_softmax: log-prob of response token t from logits at P + t - 1."""
    model = load_causal_lm(str(path))
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"]).float() / temperature
    logp_all = logits[:, P - 1 : -1].log_softmax(-1)
    logp = logp_all.gather(-1, batch["responses"][..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    valid = batch["attention_mask"][:, P:].bool()
    return logp * valid, entropy * valid


def test_packed_logprobs_equal_padded_reference(tiny_model_dir: Path) -> None:
    batch = rl_batch(PROMPTS, RESPONSES, P, R)
    actor = _actor(tiny_model_dir, micro_batch_tokens=20)
    out = actor.compute_log_prob(batch, temperature=0.7)
    ref_logp, ref_entropy = _reference_logprobs(tiny_model_dir, batch, 0.7)
    assert out["old_log_probs"].shape == (len(PROMPTS), R)
    torch.testing.assert_close(out["old_log_probs"], ref_logp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["entropy"], ref_entropy, atol=1e-5, rtol=1e-5)
    # The temperature defaults to batch.meta["temperature"].
    plain = actor.compute_log_prob(batch, with_entropy=False)
    assert set(plain.keys()) == {"old_log_probs"}
    torch.testing.assert_close(
        plain["old_log_probs"], _reference_logprobs(tiny_model_dir, batch, 1.0)[0], atol=1e-5, rtol=1e-5
    )


def test_ref_role_matches_the_initial_actor(tiny_model_dir: Path) -> None:
    batch = rl_batch(PROMPTS, RESPONSES, P, R, seed=3)
    ref = RefRole(str(tiny_model_dir), micro_batch_tokens=16)
    actor = _actor(tiny_model_dir)
    torch.testing.assert_close(
        ref.compute_ref_log_prob(batch)["ref_log_prob"], actor.compute_log_prob(batch)["old_log_probs"]
    )


def _params(actor: ActorRole) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in actor.named_full_tensors(torch.float32)}


@pytest.mark.parametrize("loss_agg_mode", ["token-mean", "seq-mean-token-sum-norm"])
def test_one_sample_per_micro_batch_equals_one_micro_batch(tiny_model_dir: Path, loss_agg_mode: str) -> None:
    batch = rl_batch(PROMPTS, RESPONSES, P, R, seed=1)
    batch.set("ref_log_prob", torch.zeros(len(batch), R) - 5.0)
    kwargs = {"loss_agg_mode": loss_agg_mode, "entropy_coeff": 0.01, "use_kl_loss": True, "kl_loss_coef": 0.1}
    results = []
    for budget in (P + R, 8 * (P + R)):  # 8 micro-batches of 1 sample vs 1 micro-batch of 8
        actor = _actor(tiny_model_dir, micro_batch_tokens=budget)
        metrics = actor.update(batch, **kwargs)
        results.append((metrics, _params(actor)))
    (m_small, p_small), (m_big, p_big) = results
    for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy", "actor/kl_loss", "actor/ppo_kl"):
        assert m_small[key] == pytest.approx(m_big[key], rel=1e-5, abs=1e-6), key
    for name in p_small:
        torch.testing.assert_close(p_small[name], p_big[name], atol=1e-5, rtol=1e-5)


def test_update_reports_the_entropy_the_skipped_pass_would(tiny_model_dir: Path) -> None:
    """``entropy_metric`` (bypass mode): the update's first forward sees the old pass's weights, so
    its token-mean entropy equals the old pass's; the two differ only in fp32 summation order."""
    batch = rl_batch(PROMPTS, RESPONSES, P, R, seed=4)
    actor = _actor(tiny_model_dir)
    old = actor.compute_log_prob(batch)
    mask = batch["response_mask"].float()
    expected = float((old["entropy"] * mask).sum() / mask.sum())
    metrics = actor.update(batch, entropy_metric=True)
    assert metrics["actor/entropy"] == pytest.approx(expected, rel=1e-5)
    assert "actor/entropy" not in actor.update(batch)


def test_update_on_policy_is_the_update_after_the_old_pass(tiny_model_dir: Path) -> None:
    """``update_on_policy`` returns the log-probs the old-log-prob pass would have given and takes
    the step that pass's denominators would have: the weights before the step are the same."""
    batch = rl_batch(PROMPTS, RESPONSES, P, R, seed=6)
    recomputed, on_policy = (
        _actor(tiny_model_dir, micro_batch_tokens=20),
        _actor(tiny_model_dir, micro_batch_tokens=20),
    )
    old = recomputed.compute_log_prob(batch, temperature=0.7)
    with_old = batch.union(old.select(["old_log_probs"]))
    expected = recomputed.update(with_old, temperature=0.7, entropy_metric=True)
    out = on_policy.update_on_policy(batch, temperature=0.7, entropy_metric=True)
    assert set(out.keys()) == {"old_log_probs"}
    torch.testing.assert_close(out["old_log_probs"], old["old_log_probs"])
    assert out.meta["actor/ppo_kl"] == 0.0 and out.meta["actor/pg_clipfrac"] == 0.0  # the ratio is 1
    for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy"):
        assert out.meta[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-7), key
    after, want = _params(on_policy), _params(recomputed)
    for name in want:
        torch.testing.assert_close(after[name], want[name])
    with pytest.raises(ValueError, match="already has old_log_probs"):
        on_policy.update_on_policy(with_old)


def test_update_moves_logprobs_along_the_advantage(tiny_model_dir: Path) -> None:
    batch = rl_batch(PROMPTS, RESPONSES, P, R, seed=2)
    actor = _actor(tiny_model_dir, lr=3e-3)
    before = actor.compute_log_prob(batch, with_entropy=False)["old_log_probs"]
    losses = []
    for _ in range(4):
        losses.append(actor.update(batch)["actor/pg_loss"])
    after = actor.compute_log_prob(batch, with_entropy=False)["old_log_probs"]
    mask = batch["response_mask"].bool()
    delta = (after - before)[mask]
    sign = batch["advantages"][mask].sign()
    assert (delta * sign > 0).float().mean() > 0.9
    # The on-policy loss is -mean(A) at ratio 1 in every step; the off-policy view shows progress:
    batch.set("old_log_probs", before)
    metrics = actor.update(batch, num_mini_batches=2, epochs=2, shuffle=True)
    assert metrics["actor/pg_loss"] < losses[0]
    assert metrics["actor/ppo_kl"] < 0  # log-probs moved away from the old ones on average
    assert metrics["actor/lr"] == pytest.approx(3e-3)
    assert actor.engine.step_count == 5 and actor.engine.optimizer_steps == 8


def test_update_validates_its_inputs(tiny_model_dir: Path) -> None:
    actor = _actor(tiny_model_dir)
    batch = rl_batch(PROMPTS, RESPONSES, P, R)
    with pytest.raises(ValueError, match="old_log_probs"):
        actor.update(batch, num_mini_batches=2)
    with pytest.raises(ValueError, match="ref_log_prob"):
        actor.update(batch, use_kl_loss=True)
    from rlkit.errors import UserError

    with pytest.raises(UserError, match="loss_mode"):
        actor.update(batch, loss_mode="nope")


def test_rollout_is_weights_scale_the_loss(tiny_model_dir: Path) -> None:
    batch = rl_batch(PROMPTS, RESPONSES, P, R, seed=4)
    plain = _actor(tiny_model_dir).update(batch)
    batch.set("rollout_is_weights", torch.full((len(batch), R), 0.5))
    weighted = _actor(tiny_model_dir).update(batch)
    assert weighted["actor/pg_loss"] == pytest.approx(0.5 * plain["actor/pg_loss"], rel=1e-5)
    assert weighted["actor/grad_norm"] == pytest.approx(0.5 * plain["actor/grad_norm"], rel=1e-4)
