"""What crosses back from a scoring process: plain data only, never anything the trainer unpickles.

The reward file below tries every way back it has: objects whose ``__reduce__`` writes a marker
file (they would run it in the trainer if it unpickled them), and a pickle written straight into
the worker's own connection. One two-worker pool serves the module.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rlkit.rewards import plain
from rlkit.rewards.custom import load_custom_reward
from rlkit.rewards.pool import ERROR, OK, ScoringPool

ATTACKS = """
import gc, json, multiprocessing.connection, pathlib, sys

class Evil:
    def __init__(self, marker):
        self.marker = marker
    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))

class EvilFloat(float):
    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(MARKER),))

class Plain:
    pass

MARKER = ""

def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    global MARKER
    MARKER = ground_truth
    if data_source == "evil":
        return Evil(ground_truth)
    if data_source == "evil_in_dict":
        return {"score": 1.0, "info": Evil(ground_truth)}
    if data_source == "evil_float":
        return EvilFloat(0.5)
    if data_source == "own_class":
        return Plain()
    if data_source == "huge":
        return "x" * 100_000
    if data_source == "deep":
        return {"score": 1.0, "a": [[[[[1]]]]]}
    if data_source == "numpy":
        import numpy
        return {"score": numpy.float32(0.25), "ids": numpy.arange(3), "flag": numpy.bool_(True)}
    if data_source == "inject":
        for obj in gc.get_objects():
            if isinstance(obj, multiprocessing.connection.Connection) and obj.readable and obj.writable:
                obj.send(Evil(ground_truth))  # a pickle where the trainer expects a reply
        return 1.0
    if data_source == "forge":  # answer the chunk first with made-up scores, as code in here could
        frame = sys._getframe()
        while "seq" not in frame.f_locals:
            frame = frame.f_back
        seq, size = frame.f_locals["seq"], len(frame.f_locals["calls"])
        for obj in gc.get_objects():
            if isinstance(obj, multiprocessing.connection.Connection) and obj.readable and obj.writable:
                reply = {"kind": "results", "seq": seq, "results": [["ok", 100.0]] * size}
                obj.send_bytes(json.dumps(reply).encode())
        return 1.0
    return {"score": 1.0, "echo": solution_str, "tags": ("a", None, True)}
"""


def call(kind: str, marker: Path | str = "", response: str = "") -> dict[str, object]:
    return {"data_source": kind, "solution_str": response, "ground_truth": str(marker), "extra_info": None}


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScoringPool]:
    path = tmp_path_factory.mktemp("attacks") / "attacks.py"
    path.write_text(ATTACKS)
    with ScoringPool(load_custom_reward(path), num_workers=2, timeout_s=5.0, chunk_size=2) as pool:
        yield pool


def test_malicious_reduce_never_runs_in_the_trainer(pool: ScoringPool, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    result = pool.map([call("evil", marker), call("evil_in_dict", marker), call("echo", marker, "a")])
    assert result.status == [ERROR, ERROR, OK] and result.kinds == ["not_plain", "not_plain", None]
    assert "object of type Evil" in result.details[0] and "object of type Evil" in result.details[1]
    assert result.values[2] == {"score": 1.0, "echo": "a", "tags": ["a", None, True]}
    assert not marker.exists()


def test_subclass_of_a_number_crosses_as_the_number(pool: ScoringPool, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    result = pool.map([call("evil_float", marker)])
    assert result.status == [OK] and result.values == [0.5] and type(result.values[0]) is float
    assert not marker.exists()


def test_pickle_written_into_the_connection_is_malformed_not_unpickled(
    pool: ScoringPool, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    result = pool.map([call("inject", marker), call("echo", marker, "b")])
    # Both samples of the chunk are lost with the worker's reply; the worker is replaced.
    assert result.kinds == ["malformed", "malformed"] and result.restarts == 1
    assert not marker.exists()
    assert pool.map([call("echo", marker, "c")]).values[0]["echo"] == "c"  # the pool still serves


def test_a_forged_reply_never_reaches_other_samples(pool: ScoringPool) -> None:
    # The forged reply takes the place of its own chunk's (code in the process decides its own
    # scores anyway); the real reply that follows is dropped as stale, not given to the next chunk.
    result = pool.map([call("forge"), call("echo", "", "a"), call("echo", "", "b"), call("echo", "", "c")])
    assert result.values[:2] == [100.0, 100.0] and result.restarts == 0
    assert [v["echo"] for v in result.values[2:]] == ["b", "c"]
    again = pool.map([call("echo", "", str(i)) for i in range(8)])
    assert [v["echo"] for v in again.values] == [str(i) for i in range(8)] and again.restarts == 0


def test_an_object_of_a_class_from_the_reward_file_is_an_error(pool: ScoringPool) -> None:
    result = pool.map([call("own_class"), call("echo")])
    assert result.status == [ERROR, OK] and result.kinds[0] == "not_plain"
    assert "object of type Plain (not plain data" in result.details[0]


def test_sizes_and_depths_are_bounded(pool: ScoringPool) -> None:
    result = pool.map([call("huge"), call("deep")])
    assert result.kinds == ["too_large", "not_plain"] and "nested deeper" in result.details[1]


def test_numpy_values_become_plain(pool: ScoringPool) -> None:
    assert pool.map([call("numpy")]).values == [{"score": 0.25, "ids": [0, 1, 2], "flag": True}]


def test_check_plain_refuses_what_json_cannot_be() -> None:
    assert plain.check_plain({"a": [1, 2.5, None, "x", True]}) == {"a": [1, 2.5, None, "x", True]}
    with pytest.raises(plain.NotPlainError):
        plain.check_plain([[[[[1]]]]])
    with pytest.raises(plain.NotPlainError):
        plain.parse_message(b"\x80\x04K\x01.")  # a pickle
    with pytest.raises(plain.NotPlainError):
        plain.parse_message(b"[" * 100_000)
    with pytest.raises(plain.NotPlainError):
        plain.to_plain({1: 2})


def test_docstring_examples() -> None:
    import doctest

    from rlkit.rewards import outcomes

    for module in (plain, outcomes):
        failed, attempted = doctest.testmod(module)
        assert attempted > 0 and failed == 0
