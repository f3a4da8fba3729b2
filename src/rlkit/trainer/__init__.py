"""The RL trainer core (one step loop for every RL recipe) and its entry point."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from rlkit.config.compose import to_dataclass


def run_rl(cfg: DictConfig) -> Path:
    """Run a composed RL config; returns the run directory.

    The checks that need no Ray (:func:`rlkit.trainer.preflight.preflight`) run first, so a bad data
    file, an unknown data source or a missing logger fails before Ray starts.
    """
    from rlkit.trainer.summary import announce, settle

    config = to_dataclass(cfg)
    announce(config)  # before the slow imports (torch, Ray): the user sees at once that it started
    try:
        from rlkit.trainer.core import RLTrainer
        from rlkit.trainer.hooks import load_hooks
        from rlkit.trainer.preflight import preflight

        preflight(config, "train")
        trainer = RLTrainer(config, load_hooks(config.hooks))
    except BaseException:
        settle()
        raise
    return trainer.fit()
