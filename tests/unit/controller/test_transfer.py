"""The collective transport's buckets in one process: layout, packing, checksums, the transport's pick."""

from __future__ import annotations

import pytest
import torch

from rlkit.config.compose import to_dataclass
from rlkit.config.load import load_config
from rlkit.controller.transfer import WeightTransferError, bucket_checksum, pack, plan_buckets, unpack
from rlkit.errors import UserError
from rlkit.trainer.transfer import resolve_weight_transfer


def _tensors() -> list[tuple[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [
        ("a", torch.randn(3, 5, generator=gen).to(torch.bfloat16)),  # 30 bytes: padded to 32
        ("b", torch.randn(7, generator=gen)),
        ("c", torch.arange(6, dtype=torch.int64).view(2, 3)),
        ("d", torch.randn(40, generator=gen)),  # 160 bytes: closes the second bucket past 64
    ]


def test_buckets_close_at_the_size_and_roundtrip_bitwise() -> None:
    tensors = _tensors()
    buckets = plan_buckets(tensors, 64)
    assert [[s.name for s in b.slots] for b in buckets] == [["a", "b"], ["c", "d"]]
    assert all(b.nbytes % 16 == 0 and s.offset % 16 == 0 for b in buckets for s in b.slots)
    stream = iter(tensors)
    for bucket in buckets:
        flat = pack(bucket, (next(stream) for _ in bucket.slots), torch.device("cpu"))
        for name, got in unpack(bucket, flat):
            want = dict(tensors)[name]
            assert got.dtype == want.dtype and torch.equal(got, want)


def test_a_bucket_checksum_is_exact_and_sees_one_flipped_bit() -> None:
    bucket = plan_buckets(_tensors(), 1e9)[0]
    flat = pack(bucket, _tensors(), torch.device("cpu"))
    total = bucket_checksum(flat)
    assert total == int(flat.view(torch.int32).to(torch.int64).sum())  # the same in any thread count
    flat[5] ^= 4
    assert bucket_checksum(flat) != total


def test_a_tensor_that_does_not_fit_the_layout_is_refused() -> None:
    bucket = plan_buckets(_tensors(), 1e9)[0]
    changed = [("a", torch.zeros(3, 6, dtype=torch.bfloat16)), *_tensors()[1:]]
    with pytest.raises(WeightTransferError, match=r"the actor yields \('a', \(3, 6\), 'bfloat16'\)"):
        pack(bucket, changed, torch.device("cpu"))


@pytest.mark.parametrize(
    ("overrides", "device", "picked"),
    [
        (["hardware.placement=split", "hardware.devices_per_node=2"], "cpu", "collective"),
        ([], "cpu", "object_store"),  # colocated: moved in-process, the key does not apply
        (["hardware.placement=split", "hardware.devices_per_node=2"], "npu", "object_store"),
        (
            [
                "hardware.placement=split",
                "hardware.devices_per_node=2",
                "hardware.weight_transfer=object_store",
            ],
            "cpu",
            "object_store",
        ),
        (  # partial rollouts: the push must reach a running generation
            [
                "hardware.placement=split",
                "hardware.devices_per_node=2",
                "trainer.mode=async",
                "trainer.partial_rollouts=continue",
            ],
            "cpu",
            "object_store",
        ),
    ],
)
def test_auto_picks_the_collective_where_split_placement_has_a_backend(
    overrides: list[str], device: str, picked: str
) -> None:
    cfg = to_dataclass(load_config("grpo", overrides=overrides))
    assert resolve_weight_transfer(cfg, device) == picked == cfg.hardware.weight_transfer


def test_the_collective_on_a_device_without_a_backend_is_one_line() -> None:
    cfg = to_dataclass(
        load_config(
            "grpo",
            overrides=[
                "hardware.placement=split",
                "hardware.devices_per_node=2",
                "hardware.weight_transfer=collective",
            ],
        )
    )
    with pytest.raises(UserError, match="has no backend on npu") as err:
        resolve_weight_transfer(cfg, "npu")
    assert "\n" not in err.value.message and "object_store" in (err.value.hint or "")
