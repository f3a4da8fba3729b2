"""``rlkit train`` as a user runs it, stopped by signals and failures (real processes, real Ray).

Each test starts one ``rlkit train grpo`` on the tiny embedded model and acts after its first step
line: Ctrl-C (saves, prints a resume command that works, 130), SIGTERM on the resumed run (143),
kill -9 of the driver (nothing of the run is left), a frozen worker (the stage deadline: a stacks
file, ``error.log`` and one line). Every test checks that no process of the run is left behind.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

RLKIT = str(Path(sys.executable).with_name("rlkit"))
TINY = [
    "data.batch_size=4",
    "rollout.n=2",
    "data.synthetic_size=64",
    "actor.mini_batch_size=4",
    "trainer.val_every=0",
    "trainer.val_before_train=false",
]
# How long the processes of a finished or killed run may linger (the reaper polls every 0.5 s).
_LINGER_S = 8.0


class Run:
    """One ``rlkit train`` process in its own session, read line by line."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        self.seen: set[psutil.Process] = set()

    def wait_for_step(self, timeout_s: float = 240.0) -> str:
        """Read stdout up to the first step line; returns it."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        for line in self.proc.stdout:
            if line.startswith("step "):
                self.note_processes()
                return line
            assert time.monotonic() < deadline, "no step line in time"
        pytest.fail(f"the run ended before its first step: {self.proc.communicate()[1]}")

    def note_processes(self) -> None:
        """Remember the run's processes: the driver's descendants and whatever shares its session."""
        driver = psutil.Process(self.proc.pid)
        self.seen |= set(driver.children(recursive=True))
        sid = psutil.Process(self.proc.pid).pid  # start_new_session: the session id is the driver's pid
        for proc in psutil.process_iter():
            try:
                if proc.pid != self.proc.pid and _session(proc) == sid:
                    self.seen.add(proc)
            except psutil.Error:
                pass

    def finish(self, timeout_s: float = 120.0) -> tuple[int, str]:
        """Wait for the exit; returns the exit code and stderr."""
        _, err = self.proc.communicate(timeout=timeout_s)
        return self.proc.returncode, err

    def leftovers(self) -> list[str]:
        """The run's processes still alive ``_LINGER_S`` after the exit (killed here, then reported)."""
        _, alive = psutil.wait_procs(list(self.seen), timeout=_LINGER_S)
        names = []
        for proc in alive:
            try:
                names.append(f"{proc.pid} {proc.name()}")
                proc.kill()
            except psutil.Error:
                pass
        return names


def _session(proc: psutil.Process) -> int:
    return int(Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[4])


def _train(out_dir: Path, *extra: str, steps: int = 6) -> list[str]:
    return [
        RLKIT,
        "train",
        "grpo",
        f"trainer.total_steps={steps}",
        *TINY,
        f"trainer.out_dir={out_dir}",
        *extra,
    ]


def _resume_command(err: str) -> list[str]:
    line = next(line for line in err.splitlines() if line.strip().startswith("resume "))
    args = shlex.split(line.strip()[len("resume ") :])
    assert args[:2] == ["rlkit", "train"]
    return [RLKIT, *args[1:]]


def test_ctrl_c_saves_and_resumes_then_sigterm_does_the_same(tmp_path: Path) -> None:
    run = Run(_train(tmp_path / "run"))
    run.wait_for_step()
    run.proc.send_signal(signal.SIGINT)
    code, err = run.finish()
    assert code == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted by Ctrl-C after step ") and "checkpoint saved to" in last
    saved = sorted((tmp_path / "run" / "checkpoints").glob("step_*"))
    assert saved and not any(p.name.endswith(".tmp") for p in saved)
    command = _resume_command(err)
    assert command[-1] == f"trainer.resume={saved[-1]}"
    assert run.leftovers() == []

    resumed = Run(command)
    resumed.wait_for_step()
    resumed.proc.send_signal(signal.SIGTERM)
    code, err = resumed.finish()
    assert code == 143, err
    assert f"resuming at step {saved[-1].name.split('_')[1]}" in err
    assert err.strip().splitlines()[-1].startswith("interrupted by SIGTERM after step ")
    assert "Traceback" not in err and "SIGABRT" not in err
    assert len(sorted((tmp_path / "run" / "checkpoints").glob("step_*"))) > len(saved)
    assert resumed.leftovers() == []


def test_kill_9_of_the_driver_leaves_no_process(tmp_path: Path) -> None:
    run = Run(_train(tmp_path / "run", steps=50))
    run.wait_for_step()
    time.sleep(1.0)  # the reaper has seen every process by now
    run.note_processes()
    assert any("WorkerHost" in " ".join(p.cmdline()) for p in run.seen if p.is_running())
    run.proc.kill()
    run.finish()
    assert run.leftovers() == []


def test_frozen_worker_stops_at_the_stage_deadline(tmp_path: Path) -> None:
    run = Run(_train(tmp_path / "run", "hardware.stage_timeout_s=5", "hardware.sync_timeout_s=5", steps=50))
    run.wait_for_step()
    workers = [p for p in run.seen if "WorkerHost" in " ".join(p.cmdline())]
    assert len(workers) == 1
    workers[0].suspend()  # SIGSTOP
    start = time.monotonic()
    code, err = run.finish()
    took = time.monotonic() - start
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "overran its 5 s deadline on rank 0; rank 0 did not answer" in lines[0]
    assert "raise hardware." in lines[0] and "full traceback: " in lines[0]
    stacks = list((tmp_path / "run").glob("stacks-*-*.txt"))
    assert len(stacks) == 1 and f"worker stacks: {stacks[0]}" in lines[0]
    assert "rank 0: no answer" in stacks[0].read_text()
    assert "overran" in (tmp_path / "run" / "error.log").read_text()
    assert took < 60
    assert run.leftovers() == []
