"""Real signals at the driver while it waits on a worker: the first stops after the step, a second at once.

Also the pure pieces of the run's lifecycle: the resume command, failure reports, the summaries.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlkit.config.schema import RlkitConfig
from rlkit.controller import ResourcePool, WorkerError, WorkerGroup, dispatch
from rlkit.trainer.lifecycle import RunInterrupted, StopSignals, deadlines, record_failure, resume_command
from rlkit.trainer.summary import RunSummary, announce, first_line, opening, settle


class Sleeper:
    @dispatch("broadcast")
    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds


@pytest.fixture(scope="module")
def group(ray_session: None) -> Iterator[WorkerGroup]:
    g = WorkerGroup(ResourcePool(1, 1, "cpu"), {"s": Sleeper}, call_timeout_s=120)
    yield g
    g.shutdown()


def _signal_later(*delays_and_signals: tuple[float, int]) -> threading.Thread:
    def send() -> None:
        for delay, sig in delays_and_signals:
            time.sleep(delay)
            os.kill(os.getpid(), sig)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_first_signal_during_a_call_only_asks_to_stop(group: WorkerGroup) -> None:
    with StopSignals() as stop:
        stop.stepping = True
        _signal_later((0.3, signal.SIGTERM))
        assert group.role("s").sleep(1.5) == [1.5]  # the call finishes: the step completes
        assert stop.requested and stop.exit_code == 143 and stop.name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is not stop._handle  # handlers restored


def test_second_ctrl_c_interrupts_the_wait_at_once(ray_session: None) -> None:
    with WorkerGroup(ResourcePool(1, 1, "cpu"), {"s": Sleeper}, call_timeout_s=120) as g:
        start = time.monotonic()
        # outside the handlers' context: Ray raises a plain KeyboardInterrupt in native code,
        # which leaving the context turns back into the RunInterrupted the handler raised
        with pytest.raises(
            RunInterrupted, match="stopped at once by a second signal: nothing more was saved"
        ) as info:
            with StopSignals() as stop:
                stop.stepping = True
                _signal_later((0.3, signal.SIGINT), (0.3, signal.SIGINT))
                g.role("s").sleep(60)
        assert time.monotonic() - start < 5  # not the 60 s of the call
        assert info.value.exit_code == 130


def test_a_signal_outside_a_step_stops_at_once() -> None:
    with StopSignals() as stop:
        with pytest.raises(RunInterrupted) as info:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        assert info.value.exit_code == 143 and stop.requested


def test_signals_while_closing_do_not_cut_the_cleanup_short() -> None:
    with StopSignals() as stop:
        stop.closing = True
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the handler ran (it only printed)
        assert stop.signum is None


def test_resume_command_keeps_the_overrides_and_replaces_resume() -> None:
    argv = ["/venv/bin/rlkit", "--debug", "train", "grpo", "--profile", "cpu", "a.b=1", "trainer.resume=auto"]
    got = resume_command("grpo", Path("/r/checkpoints/step_2"), argv)
    assert got == "rlkit train grpo --profile cpu a.b=1 trainer.resume=/r/checkpoints/step_2"
    spaced = resume_command("grpo", Path("/r s/step_2"), ["rlkit", "train", "x.yaml", "k=a b"])
    assert spaced == "rlkit train x.yaml 'k=a b' 'trainer.resume=/r s/step_2'"
    assert resume_command("ppo", Path("/c"), ["pytest", "-q"]) == "rlkit train ppo trainer.resume=/c"


def test_record_failure_writes_error_log_and_stacks(tmp_path: Path) -> None:
    err = WorkerError(
        "stage actor.update overran", role="actor", method="update", stacks="rank 0: no answer", rank=0
    )
    err.remote_traceback = None
    record_failure(tmp_path, err, 3)
    assert err.stacks_file == str(tmp_path / "stacks-3-actor.update.txt")
    assert (tmp_path / "stacks-3-actor.update.txt").read_text() == "rank 0: no answer\n"
    log = (tmp_path / "error.log").read_text()
    assert log.startswith("stage actor.update overran\n") and "rank 0: no answer" in log
    record_failure(tmp_path / "missing", ValueError("x"), 1)  # never raises


def test_deadlines_follow_the_device() -> None:
    cfg = RlkitConfig()
    cpu, gpu = deadlines(cfg, "cpu"), deadlines(cfg, "cuda")
    assert (cpu.stage_s, cpu.start_s, cpu.sync_s) == (300.0, 300.0, 120.0)
    assert (gpu.stage_s, gpu.start_s, gpu.sync_s) == (1800.0, 1800.0, 600.0)
    cfg.hardware.stage_timeout_s = 7.0
    assert deadlines(cfg, "cuda").stage_s == 7.0 and cpu.connect_s == 10.0


def test_summaries_say_what_happened(tmp_path: Path) -> None:
    cfg = RlkitConfig()
    assert first_line(cfg).endswith("starting a local Ray and 1 worker on auto ...")
    announce(cfg)  # off a terminal: shows nothing, and settle() is then a no-op
    settle()
    run = SimpleNamespace(
        run_dir=tmp_path,
        start_step=2,
        world_size=1,
        data=SimpleNamespace(train=[0] * 64, val=None),
        group=SimpleNamespace(
            roles={"actor": 0, "rollout": 0, "ref": 0},
            device="cpu",
            placement=lambda: "node 5f3a9c (127.0.0.1): rank 0",
        ),
    )
    text = opening(cfg, run)
    assert "node 5f3a9c (127.0.0.1): rank 0" in text
    assert f"{tmp_path}  (resuming at step 2 of 60)" in text and "64 train / 0 val prompts" in text
    assert "training actor, ref with FSDP2" in text
    summary = RunSummary(tmp_path, start_step=2)
    summary.observe(0, {"val/reward/mean": 0.25})
    summary.observe(3, {"reward/mean": 0.1})
    summary.observe(4, {"reward/mean": 0.5, "val/reward/mean": 0.75})
    summary.checkpoint = tmp_path / "checkpoints" / "step_4"
    done = summary.closing()
    assert done.startswith("[bold]summary[/]: 2 steps run in")
    assert "reward   0.1 -> 0.5" in done and "best val 0.75 at step 4" in done
    assert f"rlkit ckpt merge {summary.checkpoint} --out {tmp_path}-hf-step_4" in done  # outside the run
    from rlkit.ckpt.merge import _check_out

    _check_out(Path(f"{tmp_path}-hf-step_4"), summary.checkpoint, force=False)  # merge accepts it
    stopped = summary.closing(stopped_by="Ctrl-C", resume="rlkit train grpo trainer.resume=X")
    assert (
        "stopped by Ctrl-C after step 4" in stopped
        and "resume   rlkit train grpo trainer.resume=X" in stopped
    )
