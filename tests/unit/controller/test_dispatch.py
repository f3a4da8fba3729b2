"""The dispatch rules without Ray: splitting arguments and merging results."""

from __future__ import annotations

import pytest
import torch

from rlkit.controller.dispatch import collect, dispatch, dispatch_mode, reduce_metrics, shard_payloads
from rlkit.data.batch import Batch


class Role:
    @dispatch("shard")
    def update(self, batch: Batch) -> Batch:
        return batch

    def plain(self) -> None:
        pass


def test_decorator_marks_and_refuses() -> None:
    assert dispatch_mode(Role, "update") == "shard"
    with pytest.raises(AttributeError, match="@dispatch"):
        dispatch_mode(Role, "plain")
    with pytest.raises(AttributeError, match="no method"):
        dispatch_mode(Role, "nope")
    with pytest.raises(ValueError, match="unknown dispatch mode"):
        dispatch("all_to_all")  # type: ignore[arg-type]


def test_shard_payloads_pad_and_split_every_batch_argument() -> None:
    a = Batch({"x": torch.arange(5)})
    b = Batch({"y": torch.arange(5) * 10})
    payloads, pad = shard_payloads((a, 7), {"other": b, "flag": True}, world=2)
    assert pad == 1 and len(payloads) == 2
    (a0, seven), kw0 = payloads[0]
    assert seven == 7 and kw0["flag"] is True
    assert a0["x"].tolist() == [0, 1, 2] and kw0["other"]["y"].tolist() == [0, 10, 20]
    (a1, _), kw1 = payloads[1]
    assert a1["x"].tolist() == [3, 4, 0] and kw1["other"]["y"].tolist() == [30, 40, 0]
    with pytest.raises(ValueError, match="at least one Batch"):
        shard_payloads((1,), {}, world=2)
    with pytest.raises(ValueError, match="differ in length"):
        shard_payloads((a, Batch({"x": torch.arange(3)})), {}, world=2)


def test_collect_per_mode() -> None:
    assert collect("broadcast", [1, 2]) == [1, 2]
    assert collect("rank0", [1, 2]) == 1
    parts = [
        Batch({"x": torch.arange(3)}, meta={"m": [1]}),
        Batch({"x": torch.arange(3, 6)}, meta={"m": [1]}),
    ]
    out = collect("shard", parts, pad=1)
    assert out["x"].tolist() == [0, 1, 2, 3, 4] and out.meta == {"m": [1]}
    assert collect("shard", [None, None]) is None
    assert collect("shard", ["a", "b"]) == ["a", "b"]


def test_reduce_metrics_rules() -> None:
    per_rank = [
        {"loss": 1.0, "t": torch.tensor(2.0), "mb": [1.0], "name": "a", "nested": {"x": 1}, "obj": "p"},
        {"loss": 3.0, "t": torch.tensor(4.0), "mb": [2.0, 3.0], "name": "a", "nested": {"x": 3}, "obj": "q"},
    ]
    assert reduce_metrics(per_rank) == {
        "loss": 2.0,
        "t": 3.0,
        "mb": [1.0, 2.0, 3.0],
        "name": "a",
        "nested": {"x": 2.0},
        "obj": ["p", "q"],
    }
    assert reduce_metrics([{"ids": [1, 2]}, {"ids": [1, 2]}], keep_equal=True) == {"ids": [1, 2]}
    assert reduce_metrics([{"only0": True}, {}]) == {"only0": True}
