"""The text a run prints around its steps: a first line at once, an opening and a closing summary.

All of it goes to stderr (like the other console output that is not a metrics line). The builders
return plain strings with rich markup, so tests read them without a terminal; :class:`RunSummary`
keeps what the closing summary needs while the steps go by.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.status import Status

from rlkit.config.schema import RlkitConfig

console = Console(stderr=True, soft_wrap=True, highlight=False)

REWARD_KEY = "reward/mean"
VAL_KEY = "val/reward/mean"


_announced: list[weakref.ref[RlkitConfig]] = []
_status: Status | None = None


def announce(cfg: RlkitConfig) -> None:
    """Show :func:`first_line` for ``cfg`` at once, as a spinner on a terminal, until :func:`settle`.

    Once per config (``run_rl`` calls it before the slow imports, ``RLTrainer.fit`` again). The
    spinner is transient: when the run is built (or fails) it gives way to the opening summary (or
    the one error line), so a user error stays one line. Off a terminal nothing is shown.
    """
    global _status
    _announced[:] = [r for r in _announced if r() is not None]
    if any(r() is cfg for r in _announced):
        return
    _announced.append(weakref.ref(cfg))
    if console.is_terminal and _status is None:
        _status = console.status(first_line(cfg))
        _status.start()


def settle() -> None:
    """End the spinner of :func:`announce` (before the opening summary or an error is printed)."""
    global _status
    if _status is not None:
        _status.stop()
        _status = None


def first_line(cfg: RlkitConfig) -> str:
    """Printed before anything slow: what is being started."""
    hw = cfg.hardware
    world = hw.nodes * hw.devices_per_node
    address = hw.ray_address or os.environ.get("RAY_ADDRESS")
    where = f"the Ray cluster at {address}" if address else "a local Ray"
    workers = f"{world} worker" + ("s" if world > 1 else "")
    return (
        f"[bold]rlkit train {cfg.recipe}[/]: loading data, starting {where} and {workers} on {hw.device} ..."
    )


def opening(cfg: RlkitConfig, run: Any, old_log_probs: str = "recompute") -> str:
    """After the run is built: model, engines, device, data sizes, the update, run folder, fresh
    start or resume.

    Args:
        cfg: The run's config.
        run: The :class:`~rlkit.trainer.setup.RunContext`.
        old_log_probs: Where the PPO ratio's denominators come from
            (:func:`rlkit.trainer.algo_inputs.old_log_probs_source`).
    """
    val = len(run.data.val) if run.data.val is not None else 0
    roles = _trained_roles(cfg, [r for r in run.group.roles if r not in ("rollout", "profiler")])
    if run.start_step:
        start = f"resuming at step {run.start_step} of {cfg.trainer.total_steps}"
    else:
        start = f"fresh start, {cfg.trainer.total_steps} steps"
    lines = [
        f"[bold]run[/]      {run.run_dir}  ({start})",
        f"[bold]model[/]    {cfg.model.path} ({cfg.model.dtype}); training {roles}, "
        f"rollout on the {cfg.rollout.engine} engine",
        f"[bold]device[/]   {run.group.device} x {run.world_size} ({_placement(cfg)}; trainer.mode={cfg.trainer.mode})",
        f"[bold]nodes[/]    {run.group.placement()}",
        f"[bold]data[/]     {len(run.data.train)} train / {val} val prompts; "
        f"{cfg.data.batch_size} prompts x {cfg.rollout.n} samples per step",
        f"[bold]update[/]   gradient checkpointing {'on' if cfg.model.gradient_checkpointing else 'off'}; "
        f"old log-probs: {_OLD_LOG_PROBS[old_log_probs]}",
    ]
    if cfg.algo.distill.teachers:
        teachers = ", ".join(str(t) for t in cfg.algo.distill.teachers)
        lines.append(
            f"[bold]teacher[/]  {teachers} (frozen; {cfg.algo.distill.loss}, top-{cfg.algo.distill.topk})"
        )
    return "\n".join(lines)


_OLD_LOG_PROBS = {
    "recompute": "a forward pass before the update",
    "rollout": "the rollout engine's",
    "update": "the update's own forward (one on-policy pass)",
}


@dataclass
class RunSummary:
    """What a run did, collected step by step for :meth:`closing`."""

    run_dir: Path
    start_step: int
    last_step: int = 0
    rewards: list[float] = field(default_factory=list)
    best_val: tuple[int, float] | None = None
    checkpoint: Path | None = None

    def observe(self, step: int, metrics: dict[str, Any]) -> None:
        """Record a finished step's metrics (step 0 is the validation before training)."""
        if step > 0:
            self.last_step = step
        if REWARD_KEY in metrics:
            self.rewards.append(float(metrics[REWARD_KEY]))
        if VAL_KEY in metrics:
            value = float(metrics[VAL_KEY])
            if self.best_val is None or value > self.best_val[1]:
                self.best_val = (step, value)

    def closing(self, *, stopped_by: str | None = None, resume: str | None = None) -> str:
        """The closing summary: steps, reward first -> last, best validation, checkpoint, next commands.

        Args:
            stopped_by: ``Ctrl-C``/``SIGTERM`` when a signal stopped the run early.
            resume: The command that continues the run (shown when it stopped early).
        """
        done = max(self.last_step - self.start_step, 0)
        head = f"stopped by {stopped_by} after step {self.last_step}" if stopped_by else "summary"
        lines = [f"[bold]{head}[/]: {done} step" + ("s" if done != 1 else "") + f" run in {self.run_dir}"]
        if self.rewards:
            lines.append(f"  reward   {self.rewards[0]:.4g} -> {self.rewards[-1]:.4g}")
        if self.best_val is not None:
            lines.append(f"  best val {self.best_val[1]:.4g} at step {self.best_val[0]}")
        if self.checkpoint is not None:
            lines.append(f"  checkpoint {self.checkpoint}")
        elif stopped_by:
            lines.append("  checkpoint none complete in this run")
        if resume:
            lines.append(f"  resume   {resume}")
        lines.append(f"  next     rlkit report {self.run_dir}   (curves and sample traces, one HTML page)")
        lines.append(f"           rlkit plot {self.run_dir}")
        if self.checkpoint is not None:
            # next to the run folder: merge never writes inside a run folder, even with --force
            hf = f"{str(self.run_dir).rstrip('/')}-hf-step_{self.last_step}"
            lines.append(f"           rlkit ckpt merge {self.checkpoint} --out {hf}")
            lines.append(f"           rlkit generate {hf} --prompts PROMPTS.parquet --out gen.jsonl")
        return "\n".join(lines)


def _trained_roles(cfg: RlkitConfig, roles: list[str]) -> str:
    """``actor, ref with FSDP2``, or per engine: ``actor with Megatron-core, ref with FSDP2``."""
    names = {"fsdp": "FSDP2", "megatron": "Megatron-core"}
    by_engine: dict[str, list[str]] = {}
    for role in roles:
        strategy = (
            getattr(getattr(cfg, role, None), "strategy", "fsdp")
            if role in ("actor", "critic", "ref")
            else "fsdp"
        )
        by_engine.setdefault(names.get(strategy, strategy), []).append(role)
    return ", ".join(f"{', '.join(rs)} with {engine}" for engine, rs in by_engine.items())


def _placement(cfg: RlkitConfig) -> str:
    """``colocated``, or ``split`` with the devices the rollout engine has of its own."""
    hw = cfg.hardware
    return (
        f"split: + {hw.rollout_devices} for the rollout engine" if hw.placement == "split" else hw.placement
    )
