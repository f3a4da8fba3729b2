"""The run banner names each trained role's engine."""

from __future__ import annotations

from rlkit.config.load import load_config
from rlkit.trainer.summary import _trained_roles


def test_the_banner_names_the_engine_of_each_trained_role() -> None:
    assert _trained_roles(load_config("grpo"), ["actor", "ref"]) == "actor, ref with FSDP2"
    ppo = load_config("ppo", overrides=["actor.strategy=megatron"])
    assert (
        _trained_roles(ppo, ["actor", "critic", "ref"]) == "actor with Megatron-core, critic, ref with FSDP2"
    )
