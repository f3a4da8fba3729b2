"""Deadlines of scoring: per sample in parallel, per step, at import; hung workers are killed.

One two-worker pool serves the per-sample and per-step tests (its workers are replaced as they
are killed); the import tests each build their own manager, since they are about start-up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlkit.errors import UserError
from rlkit.rewards.custom import load_custom_reward
from rlkit.rewards.managers import NaiveRewardManager, build_reward_manager
from rlkit.rewards.pool import OK, TIMEOUT, ScoringPool

SLOW = """
import os, time

def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    if data_source == "hang":
        time.sleep(3600)
    if data_source == "hang_pid":
        with open(ground_truth, "w") as out:
            out.write(str(os.getpid()))
        time.sleep(3600)
    return os.getpid()
"""

TRAINER = """
import sys
from rlkit.rewards.custom import load_custom_reward
from rlkit.rewards.pool import ScoringPool

if __name__ == "__main__":
    pool = ScoringPool(load_custom_reward(sys.argv[1]), num_workers=1, timeout_s=3600.0)
    call = {"data_source": "hang_pid", "solution_str": "", "ground_truth": sys.argv[2], "extra_info": None}
    pool.map([call])
"""


def call(kind: str) -> dict[str, object]:
    return {"data_source": kind, "solution_str": "", "ground_truth": "", "extra_info": None}


def gone(pid: int, within_s: float = 5.0) -> bool:
    """The process ``pid`` has exited and been reaped (its forkserver reaps it)."""
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie still answers kill(0): look at its state
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().split(")")[-1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def slow_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slow") / "slow.py"
    path.write_text(SLOW)
    return path


@pytest.fixture(scope="module")
def pool(slow_file: Path) -> Iterator[ScoringPool]:
    with ScoringPool(load_custom_reward(slow_file), num_workers=2, timeout_s=1.0, chunk_size=1) as pool:
        pool.wait_ready()
        yield pool


def test_hung_samples_time_out_in_parallel_and_say_where(pool: ScoringPool) -> None:
    calls = [call("hang"), call("hang"), call("pid"), call("hang"), call("hang"), call("pid")]
    start = time.monotonic()
    result = pool.map(calls, timeout_s=1.5)
    elapsed = time.monotonic() - start
    assert result.status == [TIMEOUT, TIMEOUT, OK, TIMEOUT, TIMEOUT, OK] and result.restarts == 4
    # Four 1.5 s timeouts on two workers: two rounds, 3 s plus a stack dump (~0.1 s) and a restart
    # each, where one after another they would take at least 6 s.
    assert elapsed < 5.5, elapsed
    assert "ran past 1.5 s (at slow.py:6 `time.sleep(3600)`)" in result.details[0]


def test_step_budget_caps_a_call_and_kills_the_hung_workers(pool: ScoringPool) -> None:
    pids = set(pool.map([call("pid")] * 4).values)
    pool.step_timeout_s, pool.timeout_s = 1.0, 30.0
    try:
        start = time.monotonic()
        result = pool.map([call("hang")] * 6 + [call("pid")])
        elapsed = time.monotonic() - start
    finally:
        pool.step_timeout_s, pool.timeout_s = None, 1.0
    assert elapsed < 8.0, elapsed  # the budget (1 s) plus the SIGTERM grace, not 6 x 30 s
    assert result.kinds == ["step_timeout"] * 7 and result.timeouts == 7
    assert "was not scored within 1 s" in result.details[0]
    assert all(gone(pid) for pid in pids)
    assert pool.map([call("pid")]).status == [OK]  # the replacements serve


def test_the_first_timeout_of_a_step_is_printed_at_once(
    slow_file: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with build_reward_manager(custom_path=str(slow_file), num_workers=1, timeout_s=0.5) as manager:
        assert isinstance(manager, NaiveRewardManager)
        out = manager(["a", "b"], ["", ""], ["hang", "pid"], [None, None], [1, 1], 8)
    assert out.metrics["reward/timeouts"] == 1.0 and out.metrics["reward/errors_timeout"] == 1.0
    err = capfd.readouterr().err
    assert "reward: a sample ran past 0.5 s (at slow.py:6" in err and "stops after 600 s" in err
    assert "reward: 1 of 2 samples failed (1 timed out); first: sample 0 (data_source 'hang') ran past" in err


HANGS_AT_IMPORT = """
import os, time
open(os.path.join(os.path.dirname(__file__), f"{os.getpid()}.pid"), "w").close()
time.sleep(3600)

def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    return 1.0
"""


def test_a_file_that_hangs_at_import_is_one_line_and_its_workers_are_killed(tmp_path: Path) -> None:
    path = tmp_path / "hangs.py"
    path.write_text(HANGS_AT_IMPORT)
    start = time.monotonic()
    with pytest.raises(UserError) as info:
        build_reward_manager(custom_path=str(path), num_workers=2, import_timeout_s=1.0)
    assert time.monotonic() - start < 20  # 1 s and the stack dump, not the file's 3600 s
    message = str(info.value)
    assert message.startswith(f"reward.custom.path {path} did not finish importing within 1 s ")
    assert "(it hangs at import: hangs.py:4 `time.sleep(3600)`)" in message and "\n" not in message
    pids = [int(p.stem) for p in tmp_path.glob("*.pid")]
    assert pids and all(gone(pid) for pid in pids)


@pytest.mark.parametrize(
    ("source", "match"),
    [
        (
            "raise ValueError('no config\\nfound here')\n",
            r"failed to import: ValueError: no config found here \(bad.py:1\)",
        ),
        ("import os\nos._exit(3)\n", r"exited while importing it \(exit code 3\)"),
    ],
)
def test_a_file_that_fails_at_import_is_one_line(tmp_path: Path, source: str, match: str) -> None:
    path = tmp_path / "bad.py"
    path.write_text(
        source + "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n  return 1\n"
    )
    with pytest.raises(UserError, match=match) as info:
        build_reward_manager(custom_path=str(path), num_workers=1)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"reward.custom.path {path}")


def test_workers_do_not_outlive_a_killed_trainer(slow_file: Path, tmp_path: Path) -> None:
    script, pid_file = tmp_path / "trainer.py", tmp_path / "worker.pid"
    script.write_text(TRAINER)
    trainer = subprocess.Popen([sys.executable, str(script), str(slow_file), str(pid_file)])
    try:
        end = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < end:
            assert trainer.poll() is None, "the trainer script exited"
            time.sleep(0.05)
        worker = int(pid_file.read_text())  # it is hung in time.sleep(3600) now
        trainer.kill()  # SIGKILL: no finalizers, no atexit
        trainer.wait()
        assert gone(worker, within_s=10)
    finally:
        trainer.kill()
        trainer.wait()
