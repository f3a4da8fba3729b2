"""The rollout feed of ``trainer.mode``: depth and bound per mode, staleness, the queue in a checkpoint."""

from __future__ import annotations

import random
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch

from rlkit.config.compose import to_dataclass
from rlkit.config.load import load_config
from rlkit.data.batch import Batch
from rlkit.trainer.feed import RolloutFeed, feed_depth, partial_metrics, staleness_bound, staleness_metrics
from rlkit.trainer.lane import RolloutLane


class Prompts:
    """Numbered prompts in data order; generation writes the prompt number into every token."""

    def __init__(self) -> None:
        self.drawn = 0
        self.generated: list[tuple[int, int, int]] = []  # (first prompt, step, round) per generation

    def draw(self) -> Batch:
        self.drawn += 2
        return Batch(tensors={"prompts": torch.tensor([[self.drawn - 2], [self.drawn - 1]])})

    def generate(self, prompts: Batch, step: int, round_: int) -> Future[Batch]:
        self.generated.append((int(prompts["prompts"][0, 0]), step, round_))
        responses = prompts["prompts"].repeat(1, 3)
        batch = Batch(tensors={"responses": responses, "response_mask": torch.ones_like(responses)})
        return RolloutLane(concurrent=False).submit(lambda: batch)


def _feed(depth: int, bound: int) -> tuple[RolloutFeed, Prompts]:
    source = Prompts()
    return RolloutFeed(depth, bound, source.draw, source.generate), source


@pytest.mark.parametrize(
    ("overrides", "depth", "bound"),
    [
        ([], 0, 0),
        (["trainer.mode=one_step_off"], 1, 1),
        (["trainer.mode=async", "trainer.max_staleness=3", "trainer.rollout_queue_size=2"], 2, 3),
        (["trainer.mode=async", "trainer.max_staleness=0"], 0, 0),
    ],
)
def test_each_mode_is_a_depth_and_a_bound(overrides: list[str], depth: int, bound: int) -> None:
    cfg = to_dataclass(load_config("grpo", overrides=overrides))
    assert (feed_depth(cfg), staleness_bound(cfg)) == (depth, bound)


def test_sync_generates_each_draw_when_the_step_asks() -> None:
    feed, source = _feed(0, 0)
    for step in (1, 2, 3):
        draw = feed.take(step, 1, step - 1)
        feed.fill(step + 1, step - 1)
        assert draw.version == step - 1 and not feed.queue
    assert source.generated == [(0, 1, 1), (2, 2, 1), (4, 3, 1)]


def test_one_step_off_trains_on_rollouts_one_version_behind() -> None:
    feed, source = _feed(1, 1)
    lags = []
    for step in (1, 2, 3, 4):
        draw = feed.take(step, 1, step - 1)
        feed.fill(step + 1, step - 1)  # before step's update: the weights of version step - 1
        lags.append(staleness_metrics(draw.rollouts, step - 1)["async/staleness_max"])
    assert lags == [0.0, 1.0, 1.0, 1.0]
    # step t+1's draw is made right after step t's, seeded for step t+1, in data order
    assert source.generated == [(0, 1, 1), (2, 2, 1), (4, 3, 1), (6, 4, 1), (8, 5, 1)]


def test_staleness_never_exceeds_the_bound_and_no_prompt_is_skipped_or_repeated() -> None:
    """Steps that take several draws (a batch filter's extra rounds) only make draws fresher."""
    rng = random.Random(0)
    for depth, bound in ((1, 1), (2, 2), (2, 4), (3, 3)):
        feed, _ = _feed(depth, bound)
        trained: list[int] = []
        for step in range(1, 30):
            for round_ in range(1, rng.choice((1, 1, 2, 3)) + 1):
                draw = feed.take(step, round_, step - 1)
                assert step - 1 - draw.version <= bound
                trained += draw.prompts["prompts"][:, 0].tolist()
            feed.fill(step + 1, step - 1)
        assert trained == list(range(len(trained)))
        assert feed.metrics()["async/regenerated"] == 0.0


def test_the_queue_survives_a_checkpoint(tmp_path: Path) -> None:
    feed, _ = _feed(2, 2)
    feed.take(1, 1, 0)
    feed.fill(2, 0)
    feed.save(tmp_path)
    state = feed.state_dict()
    assert state == [{"version": 0, "step": 2, "round": 1}, {"version": 0, "step": 3, "round": 1}]
    resumed, source = _feed(2, 2)
    resumed.load(tmp_path, state)
    assert not source.generated  # nothing generated again
    for expected, got in zip(feed.queue, resumed.queue, strict=True):
        assert torch.equal(expected.rollouts["responses"], got.rollouts["responses"])
        assert torch.equal(expected.rollouts["rollout_versions"], got.rollouts["rollout_versions"])
        assert torch.equal(expected.prompts["prompts"], got.prompts["prompts"])


def test_a_queued_draw_beyond_a_lowered_bound_is_generated_again_from_its_prompts(tmp_path: Path) -> None:
    feed, _ = _feed(2, 2)
    feed.take(1, 1, 0)
    feed.fill(2, 0)  # draws for steps 2 and 3, both at version 0
    feed.save(tmp_path)
    lowered, source = _feed(1, 1)  # resumed with max_staleness 1
    lowered.load(tmp_path, feed.state_dict())
    assert lowered.take(2, 1, 1).version == 0  # one version behind: kept
    again = lowered.take(3, 1, 2)  # two behind: its prompts, generated at version 2
    assert again.version == 2 and source.generated == [(4, 3, 1)]
    assert staleness_metrics(again.rollouts, 2)["async/staleness_max"] == 0.0
    assert lowered.metrics()["async/regenerated"] == 1.0


def _partial_rollouts(versions: list[list[int]], lengths: list[int]) -> Batch:
    """A draw's samples whose tokens carry the versions an engine reported (partial rollouts)."""
    rows = torch.tensor(versions)
    mask = (torch.arange(rows.shape[1])[None] < torch.tensor(lengths)[:, None]).float()
    return Batch(tensors={"responses": rows, "response_mask": mask, "rollout_versions": rows})


def test_a_partial_rollouts_staleness_is_its_oldest_token() -> None:
    """A draw queued at version 0 whose tokens were sampled at versions 1 and 2 is checked on 1."""
    batch = _partial_rollouts([[1, 1, 2, 2], [2, 2, 2, 0]], [4, 3])  # the 0 is padding
    pending: Future[Batch] = Future()
    pending.set_result(batch)
    feed = RolloutFeed(2, 2, lambda: Batch(tensors={"prompts": torch.zeros(2, 1)}), lambda *_: pending)
    feed.fill(2, 0)
    assert feed.queue[0].version == 0 and feed.queue[0].oldest_version == 1
    assert feed.take(2, 1, 3).rollouts is batch  # 3 - 1 = 2 versions behind: within the bound
    assert torch.equal(feed.queue[0].rollouts["rollout_versions"], batch["rollout_versions"])  # not restamped
    assert staleness_metrics(batch, 3)["async/staleness_max"] == 2.0
    assert partial_metrics(batch) == {"async/partial_share": 0.5}
    assert partial_metrics(_partial_rollouts([[1, 1], [0, 0]], [2, 0])) == {"async/partial_share": 0.0}


def test_a_concurrent_lane_runs_calls_in_order_beside_the_caller() -> None:
    lane = RolloutLane(concurrent=True)
    order: list[int] = []
    futures = [lane.submit(order.append, i) for i in range(5)]
    assert lane.run(len, order) == 5  # after every call submitted before it
    assert [f.result() for f in futures] == [None] * 5 and order == [0, 1, 2, 3, 4]
    lane.close()
