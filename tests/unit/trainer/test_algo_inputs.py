"""Config -> algorithm inputs: rollout correction (TIS / IcePop) weights and GDPO's reward components."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlkit.config.compose import to_dataclass
from rlkit.config.load import load_config
from rlkit.config.schema import RlkitConfig
from rlkit.data.batch import Batch
from rlkit.errors import UserError
from rlkit.trainer.algo_inputs import apply_rollout_correction, estimator_extras, old_log_probs_source


def _cfg(recipe: str = "grpo", *overrides: str) -> RlkitConfig:
    return to_dataclass(load_config(recipe, overrides=list(overrides)))


def _batch() -> Batch:
    train = torch.log(torch.tensor([[0.3, 0.9, 0.6, 0.8]]))
    rollout = torch.log(torch.tensor([[0.9, 0.9, 0.2, 0.8]]))
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    return Batch(tensors={"old_log_probs": train, "rollout_log_probs": rollout, "response_mask": mask})


def test_icepop_keys_set_zeroed_weights_and_tis_truncates() -> None:
    batch = _batch()
    keys = (
        "actor.old_log_probs=recompute",  # the correction compares recomputed and rollout log-probs
        "algo.rollout_correction.rollout_is=token",
        "algo.rollout_correction.rollout_is_threshold=2.5",
    )
    metrics = apply_rollout_correction(
        _cfg("grpo", *keys, "algo.rollout_correction.rollout_is_threshold_lower=0.5"), batch
    )
    # ratios 1/3 (below 0.5: 0), 1 (kept), 3 (above 2.5: 0); the padded token stays 0
    assert torch.allclose(batch["rollout_is_weights"], torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    assert metrics["rollout_corr/rollout_is_oob_ratio"] == pytest.approx(2 / 3)
    tis = _batch()
    apply_rollout_correction(_cfg("grpo", *keys), tis)
    assert torch.allclose(tis["rollout_is_weights"], torch.tensor([[1 / 3, 1.0, 2.5, 0.0]]))


def test_no_rollout_correction_by_default() -> None:
    batch = _batch()
    assert apply_rollout_correction(_cfg(), batch) == {}
    assert "rollout_is_weights" not in batch


def test_icepop_lower_above_upper_fails_at_compose_time() -> None:
    with pytest.raises(UserError, match="rollout_is_threshold_lower"):
        _cfg("grpo", "algo.rollout_correction.rollout_is_threshold_lower=3.0")


def test_gdpo_components_come_from_the_reward_columns() -> None:
    cfg = _cfg("gdpo", "algo.gdpo_reward_keys=[acc,fmt]", "algo.gdpo_reward_weights=[1.0,0.5]")
    batch = Batch(
        non_tensors={"acc": np.array([1, 0], dtype=object), "fmt": np.array([0.5, None], dtype=object)}
    )
    extras = estimator_extras(cfg, batch)
    assert extras["reward_weights"] == [1.0, 0.5]
    assert extras["reward_components"]["fmt"].tolist() == [0.5, 0.0]
    assert not math.isnan(float(extras["reward_components"]["acc"].sum()))
    with pytest.raises(UserError, match="returned no 'fmt'"):
        estimator_extras(cfg, Batch(non_tensors={"acc": np.array([1, 0], dtype=object)}))
    assert estimator_extras(_cfg("gdpo"), batch) == {}


def test_gdpo_weights_must_match_the_keys_at_compose_time() -> None:
    with pytest.raises(UserError, match="gdpo_reward_weights has 1 weights for 2"):
        _cfg("gdpo", "algo.gdpo_reward_keys=[acc,fmt]", "algo.gdpo_reward_weights=[1.0]")


@pytest.mark.parametrize(
    ("recipe", "key", "value"), [("dppo", "loss_mode", "dppo_tv"), ("gdpo", "loss_mode", "vanilla")]
)
def test_new_recipes_compose(recipe: str, key: str, value: str) -> None:
    assert getattr(_cfg(recipe).actor, key) == value
    assert (
        _cfg("grpo", "actor.loss_agg_mode=token-sum", "actor.loss_mode=dppo_kl").actor.loss_mode == "dppo_kl"
    )


def test_teachers_are_checked_before_ray(tmp_path) -> None:
    from dataclasses import replace

    from rlkit.models import CausalLM, init_weights, save_hf
    from rlkit.models.shapes import TINY
    from rlkit.trainer.preflight import preflight
    from rlkit.trainer.settings import teacher_names

    other = CausalLM(replace(TINY, vocab_size=300))  # another vocabulary than the built-in tokenizer's
    init_weights(other, seed=0)
    save_hf(other, tmp_path / "teacher")
    cfg = _cfg(
        "grpo", f"algo.distill.teachers=[{tmp_path / 'teacher'}]", f"trainer.out_dir={tmp_path / 'run'}"
    )
    with pytest.raises(UserError, match="vocab_size"):
        preflight(cfg)
    ok = _cfg("grpo", "algo.distill.teachers=[builtin:tiny]", f"trainer.out_dir={tmp_path / 'run'}")
    assert any(line.startswith("teachers: builtin:tiny") for line in preflight(ok))
    with pytest.raises(UserError, match="algo.distill.teachers: no such folder"):
        preflight(_cfg("grpo", "algo.distill.teachers=[/nonexistent/teacher]"))
    named = _cfg("grpo", 'algo.distill.teachers=["a=builtin:tiny","builtin:tiny-arith"]')
    assert teacher_names(named) == {"a": "builtin:tiny", "builtin:tiny-arith": "builtin:tiny-arith"}


def test_distillation_weighs_the_task_advantages_and_adds_the_reverse_kl() -> None:
    from rlkit.trainer.algo_inputs import apply_distillation

    mask = torch.tensor([[1.0, 1.0, 0.0]])
    batch = Batch(
        tensors={
            "response_mask": mask,
            "advantages": torch.tensor([[1.0, 1.0, 0.0]]),
            "old_log_probs": torch.log(torch.tensor([[0.5, 0.25, 1.0]])),
            "teacher_log_prob": torch.log(torch.tensor([[0.5, 0.5, 1.0]])),
        }
    )
    teachers = "algo.distill.teachers=[builtin:tiny]"
    metrics = apply_distillation(
        _cfg("distill", teachers, "algo.distill.task_coef=0.5", "algo.distill.coef=2"), batch
    )
    expected = torch.tensor([[0.5, 0.5 + 2 * math.log(2.0), 0.0]])
    assert torch.allclose(batch["advantages"], expected)
    assert metrics["distill/reverse_kl"] == pytest.approx(-math.log(2.0) / 2)
    gkd = Batch(tensors={k: v.clone() for k, v in batch.tensors.items()})
    apply_distillation(_cfg("distill", teachers, "algo.distill.loss=jsd", "algo.distill.task_coef=0"), gkd)
    assert torch.equal(gkd["advantages"], torch.zeros_like(mask))  # GKD: the divergence is an actor loss


ONE_PASS = ("actor.old_log_probs=auto", "data.batch_size=16", "actor.mini_batch_size=16")


@pytest.mark.parametrize(
    ("overrides", "source"),
    [
        (ONE_PASS, "update"),  # one on-policy pass: the update's forward gives the old log-probs
        (("actor.old_log_probs=auto", "data.batch_size=32", "actor.mini_batch_size=16"), "recompute"),
        ((*ONE_PASS, "actor.epochs=2"), "recompute"),
        ((*ONE_PASS, "trainer.mode=one_step_off"), "recompute"),
        ((*ONE_PASS, "algo.rollout_correction.rollout_is=token"), "recompute"),
        ((*ONE_PASS, "algo.advantage=optimal_token_baseline"), "recompute"),
        ((*ONE_PASS, "algo.use_kl_in_reward=true"), "recompute"),
        ((*ONE_PASS, "algo.distill.teachers=[builtin:tiny-arith]"), "recompute"),
        ((*ONE_PASS[1:], "actor.old_log_probs=recompute"), "recompute"),
        ((*ONE_PASS[1:], "actor.old_log_probs=rollout"), "rollout"),
    ],
)
def test_old_log_probs_auto_uses_the_update_only_on_one_on_policy_pass(
    overrides: tuple[str, ...], source: str
) -> None:
    assert old_log_probs_source(_cfg("grpo", *overrides)) == source


def test_a_recipe_whose_hooks_read_old_log_probs_gets_the_pass() -> None:
    cfg = _cfg("grpo", *ONE_PASS)
    assert old_log_probs_source(cfg, hooks_read_them=True) == "recompute"
