"""``trainer.mode=sync|one_step_off|async`` end to end on real Ray workers (docs/async.md).

``async`` with ``trainer.max_staleness=0`` is ``sync``; the staleness bound holds; ``one_step_off``
with the rollout engine on a worker of its own (``hardware.placement=split``: one rollout and one
trainer worker) resumes exactly; both weight transports of split placement (Ray's object store, a
gloo broadcast) train the same run bitwise; ``async`` resumes exactly too
(its queue of draws is in the checkpoint, so no prompt is lost or trained twice); a killed rollout
worker stops the run with one line; a multi-turn run works in both off-policy modes; partial
rollouts (``trainer.partial_rollouts=continue``) keep the staleness bound.
"""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from rlkit.ckpt.merge import load_role_weights
from rlkit.config.compose import to_dataclass
from rlkit.config.load import load_config
from rlkit.controller import WorkerError
from rlkit.data.batch import Batch
from rlkit.trainer.core import RLTrainer
from rlkit.trainer.hooks import Hooks

from .test_multi_turn_grpo import _check_agent_metrics, _multi_turn
from .test_resume import TINY, assert_same_metrics, metrics, train

NO_VAL = "trainer.val_every=0"
SPLIT = ["hardware.placement=split", "hardware.devices_per_node=2", "hardware.rollout_devices=1"]
ASYNC_2 = ["trainer.mode=async", "trainer.max_staleness=2", "trainer.rollout_queue_size=2"]


def _without_async(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("async/")}


def test_async_with_staleness_0_is_sync(ray_session: None, tmp_path: Path) -> None:
    train("grpo", tmp_path / "sync", "trainer.total_steps=3", NO_VAL)
    train(
        "grpo",
        tmp_path / "async",
        "trainer.total_steps=3",
        NO_VAL,
        "trainer.mode=async",
        "trainer.max_staleness=0",
    )
    expected, got = metrics(tmp_path / "sync"), metrics(tmp_path / "async")
    for step in (1, 2, 3):
        assert got[step]["async/staleness_max"] == 0.0 and got[step]["async/queued"] == 0.0
        assert_same_metrics(expected[step], _without_async(got[step]), 0.0)


def test_split_placement_trains_the_same_over_both_weight_transports(
    ray_session: None, tmp_path: Path
) -> None:
    runs = {}
    for transport in ("object_store", "collective"):
        out = tmp_path / transport
        train("grpo", out, "trainer.total_steps=2", NO_VAL, *SPLIT, f"hardware.weight_transfer={transport}")
        assert f"weight_transfer: {transport}" in (out / "config.yaml").read_text()
        runs[transport] = out
    expected, got = metrics(runs["object_store"]), metrics(runs["collective"])
    for step in (1, 2):
        assert_same_metrics(expected[step], got[step], 0.0)
    a, b = (load_role_weights(runs[t] / "checkpoints" / "step_2", "actor").tensors for t in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.slow
def test_one_step_off_on_split_pools_resumes_exactly(ray_session: None, tmp_path: Path) -> None:
    mode = ["trainer.mode=one_step_off", *SPLIT, NO_VAL]
    train("grpo", tmp_path / "straight", "trainer.total_steps=4", *mode)
    train("grpo", tmp_path / "resumed", "trainer.total_steps=2", *mode)
    queued = tmp_path / "resumed" / "checkpoints" / "step_2" / "rollout_queue"
    assert sorted(p.name for p in queued.iterdir())[:2] == [
        "draw_0_prompts.json",
        "draw_0_prompts.safetensors",
    ]
    train("grpo", tmp_path / "resumed", "trainer.total_steps=4", *mode)
    expected, got = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    for step in (1, 2, 3, 4):
        assert_same_metrics(expected[step], got[step], 1e-6)
        assert got[step]["async/staleness_max"] == (0.0 if step == 1 else 1.0)


@pytest.mark.slow
def test_async_keeps_the_bound_and_resumes_without_losing_or_repeating_a_prompt(
    ray_session: None, tmp_path: Path
) -> None:
    train("grpo", tmp_path / "straight", "trainer.total_steps=4", *ASYNC_2, NO_VAL)
    train("grpo", tmp_path / "resumed", "trainer.total_steps=2", *ASYNC_2, NO_VAL)
    train("grpo", tmp_path / "resumed", "trainer.total_steps=4", *ASYNC_2, NO_VAL)
    expected, got = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    assert [got[s]["async/staleness_max"] for s in (1, 2, 3, 4)] == [0.0, 1.0, 2.0, 2.0]
    for step in (1, 2, 3, 4):  # the same prompts in the same order: the same rewards and losses
        assert_same_metrics(expected[step], got[step], 1e-6)
        assert got[step]["async/regenerated"] == 0.0


class _KillRollout(Hooks):
    """Kills the rollout worker (a process this test's run started) after step 1's rollouts."""

    def after_generate(self, run: Any, prompts: Batch, batch: Batch) -> Batch:
        if run.rollout_group is not None and not getattr(self, "done", False):
            self.done = True
            os.kill(run.rollout_group.pids[0], signal.SIGKILL)
        return batch


@pytest.mark.slow
def test_a_killed_rollout_worker_stops_the_run_with_one_line(ray_session: None, tmp_path: Path) -> None:
    overrides = [*TINY, "trainer.mode=one_step_off", *SPLIT, NO_VAL, f"trainer.out_dir={tmp_path}"]
    cfg = to_dataclass(load_config("grpo", overrides=[*overrides, "trainer.total_steps=3"]))
    with pytest.raises(WorkerError) as err:
        RLTrainer(cfg, hooks=_KillRollout()).fit()
    # the first call that reaches the dead worker names itself (gauges, or the generation ahead)
    line = str(err.value)
    assert line.startswith("rollout.") and "on rank 0: the worker process died" in line
    assert "\n" not in line
    assert (tmp_path / "error.log").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("mode", [["trainer.mode=one_step_off", *SPLIT], ASYNC_2])
def test_multi_turn_runs_off_policy(ray_session: None, tmp_path: Path, mode: list[str]) -> None:
    train("grpo", tmp_path, "trainer.total_steps=3", NO_VAL, *_multi_turn(tmp_path, "native"), *mode)
    got = metrics(tmp_path)
    assert got[3]["async/staleness_max"] >= 1.0
    _check_agent_metrics(got[3])


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["object_store", "collective"])
def test_a_weight_transfer_past_its_deadline_is_one_line_naming_the_stage(
    ray_session: None, tmp_path: Path, transport: str
) -> None:
    """A deadline no transfer meets stands in for one that hangs: the stage and the key to raise."""
    overrides = [*TINY, "trainer.mode=one_step_off", *SPLIT, NO_VAL, f"trainer.out_dir={tmp_path}"]
    overrides += ["hardware.sync_timeout_s=0.001", f"hardware.weight_transfer={transport}"]
    cfg = to_dataclass(load_config("grpo", overrides=overrides))
    with pytest.raises(WorkerError) as err:
        RLTrainer(cfg).fit()
    line = str(err.value)
    assert "raise hardware.sync_timeout_s" in line and "\n" not in line
    if transport == "object_store":  # the group's deadline on the call
        assert "weights overran its 0.001 s deadline" in line
        assert line.startswith(("stage actor.export_weights", "stage rollout.load_weights"))
    else:  # the transfer's own, naming the collective that missed it; every worker's stacks are saved
        assert line.startswith(("actor.send_weights on rank 0: ", "rollout.receive_weights on rank 0: "))
        assert "weight transfer after step 0, joining the group of 2 ranks" in line
        assert err.value.stacks_file and "--- rollout workers ---" in Path(err.value.stacks_file).read_text()


# A random model seldom stops early: its long responses are still generating when the update beside
# them ends (measured on the 2-core CPU box: 3 of 4 steps trained partial rollouts).
LONG_RESPONSES = ["model.path=builtin:tiny", "data.max_response_length=96"]


@pytest.mark.slow
@pytest.mark.parametrize("model", [[], LONG_RESPONSES], ids=["embedded_default", "long_responses"])
def test_partial_rollouts_continue_on_split_pools_keep_the_bound(
    ray_session: None, tmp_path: Path, model: list[str]
) -> None:
    """``trainer.partial_rollouts=continue``: ``async`` on split pools trains, every trained token at
    most ``trainer.max_staleness`` versions behind (the bound is checked on each trajectory's
    oldest token), and ``async/partial_share`` reports the trajectories that spanned versions: with
    long responses some do (the embedded default's answers are a few tokens: they rarely do)."""
    continued = [*ASYNC_2, *SPLIT, NO_VAL, "trainer.partial_rollouts=continue", *model]
    train("grpo", tmp_path, "trainer.total_steps=5", *continued)
    got = metrics(tmp_path)
    assert sorted(got) == [1, 2, 3, 4, 5]
    for step, row in got.items():
        assert 0.0 <= row["async/staleness_mean"] <= row["async/staleness_max"] <= min(2.0, step - 1)
        assert 0.0 <= row["async/partial_share"] <= 1.0
        assert math.isfinite(row["actor/pg_loss"])
    assert got[1]["async/staleness_max"] == 0.0 and got[1]["async/partial_share"] == 0.0
    if model:
        assert max(row["async/partial_share"] for row in got.values()) > 0.0
