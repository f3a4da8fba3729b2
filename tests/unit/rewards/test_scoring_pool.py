"""ScoringPool: order, errors, timeouts, the memory limit, crashes and start-up failures.

One pool serves the module (a custom file whose behaviour is chosen by ``data_source``), so the
workers start once.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlkit.errors import UserError
from rlkit.rewards.custom import load_custom_reward
from rlkit.rewards.pool import ERROR, OK, TIMEOUT, ScoringPool
from rlkit.rewards.scorers import default_compute_score

BEHAVIOURS = """
import os, signal, threading, time

def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    if data_source == "sleep":
        time.sleep(float(ground_truth))
    elif data_source == "raise":
        raise RuntimeError("boom " + solution_str)
    elif data_source == "alloc":
        return float(len(bytearray(int(ground_truth) * 2**20)))
    elif data_source == "exit":
        os._exit(3)
    elif data_source == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif data_source == "unpicklable":
        return threading.Lock()
    elif data_source == "pid":
        return os.getpid()
    return {"score": float(solution_str == ground_truth), "echo": solution_str}
"""


def call(kind: str, response: str = "", truth: str = "") -> dict[str, object]:
    return {"data_source": kind, "solution_str": response, "ground_truth": truth, "extra_info": None}


@pytest.fixture(scope="module")
def behaviours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("custom") / "behaviours.py"
    path.write_text(BEHAVIOURS)
    return path


@pytest.fixture(scope="module")
def pool(behaviours: Path) -> Iterator[ScoringPool]:
    with ScoringPool(
        load_custom_reward(behaviours), num_workers=2, timeout_s=0.5, memory_limit_mb=256
    ) as pool:
        yield pool


def test_results_in_input_order(pool: ScoringPool) -> None:
    calls = [call("echo", str(i), str(i % 3)) for i in range(1000)]
    result = pool.map(calls)
    assert result.status == [OK] * 1000 and result.errors == result.timeouts == result.restarts == 0
    assert [v["echo"] for v in result.values] == [str(i) for i in range(1000)]
    assert [v["score"] for v in result.values] == [float(i < 3 and i == i % 3) for i in range(1000)]


def test_workers_live_across_calls(pool: ScoringPool) -> None:
    first = set(pool.map([call("pid")] * 64).values)
    second = set(pool.map([call("pid")] * 64).values)
    assert first == second and len(first) <= 2


def test_exceptions_score_nothing_and_are_counted(pool: ScoringPool) -> None:
    calls = [call("echo", "a", "a"), call("raise", "x"), call("echo", "b", "b"), call("raise", "y")]
    result = pool.map(calls)
    assert result.status == [OK, ERROR, OK, ERROR] and result.errors == 2 and result.restarts == 0
    assert result.values[1] is None and result.values[2] == {"score": 1.0, "echo": "b"}
    assert any("RuntimeError: boom" in m for m in result.messages)


def test_timeout_kills_and_replaces_the_worker(pool: ScoringPool) -> None:
    calls = [call("echo", str(i), str(i)) for i in range(12)]
    calls[5] = call("sleep", truth="30")
    start = time.monotonic()
    result = pool.map(calls, timeout_s=0.5)
    assert time.monotonic() - start < 5
    assert (
        result.status[5] == TIMEOUT and result.timeouts == 1 and result.errors == 0 and result.restarts == 1
    )
    assert all(result.values[i]["score"] == 1.0 for i in range(12) if i != 5)
    assert pool.map([call("echo", "z", "z")]).status == [OK]  # the replacement serves


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is enforced on Linux")
def test_memory_limit_turns_a_big_allocation_into_an_error(pool: ScoringPool) -> None:
    result = pool.map([call("alloc", truth="1024"), call("alloc", truth="16")])
    assert result.status == [ERROR, OK] and result.values[1] == 16 * 2**20
    assert any("MemoryError" in m for m in result.messages)


def test_crashing_worker_is_an_error_not_a_crash(pool: ScoringPool) -> None:
    calls = [
        call("echo", "a", "a"),
        call("exit"),
        call("echo", "b", "b"),
        call("segv"),
        call("echo", "c", "c"),
    ]
    result = pool.map(calls)
    assert result.status == [OK, ERROR, OK, ERROR, OK] and result.restarts == 2
    assert [result.values[i]["echo"] for i in (0, 2, 4)] == ["a", "b", "c"]


def test_unpicklable_result_is_an_error(pool: ScoringPool) -> None:
    result = pool.map([call("unpicklable"), call("echo", "a", "a")])
    assert result.status == [ERROR, OK] and result.kinds == ["not_plain", None]
    assert "object of type lock (not plain data" in result.messages[0]


def test_empty_map(pool: ScoringPool) -> None:
    assert pool.map([]).values == []


def test_import_failure_in_the_worker_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.py"
    path.write_text("import no_such_module_anywhere\ndef compute_score(**kwargs):\n    return 1.0\n")
    fn = load_custom_reward(path)  # parses fine: the import fails only in the worker
    pool = ScoringPool(fn, num_workers=1, timeout_s=1.0)
    with pytest.raises(UserError, match="no_such_module_anywhere"):
        pool.map([call("x")])
    with pytest.raises(RuntimeError, match="after close"):
        pool.map([call("x")])


def test_custom_code_never_runs_in_process(behaviours: Path) -> None:
    with pytest.raises(ValueError, match="worker processes"):
        ScoringPool(load_custom_reward(behaviours), num_workers=0)


def test_in_process_mode_counts_exceptions() -> None:
    with ScoringPool(default_compute_score, num_workers=0) as pool:
        result = pool.map(
            [
                {"data_source": "arith", "solution_str": "4", "ground_truth": "4"},
                {"data_source": "arith", "solution_str": "4", "ground_truth": "four"},
            ]
        )
    assert result.status == [OK, ERROR] and result.values[0]["score"] == 1.0
    assert "ValueError" in result.messages[0]


def test_spawn_start_method() -> None:
    with ScoringPool(default_compute_score, num_workers=1, start_method="spawn", chunk_size=3) as pool:
        calls = [
            {"data_source": "openai/gsm8k", "solution_str": f"#### {i}", "ground_truth": "4"}
            for i in range(8)
        ]
        assert pool.map(calls).values == [float(i == 4) for i in range(8)]


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        ScoringPool(default_compute_score, num_workers=-1)
    with pytest.raises(ValueError):
        ScoringPool(default_compute_score, num_workers=0, timeout_s=0)


def test_docstring_examples() -> None:
    import doctest

    from rlkit.rewards import pool as pool_module

    failed, attempted = doctest.testmod(pool_module)
    assert attempted > 0 and failed == 0
