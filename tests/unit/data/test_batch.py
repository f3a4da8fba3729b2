from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

from rlkit.data.batch import Batch


def make(n: int = 5) -> Batch:
    return Batch(
        {"ids": torch.arange(n * 3).reshape(n, 3), "score": torch.arange(n, dtype=torch.float32)},
        {"uid": [f"u{i}" for i in range(n)], "gt": [[i, i + 1] for i in range(n)]},
        {"temperature": 1.0},
    )


def assert_same(a: Batch, b: Batch) -> None:
    assert a.keys() == b.keys()
    for k in a.tensors:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    for k in a.non_tensors:
        assert a[k].dtype == object and list(a[k]) == list(b[k]), k
    assert a.meta == b.meta


def test_construct_and_access() -> None:
    b = make()
    assert len(b) == 5 and len(Batch()) == 0
    assert b.keys() == ["ids", "score", "uid", "gt"]
    assert "uid" in b and "nope" not in b
    assert b["gt"].dtype == object and b["gt"].shape == (5,) and b["gt"][2] == [2, 3]
    with pytest.raises(KeyError, match="nope"):
        b["nope"]
    with pytest.raises(TypeError):
        b[0]  # type: ignore[index]
    assert "rows=5" in repr(b)


def test_length_mismatch_names_columns_and_lengths() -> None:
    with pytest.raises(ValueError, match=r"'b' has 4 rows but column 'a' has 5"):
        Batch({"a": torch.zeros(5), "b": torch.zeros(4)})
    with pytest.raises(ValueError, match=r"'u' has 2 rows but column 'a' has 5"):
        Batch({"a": torch.zeros(5)}, {"u": ["x", "y"]})
    b = make()
    with pytest.raises(ValueError, match=r"'new' has 3 rows but column 'ids' has 5"):
        b.set("new", torch.zeros(3))
    with pytest.raises(ValueError, match="row dimension"):
        Batch({"a": torch.tensor(1.0)})


def test_select_pop_set() -> None:
    b = make()
    s = b.select(["ids", "uid"])
    assert s.keys() == ["ids", "uid"] and s.meta == b.meta and s.meta is not b.meta
    with pytest.raises(KeyError, match="missing"):
        b.select(["missing"])
    popped = b.pop(["score", "gt"])
    assert popped.keys() == ["score", "gt"] and b.keys() == ["ids", "uid"]
    b.set("score", torch.ones(5))
    b.set("tag", ["a"] * 5)
    assert b["tag"].dtype == object and b.keys() == ["ids", "score", "uid", "tag"]
    b.set("tag", torch.zeros(5))  # a column changes kind in place
    assert "tag" in b.tensors and "tag" not in b.non_tensors


def test_index_variants() -> None:
    b = make()
    assert_same(b.index([1, 3]), b.index(torch.tensor([1, 3])))
    assert_same(b.index([1, 3]), b.index(torch.tensor([False, True, False, True, False])))
    assert_same(b.index([1, 3]), b.index(np.array([1, 3])))
    assert_same(b.index(slice(1, 4)), b.index([1, 2, 3]))
    assert list(b.index(2)["uid"]) == ["u2"]
    assert len(b.index([])) == 0
    with pytest.raises(ValueError, match="bool mask"):
        b.index(torch.tensor([True, False]))
    with pytest.raises(TypeError):
        b.index(torch.tensor([0.5]))


def test_split_and_chunk() -> None:
    b = make(10)
    assert [len(p) for p in b.split(4)] == [4, 4, 2]
    parts = b.chunk(4)
    assert [len(p) for p in parts] == [3, 3, 2, 2]
    assert_same(Batch.concat(parts), b)
    assert [len(p) for p in make(6).chunk(4)] == [2, 2, 1, 1]  # torch.chunk would give 3 parts
    assert [len(p) for p in make(2).chunk(3)] == [1, 1, 0]


def test_concat_checks_columns_and_meta() -> None:
    a, b = make(2), make(3)
    c = Batch.concat([a, b])
    assert len(c) == 5 and list(c["uid"]) == ["u0", "u1", "u0", "u1", "u2"]
    with pytest.raises(ValueError, match="columns"):
        Batch.concat([a, a.select(["ids"])])
    b.meta["temperature"] = 0.5
    with pytest.raises(ValueError, match="temperature"):
        Batch.concat([a, b])
    with pytest.raises(ValueError):
        Batch.concat([])


def test_union() -> None:
    b = make()
    extra = Batch({"adv": torch.ones(5)}, {"uid": list(b["uid"])}, {"step": 3})
    u = b.union(extra)
    assert u.keys() == ["ids", "score", "adv", "uid", "gt"] and u.meta == {"temperature": 1.0, "step": 3}
    with pytest.raises(ValueError, match="'uid' differs"):
        b.union(Batch({}, {"uid": ["z"] * 5}))
    with pytest.raises(ValueError, match="rows"):
        b.union(Batch({"adv": torch.ones(4)}))
    with pytest.raises(ValueError, match="meta 'temperature'"):
        b.union(Batch({"adv": torch.ones(5)}, meta={"temperature": 2.0}))


def test_repeat() -> None:
    b = make(2)
    inter = b.repeat(2)
    assert list(inter["uid"]) == ["u0", "u0", "u1", "u1"]
    assert torch.equal(inter["score"], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    tiled = b.repeat(2, interleave=False)
    assert list(tiled["uid"]) == ["u0", "u1", "u0", "u1"]
    assert torch.equal(tiled["ids"], torch.cat([b["ids"], b["ids"]]))


def test_pad_and_unpad() -> None:
    b = make(5)
    padded, pad = b.pad_to_divisor(4)
    assert pad == 3 and len(padded) == 8
    assert list(padded["uid"][5:]) == ["u0", "u1", "u2"]
    assert_same(padded.unpad(pad), b)
    same, zero = b.pad_to_divisor(5)
    assert zero == 0 and len(same) == 5
    tiny, pad = make(1).pad_to_divisor(4)  # more padding than rows: cycles through the rows
    assert pad == 3 and list(tiny["uid"]) == ["u0"] * 4
    with pytest.raises(ValueError):
        b.unpad(6)


def test_reorder() -> None:
    b = make(4)
    r = b.reorder([2, 0, 3, 1])
    assert list(r["uid"]) == ["u2", "u0", "u3", "u1"]
    assert torch.equal(r["score"], torch.tensor([2.0, 0.0, 3.0, 1.0]))
    with pytest.raises(ValueError, match="permutation"):
        b.reorder([0, 0, 1, 2])


def test_to_and_copies_do_not_alias() -> None:
    b = make()
    moved = b.to("cpu")
    assert_same(moved, b)
    deep = copy.deepcopy(b)
    deep["score"][0] = 100.0
    deep["gt"][0].append(9)
    assert b["score"][0] == 0.0 and b["gt"][0] == [0, 1]


def test_pickle_round_trip_all_dtypes() -> None:
    b = Batch(
        {
            "bf16": torch.randn(4, 3).to(torch.bfloat16),
            "bool": torch.tensor([True, False, True, True]),
            "i64": torch.arange(4),
            "strided": torch.arange(12).reshape(3, 4).t(),  # non-contiguous
        },
        {"text": ["a", "b", "c", "d"]},
        {"k": [1, 2]},
    )
    out = pickle.loads(pickle.dumps(b))
    assert_same(out, b)
    out["i64"][0] = 7  # received tensors are writable and own their memory
    assert b["i64"][0] == 0


def test_tensors_travel_as_whole_buffers() -> None:
    # Out-of-band pickle buffers are what Ray's object store copies without pickling: one per
    # tensor column, however many rows.
    b = Batch(
        {"a": torch.zeros(10_000, 16), "b": torch.ones(10_000, dtype=torch.int64)}, {"u": ["x"] * 10_000}
    )
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(b, protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == 2
    assert sum(memoryview(buf).nbytes for buf in buffers) == 10_000 * 16 * 4 + 10_000 * 8
    assert_same(pickle.loads(data, buffers=buffers), b)
