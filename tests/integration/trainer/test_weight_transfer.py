"""The collective weight transport between two worker groups on CPU: real Ray workers, real gloo.

The trainer's own roles do the work (``ActorWorker.open_weight_transfer``/``send_weights`` and
``RolloutWorker.receive_weights``, driven by :class:`~rlkit.trainer.transfer.CollectiveTransfer`);
here they carry a small state dict instead of an FSDP model and a rollout engine, so that buckets
are many and small. The whole training loop over this transport is tested in
tests/e2e/test_trainer_modes.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from rlkit.controller import ResourcePool, WorkerError, WorkerGroup, dispatch, worker_context
from rlkit.controller.transfer import TransferGroup
from rlkit.rollout.weight_sync import (
    Receipt,
    VersionedWeights,
    WeightLedger,
    WordSumAccumulator,
    checksum_of,
    land_push,
)
from rlkit.trainer.lane import RolloutLane
from rlkit.trainer.transfer import CollectiveTransfer
from rlkit.trainer.workers import ActorWorker, RolloutWorker

pytestmark = pytest.mark.usefixtures("ray_session")

# Hugging Face names, so the engine checksums read some of them; 2 KiB buckets cut them into four.
SHAPES = {
    "model.embed_tokens.weight": (32, 16),
    "model.layers.0.input_layernorm.weight": (16,),
    "model.layers.0.mlp.down_proj.weight": (16, 48),
    "model.layers.1.mlp.down_proj.weight": (16, 48),
    "model.layers.1.input_layernorm.weight": (16,),
    "model.norm.weight": (16,),
}
BUCKET_MB = 2 / 1024


class StateDictPolicy:
    """The actor's side of a push: named tensors that change with each step (``named_full_tensors``)."""

    def __init__(self) -> None:
        gen, device = torch.Generator().manual_seed(0), worker_context().device
        self.state = {name: torch.randn(shape, generator=gen).to(device) for name, shape in SHAPES.items()}

    def named_full_tensors(self, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in self.state.items():
            yield name, tensor.to(dtype or tensor.dtype)


class StateDictEngine(VersionedWeights):
    """A rollout engine's weight contract over a dict: copies what it is given, checksums what it holds."""

    def __init__(self) -> None:
        self.ledger = WeightLedger()
        self.refused: str | None = None  # a name the engine refuses, as one that lacks the parameter
        self.weights = {
            name: torch.zeros(shape, device=worker_context().device) for name, shape in SHAPES.items()
        }

    def wake(self) -> None:
        pass

    def update_weights(self, named: Any) -> None:
        held = WordSumAccumulator()  # the receipt: every tensor read back after its copy, as native's
        for name, tensor in named:
            if name == self.refused:
                raise ValueError(f"update_weights: the model has no parameter {name!r}")
            self.weights[name].copy_(tensor)
            held.add(name, self.weights[name])
        land_push(self, {}, Receipt(held.result(), [], [], read_back=True))

    def weights_checksum(self) -> dict[str, int]:
        return {name: checksum_of(t) for name, t in self.weights.items()}


class Sender(ActorWorker):
    """The real actor worker's transfer methods over :class:`StateDictPolicy`."""

    def __init__(self) -> None:
        self.role = StateDictPolicy()  # type: ignore[assignment]
        self._sender = None

    @dispatch("rank0")
    def step(self, scale: float) -> dict[str, torch.Tensor]:
        """An 'update': every weight changes; the new weights."""
        for tensor in self.role.state.values():
            tensor.mul_(scale).add_(0.25)
        return {name: t.cpu() for name, t in self.role.state.items()}

    @dispatch("rank0")
    def corrupt_in_flight(self, bucket: int) -> None:
        """From now on bucket ``bucket`` leaves this process with one word changed after its checksum
        was taken: the corruption the receivers' checksums must catch."""
        broadcast = TransferGroup.broadcast

        def corrupting(group: TransferGroup, tensor: torch.Tensor, deadline: float, stage: str) -> None:
            if f"bucket {bucket} of " in stage:
                tensor = tensor.clone()
                tensor[8] ^= 1
            broadcast(group, tensor, deadline, stage)

        TransferGroup.broadcast = corrupting  # type: ignore[method-assign]


class Receiver(RolloutWorker):
    """The real rollout worker's receive over :class:`StateDictEngine`; ``stuck_at`` never returns."""

    def __init__(self, stuck_at: int | None = None) -> None:
        self.engine = StateDictEngine()  # type: ignore[assignment]
        self._receiver = None
        self._step_of: dict[int, int] = {}
        self.stuck_at = stuck_at

    @dispatch("broadcast")
    def receive_weights(self, step: int, plan: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        if step == self.stuck_at:  # e.g. a generation that never ends: this rank never joins
            time.sleep(120)
        return super().receive_weights(step, plan, timeout_s)

    @dispatch("broadcast")
    def refuse(self, name: str) -> None:
        self.engine.refused = name

    @dispatch("broadcast")
    def held(self) -> dict[str, torch.Tensor]:
        return {name: t.cpu() for name, t in self.engine.weights.items()}


def _pair(
    stuck_at: int | None = None, device: str = "cpu", receivers: int = 2
) -> tuple[WorkerGroup, WorkerGroup, CollectiveTransfer, RolloutLane]:
    """One sender and ``receivers`` receivers on CPU (gloo); one and one on two GPUs (NCCL)."""
    shares = [1, receivers] if device == "cpu" else [1, 1]
    trainer_pool, rollout_pool = ResourcePool(1, sum(shares), device).split(shares)
    receivers = WorkerGroup(rollout_pool, {"rollout": Receiver}, {"rollout": {"stuck_at": stuck_at}})
    senders = WorkerGroup(trainer_pool, {"actor": Sender})
    lane = RolloutLane(concurrent=True)
    return senders, receivers, CollectiveTransfer(senders, receivers, lane, "float32", BUCKET_MB), lane


@pytest.fixture(
    params=[
        "cpu",
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs two GPUs"),
            ],
        ),
    ]
)
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[WorkerGroup, WorkerGroup, CollectiveTransfer]]:
    senders, receivers, transfer, lane = _pair(device=request.param)
    yield senders, receivers, transfer
    lane.close()
    senders.shutdown()
    receivers.shutdown()


def test_pushes_arrive_bitwise_and_corrupted_or_refused_ones_are_caught(
    pair: tuple[WorkerGroup, WorkerGroup, CollectiveTransfer],
) -> None:
    senders, receivers, transfer = pair
    for step, scale in ((1, 0.5), (2, -1.5)):  # the second push reuses the group
        sent = senders.call("actor", "step", scale)
        transfer.push(step, timeout_s=60.0)
        for held in receivers.call("rollout", "held"):
            assert held.keys() == sent.keys()
            assert all(torch.equal(held[name], sent[name]) for name in sent)
    assert transfer.plan is not None
    buckets = len(transfer.plan["buckets"])
    assert buckets == 4
    senders.call("actor", "corrupt_in_flight", 2)
    with pytest.raises(WorkerError) as err:
        transfer.push(3, timeout_s=60.0)
    line = str(err.value)
    assert line.startswith(f"weight transfer after step 3, bucket 2 of {buckets}, rollout rank 0: ")
    assert "are not those sent" in line and "\n" not in line

    # a receiver that fails for a reason of its own leaves the sender waiting: its error is the
    # cause, reported at once (not after the sender's deadline)
    receivers.call("rollout", "refuse", "model.layers.0.mlp.down_proj.weight")
    started = time.monotonic()
    with pytest.raises(WorkerError) as err:
        transfer.push(4, timeout_s=60.0)
    assert time.monotonic() - started < 30.0
    line = str(err.value)
    assert line.startswith("rollout.receive_weights on rank ") and "\n" not in line
    assert "ValueError: update_weights: the model has no parameter 'model.layers.0.mlp.down_proj" in line


def test_a_receiver_that_never_joins_is_one_line_naming_the_stage_within_seconds() -> None:
    senders, receivers, transfer, lane = _pair(stuck_at=0, receivers=1)
    try:
        started = time.monotonic()
        with pytest.raises(WorkerError) as err:
            transfer.push(0, timeout_s=1.5)
        took = time.monotonic() - started
        line = str(err.value)
        assert line.startswith("actor.send_weights on rank 0: ") and "\n" not in line
        assert "weight transfer after step 0, joining the group of 2 ranks" in line
        assert (
            "rank 0: not every rank joined within 1.5 s" in line and "raise hardware.sync_timeout_s" in line
        )
        # the deadline, the other side's grace (3 s) and the stack dumps: seconds, not the call's margin
        assert took < 12.0, took
        stacks = err.value.stacks or ""
        assert "--- rollout workers ---" in stacks and "in receive_weights" in stacks
    finally:
        lane.close()
        senders.shutdown()
        receivers.shutdown()
