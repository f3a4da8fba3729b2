"""Agent loops: how one prompt becomes trajectories, registered by name like recipes.

Every loop implements ``async run(row, sampling) -> Trajectory`` (one sample) and may override
``run_group`` (all ``sampling.n`` samples of a row). ``single_turn`` is today's rollout, one
request of ``n`` samples per prompt; ``tool`` lets the model call tools and talk to an
interaction turn by turn. ``rollout.multi_turn.agent`` names a registered loop, or a user's class
(``package.module:Class`` or ``file.py:Class``) subclassing :class:`AgentLoop`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from rlkit.agents.interactions import Interaction
from rlkit.agents.loading import load_object
from rlkit.agents.parsers import get_parser
from rlkit.agents.template import check_trajectory, continuation_ids, prompt_ids
from rlkit.agents.tool_calls import ToolSession
from rlkit.agents.tools.base import Tool
from rlkit.agents.trajectory import Trajectory
from rlkit.errors import UserError
from rlkit.rollout.base import Completion, SamplingParams

GenerateFn = Callable[[list[int], SamplingParams], Awaitable[list[Completion]]]


@asynccontextmanager
async def _no_live() -> AsyncIterator[None]:
    yield


@dataclass
class MultiTurnSettings:
    """The ``rollout.multi_turn`` keys a loop reads (see the schema for their meaning)."""

    max_turns: int = 5
    max_tool_response_length: int = 256
    truncation_side: str = "middle"
    max_parallel_calls: int = 1
    parser: str = "hermes"
    tool_timeout_s: float = 30.0
    turn_reward: str = "last_token"
    max_response_length: int = 256
    """The token budget of a whole response (model and template tokens): ``data.max_response_length``."""


@dataclass
class LoopContext:
    """What a loop runs with: the tokenizer, the batched engine, the tools and interactions."""

    tokenizer: Any
    generate: GenerateFn
    tools: dict[str, Tool] = field(default_factory=dict)
    interactions: dict[str, Interaction] = field(default_factory=dict)
    settings: MultiTurnSettings = field(default_factory=MultiTurnSettings)
    live: Callable[[], AbstractAsyncContextManager[None]] = _no_live
    """Marks a trajectory as in flight (the batcher waits for in-flight ones before a batch goes)."""


def sample_seed(seed: int | None, *keys: int) -> int | None:
    """A seed for one (row, sample, turn) derived from the request's seed (None stays None)."""
    if seed is None:
        return None
    value = seed
    for key in keys:
        value = (value * 1_000_003 + key * 7_919 + 1) % 2**31
    return value


class AgentLoop:
    """The base of every loop: ``run`` one sample; ``run_group`` all ``n`` (concurrently)."""

    def __init__(self, ctx: LoopContext) -> None:
        self.ctx = ctx

    async def run(self, row: dict[str, Any], sampling: SamplingParams) -> Trajectory:
        """One trajectory of ``row`` (keys: ``prompt_ids``, ``raw_prompt``, ``extra_info``, ``index``,
        ``ground_truth``)."""
        raise NotImplementedError

    def prompt_overhead(self) -> int:
        """Most tokens the loop's prompts add to a row's own (a tools preamble): the batch's prompt
        columns are this much wider, the same on every worker."""
        return 0

    async def run_group(
        self, row: dict[str, Any], sampling: SamplingParams, key: int = 0
    ) -> list[Trajectory]:
        """``sampling.n`` trajectories of ``row``, each with its own seed (fixed by ``key`` and its index)."""

        async def one(k: int) -> Trajectory:
            params = replace(sampling, n=1, seed=sample_seed(sampling.seed, key, k))
            async with self.ctx.live():
                return await self.run(row, params)

        return list(await asyncio.gather(*(one(k) for k in range(sampling.n))))


class SingleTurnLoop(AgentLoop):
    """Today's rollout: one request of ``n`` samples per prompt, one model turn each."""

    async def run(self, row: dict[str, Any], sampling: SamplingParams) -> Trajectory:
        return (await self.run_group(row, replace(sampling, n=1)))[0]

    async def run_group(
        self, row: dict[str, Any], sampling: SamplingParams, key: int = 0
    ) -> list[Trajectory]:
        async with self.ctx.live():
            completions = await self.ctx.generate(list(row["prompt_ids"]), sampling)
        trajectories = [single_turn_trajectory(list(row["prompt_ids"]), c) for c in completions]
        prompt = list(row.get("raw_prompt") or [])
        for traj in trajectories:  # the answer as the reward function always read it
            traj.response_text = self.ctx.tokenizer.decode(traj.response_ids, skip_special_tokens=True)
            traj.messages = [*prompt, {"role": "assistant", "content": traj.response_text}]
        return trajectories


def single_turn_trajectory(prompt: list[int], completion: Completion) -> Trajectory:
    """The one-turn trajectory of a completion (loss mask of ones, no messages decoded)."""
    traj = Trajectory(prompt_ids=prompt)
    traj.add_model_tokens(list(completion.token_ids), completion.logprobs)
    traj.finish_reason = completion.finish_reason
    traj.truncated = completion.finish_reason == "length"
    return traj


class ToolLoop(AgentLoop):
    """The model calls tools and talks to an interaction until it answers or a budget runs out.

    Each turn: generate (budget: what is left of ``max_response_length``); parse the tool calls;
    run them (at most ``max_parallel_calls``) and append their results as tool messages, or, with
    no call, ask the row's interaction for the next user message; otherwise the turn is the
    answer. The template's tokens between turns are rendered, never the model's.
    """

    def __init__(self, ctx: LoopContext) -> None:
        super().__init__(ctx)
        self.parser = get_parser(ctx.settings.parser)
        self.stop_ids = set(getattr(ctx.tokenizer, "all_special_ids", []) or [])

    def prompt_overhead(self) -> int:
        schemas = [t.schema for t in self.ctx.tools.values()]
        if not schemas:
            return 0
        probes = (
            [{"role": "user", "content": "x"}],
            [{"role": "system", "content": "x"}, {"role": "user", "content": "x"}],
        )
        tok = self.ctx.tokenizer
        return max(len(prompt_ids(tok, p, schemas)) - len(prompt_ids(tok, p, None)) for p in probes)

    async def run(self, row: dict[str, Any], sampling: SamplingParams) -> Trajectory:
        extra = dict(row.get("extra_info") or {})
        session = ToolSession(self.ctx.tools, self.ctx.settings, extra, instance_id=uuid.uuid4().hex)
        interaction, interaction_kwargs = self._interaction(extra)
        if row.get("ground_truth") is not None:  # what a "try again" user checks, unless the row says
            interaction_kwargs.setdefault("ground_truth", row["ground_truth"])
        try:
            await session.start()
            if interaction is not None:
                await interaction.start_interaction(session.instance_id, **interaction_kwargs)
            return await self._turns(row, sampling, session, interaction)
        finally:
            await session.close()
            if interaction is not None:
                await interaction.finalize_interaction(session.instance_id)

    def _interaction(self, extra: dict[str, Any]) -> tuple[Interaction | None, dict[str, Any]]:
        kwargs = dict(extra.get("interaction_kwargs") or {})
        if not kwargs and not self.ctx.interactions:
            return None, {}
        name = kwargs.pop("name", None) or next(iter(self.ctx.interactions), None)
        if name not in self.ctx.interactions:
            raise UserError(
                f"a row asks for interaction {name!r}, but the interaction file defines "
                f"{sorted(self.ctx.interactions) or 'none'}",
                hint="set rollout.multi_turn.interaction_config_path to a file that defines it",
            )
        return self.ctx.interactions[name], kwargs

    async def _turns(
        self,
        row: dict[str, Any],
        sampling: SamplingParams,
        session: ToolSession,
        interaction: Interaction | None,
    ) -> Trajectory:
        tok, s = self.ctx.tokenizer, self.ctx.settings
        schemas = session.schemas()
        messages = [dict(m) for m in row["raw_prompt"]]
        raw = [dict(m) for m in messages]  # assistant turns as generated, for the structural check
        traj = Trajectory(prompt_ids=prompt_ids(tok, messages, schemas))
        for turn in range(s.max_turns):
            budget = s.max_response_length - len(traj.response_ids)
            params = replace(sampling, n=1, max_tokens=budget, seed=sample_seed(sampling.seed, turn))
            completion = (await self.ctx.generate(traj.context_ids, params))[0]
            traj.add_model_tokens(list(completion.token_ids), completion.logprobs)
            text, end = self._split_end(completion)
            parsed = self.parser.parse(text)
            messages.append(session.assistant_message(parsed))
            raw.append({"role": "assistant", "content": text})
            if completion.finish_reason == "length":
                traj.finish_reason, traj.truncated = "length", True
                break
            if turn + 1 == s.max_turns and parsed.calls:  # no tool runs for a turn that cannot follow
                traj.finish_reason = "max_turns"
                break
            new = await self._respond(traj, parsed, session, interaction, messages, turn)
            if new is None:
                break
            if turn + 1 == s.max_turns:
                traj.finish_reason = "max_turns"
                break
            ids, prefix_ok = continuation_ids(tok, raw, new, schemas, end)
            traj.template_mismatch |= not prefix_ok
            if len(traj.response_ids) + len(ids) >= s.max_response_length:
                traj.finish_reason, traj.truncated = "length", True
                break
            traj.add_template_tokens(ids)
            messages.extend(new)
            raw.extend(new)
        traj.messages, traj.tool_calls = messages, session.records
        traj.final_reward = await session.final_reward()
        if s.turn_reward == "sum" and traj.turn_rewards:  # all of them on the last model token
            traj.turn_rewards = [(traj.last_model_position(), sum(r for _, r in traj.turn_rewards))]
        traj.template_mismatch |= not check_trajectory(tok, traj.context_ids, raw, schemas)
        traj.response_text = tok.decode(traj.response_ids, skip_special_tokens=True)
        return traj

    def _split_end(self, completion: Completion) -> tuple[str, str]:
        """The turn's text without its end-of-turn token, and that token's text ('' if none)."""
        ids = list(completion.token_ids)
        end = ""
        if completion.finish_reason == "stop" and ids and ids[-1] in self.stop_ids:
            end = self.ctx.tokenizer.decode(ids[-1:], skip_special_tokens=False)
            ids = ids[:-1]
        return self.ctx.tokenizer.decode(ids, skip_special_tokens=False), end

    async def _respond(
        self,
        traj: Trajectory,
        parsed: Any,
        session: ToolSession,
        interaction: Interaction | None,
        messages: list[dict[str, Any]],
        turn: int,
    ) -> list[dict[str, Any]] | None:
        """The messages that answer a model turn: tool results, the user's reply, or None (done)."""
        if parsed.calls:
            new, reward = await session.run_calls(parsed.calls, turn)
            if reward:
                traj.turn_rewards.append((traj.last_model_position(), reward))
            return new
        if interaction is None:
            traj.finish_reason = "stop"
            return None
        try:  # a simulated user has the tools' deadline
            done, reply, score, _ = await asyncio.wait_for(
                interaction.generate_response(session.instance_id, messages),
                timeout=self.ctx.settings.tool_timeout_s,
            )
        except asyncio.TimeoutError:
            raise TimeoutError(
                f"agent loop: the interaction did not answer within rollout.multi_turn.tool_timeout_s="
                f"{self.ctx.settings.tool_timeout_s:g} s"
            ) from None
        if score:
            traj.turn_rewards.append((traj.last_model_position(), float(score)))
        if done:
            traj.finish_reason = "interaction"
            return None
        return [{"role": "user", "content": str(reply)}]


LOOPS: dict[str, type[AgentLoop]] = {"single_turn": SingleTurnLoop, "tool": ToolLoop}


def loop_class(name: str) -> type[AgentLoop]:
    """The loop registered as ``name``, or a user's class (``module:Class`` / ``file.py:Class``).

    Raises:
        UserError: an unknown name, or a class that is not an :class:`AgentLoop`.
    """
    if name in LOOPS:
        return LOOPS[name]
    if ":" not in name and not name.endswith(".py"):
        raise UserError(
            f"rollout.multi_turn.agent={name!r} is not an agent loop",
            hint=f"use one of {', '.join(LOOPS)}, or a class as package.module:Class or file.py:Class",
        )
    cls = load_object(name, key="rollout.multi_turn.agent")
    if not (isinstance(cls, type) and issubclass(cls, AgentLoop)):
        raise UserError(
            f"rollout.multi_turn.agent={name!r} is not an AgentLoop subclass",
            hint="subclass rlkit.agents.loops.AgentLoop and implement async run(row, sampling)",
        )
    return cls
