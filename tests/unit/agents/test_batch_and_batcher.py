"""Hand-built trajectories into the RL batch (masks, prompts, turn rewards), and the async batcher."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch

from rlkit.agents.trajectory import Trajectory
from rlkit.data.batch import Batch
from rlkit.rewards import token_level_scores
from rlkit.rollout.async_batcher import AsyncBatcher
from rlkit.rollout.base import Completion, SamplingParams
from rlkit.trainer.rollout_batch import prompt_token_lists, trajectories_to_batch
from rlkit.trainer.setup import _with_turn_scores
from rlkit.trainer.stats import agent_metrics

PAD = 0


def _prompts(rows: list[list[int]]) -> Batch:
    width = max(map(len, rows))
    prompts = torch.full((len(rows), width), PAD)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        prompts[i, width - len(r) :], mask[i, width - len(r) :] = torch.tensor(r), 1
    extra = np.array([{"k": i} for i in range(len(rows))], dtype=object)
    return Batch(
        tensors={"prompts": prompts, "prompt_attention_mask": mask}, non_tensors={"extra_info": extra}
    )


def _two_turns(prompt: list[int]) -> Trajectory:
    t = Trajectory(prompt_ids=prompt)
    t.add_model_tokens([11, 12], [-0.1, -0.2])  # a tool call
    t.add_template_tokens([90, 91, 92])  # the tool's result in the template
    t.add_model_tokens([13], [-0.3])  # the answer
    t.turn_rewards = [(1, 0.5)]
    t.final_reward = 0.25
    t.messages = [{"role": "assistant", "content": "x"}]
    return t


def test_a_multi_turn_response_attends_to_every_token_and_trains_on_the_model_s() -> None:
    prompts = _prompts([[1, 2, 3], [4, 5]])
    single = Trajectory(prompt_ids=[4, 5])
    single.add_model_tokens([21, 22, 23, 24], [-1.0] * 4)
    batch = trajectories_to_batch(
        prompts, [[_two_turns([1, 2, 3])], [single]], pad_id=PAD, max_response_length=6, multi_turn=True
    )
    assert batch["responses"].tolist() == [[11, 12, 90, 91, 92, 13], [21, 22, 23, 24, PAD, PAD]]
    assert batch["response_mask"].tolist() == [[1, 1, 0, 0, 0, 1], [1, 1, 1, 1, 0, 0]]
    assert batch["attention_mask"][:, 3:].tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]
    assert batch["rollout_log_probs"][0].tolist() == pytest.approx([-0.1, -0.2, 0, 0, 0, -0.3])
    assert batch["position_ids"][0].tolist() == list(range(9))  # continuous over the template tokens
    # the turn's reward on its last model token, the trajectory's on the last one (not on a template token)
    assert batch["turn_scores"][0].tolist() == [0, 0.5, 0, 0, 0, 0.25]
    scores = _with_turn_scores(batch, token_level_scores(torch.tensor([1.0, 0.0]), batch["response_mask"]))
    assert scores[0].tolist() == [0, 0.5, 0, 0, 0, 1.25] and scores[1].tolist() == [0, 0, 0, 0, 0, 0]
    assert batch["extra_info"][0]["k"] == 0 and batch["extra_info"][0]["agent"]["num_turns"] == 2
    metrics = agent_metrics(batch)
    assert metrics["agent/num_turns/mean"] == 1.5 and metrics["agent/tokens/template_mean"] == 1.5


def test_responses_past_the_width_are_cut_and_an_empty_one_is_all_padding() -> None:
    long, empty, short = Trajectory(prompt_ids=[1]), Trajectory(prompt_ids=[1]), Trajectory(prompt_ids=[1])
    long.add_model_tokens(list(range(10, 17)), [-0.5] * 7)  # 7 tokens into a width of 4
    short.add_model_tokens([30], [-2.0])
    short.add_template_tokens([31])
    batch = trajectories_to_batch(
        _prompts([[1]] * 3), [[long], [empty], [short]], pad_id=PAD, max_response_length=4
    )
    assert batch["responses"].tolist() == [[10, 11, 12, 13], [PAD] * 4, [30, 31, PAD, PAD]]
    assert batch["response_mask"].tolist() == [[1, 1, 1, 1], [0] * 4, [1, 0, 0, 0]]
    assert batch["attention_mask"][:, 1:].tolist() == [[1, 1, 1, 1], [0] * 4, [1, 1, 0, 0]]
    assert batch["rollout_log_probs"].tolist() == [[-0.5] * 4, [0.0] * 4, [-2.0, 0.0, 0.0, 0.0]]
    assert (batch["responses"].dtype, batch["response_mask"].dtype, batch["attention_mask"].dtype) == (
        torch.long,
        torch.float32,
        torch.long,
    )


def test_a_loop_s_own_prompt_replaces_the_batch_s() -> None:
    prompts = _prompts([[1, 2]])
    with_tools = _two_turns([7, 7, 7, 1, 2])
    batch = trajectories_to_batch(prompts, [[with_tools]], pad_id=PAD, max_response_length=6)
    assert batch["prompts"].tolist() == [[7, 7, 7, 1, 2]]
    assert batch["input_ids"][0, :5].tolist() == [7, 7, 7, 1, 2]
    assert "turn_scores" not in batch  # single-turn layout unless asked


class _Recorder:
    """A real-shaped engine whose generate records each batch (it echoes the prompt's length)."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[int] = []
        self.fail = fail

    def generate(self, prompts, params, *, progress=None):
        self.batches.append(len(prompts))
        if self.fail:
            raise RuntimeError("engine down")
        return [[Completion([len(p)], [0.0], [0.0], "stop")] for p in prompts]


def test_prompt_token_lists_keeps_each_row_s_real_tokens_in_order() -> None:
    ids = torch.tensor([[0, 5, 6], [7, 8, 9], [0, 0, 0], [0, 0, 4]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 0, 0], [0, 0, 1]])
    assert prompt_token_lists(ids, mask) == [[5, 6], [7, 8, 9], [], [4]]
    assert prompt_token_lists(ids[:0], mask[:0]) == []


def test_the_batcher_waits_for_live_trajectories_but_not_for_one_busy_with_a_tool() -> None:
    engine = _Recorder()
    batcher = AsyncBatcher(engine, max_wait_s=0.05)

    async def trajectory(tool_s: float) -> float:
        async with batcher.live():
            await batcher.generate([1, 2], SamplingParams())
            started = time.perf_counter()
            await asyncio.sleep(tool_s)  # one of them runs a slow tool
            await batcher.generate([1, 2, 3], SamplingParams())
            return time.perf_counter() - started

    async def main() -> list[float]:
        return list(await asyncio.gather(trajectory(0.0), trajectory(0.0), trajectory(1.0)))

    waited = asyncio.run(main())
    assert engine.batches[0] == 3  # the first turns together
    assert 2 in engine.batches[1:]  # the two quick ones did not wait for the slow tool
    assert waited[0] < 0.5


def test_an_engine_failure_reaches_every_waiting_trajectory() -> None:
    batcher = AsyncBatcher(_Recorder(fail=True))

    async def one() -> None:
        async with batcher.live():
            await batcher.generate([1], SamplingParams())

    async def main() -> list[object]:
        return list(await asyncio.gather(one(), one(), return_exceptions=True))

    assert [str(e) for e in asyncio.run(main())] == ["engine down", "engine down"]
