"""The trajectory of one multi-turn rollout: token ids exactly as generated, plus what trains on them.

A trajectory is the prompt's token ids followed by a response that interleaves the model's own
tokens (loss mask 1, with their rollout log-probs) and the chat template's tokens of tool results,
user turns and turn separators (loss mask 0). The model's tokens are never re-tokenized: text only
goes one way, from the template into tokens. A single-turn rollout is the one-turn case.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ToolCallRecord:
    """One tool call the model made and what came back.

    Attributes:
        name: The tool called (as the model wrote it).
        arguments: The parsed JSON arguments (empty when the call did not parse).
        result: The text returned to the model (an error message for a failed call).
        error: The error shown to the model, ``None`` on success.
        timed_out: The call hit its deadline.
        latency_s: Wall-clock seconds the call took.
        turn: The model turn (0-based) that made the call.
        malformed: The call did not parse (bad JSON, no name, an unclosed tag).
        metrics: The numbers the tool reported (``ToolResult.metrics``), logged summed per step
            as ``agent/tool/<name>/<key>``.
    """

    name: str
    arguments: dict[str, Any]
    result: str
    error: str | None = None
    timed_out: bool = False
    latency_s: float = 0.0
    turn: int = 0
    malformed: bool = False
    metrics: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "arguments": self.arguments,
            "result": self.result,
            "error": self.error,
            "timed_out": self.timed_out,
            "latency_s": self.latency_s,
            "turn": self.turn,
            "malformed": self.malformed,
            "metrics": dict(self.metrics),
        }


@dataclass
class Trajectory:
    """Token ids, loss mask and log-probs of one rollout, with its messages and tool calls.

    Attributes:
        prompt_ids: The prompt's token ids (rendered with the tools when the loop has any).
        response_ids: Everything after the prompt: model tokens and template tokens, in order.
        loss_mask: 1 on each model token, 0 on each template (tool, user, separator) token.
        logprobs: The rollout log-prob of each response token (0 on template tokens).
        messages: The conversation: the prompt's messages, then assistant / tool / user turns.
        tool_calls: Every call made, in order.
        num_turns: Model turns generated.
        finish_reason: Why it ended: ``stop`` (an answer), ``length`` (the token budget),
            ``max_turns``, or ``interaction`` (the simulated user said done).
        turn_rewards: ``(response position, reward)`` pairs: a reward earned at a turn, placed on
            that turn's last model token (interaction scores, per-call tool rewards).
        final_reward: A reward for the whole trajectory from the tools or the environment
            (``Tool.reward``), added to the reward function's score.
        template_mismatch: The ids differ from the chat template's rendering of ``messages``
            (see :func:`rlkit.agents.template.check_trajectory`).
        truncated: The token budget cut the trajectory (a model turn or a tool / user turn).
        response_text: What the reward function scores (its ``solution_str``): the whole response
            decoded, every turn, special tokens skipped; None: the last assistant message.
    """

    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    num_turns: int = 0
    finish_reason: str = "stop"
    turn_rewards: list[tuple[int, float]] = field(default_factory=list)
    final_reward: float = 0.0
    template_mismatch: bool = False
    truncated: bool = False
    response_text: str | None = None

    def add_model_tokens(self, token_ids: list[int], logprobs: list[float] | None) -> None:
        """Append one model turn's tokens exactly as generated (loss mask 1)."""
        if logprobs is not None and len(logprobs) != len(token_ids):
            raise ValueError(f"{len(token_ids)} tokens but {len(logprobs)} log-probs")
        self.response_ids.extend(token_ids)
        self.loss_mask.extend([1] * len(token_ids))
        self.logprobs.extend(logprobs if logprobs is not None else [0.0] * len(token_ids))
        self.num_turns += 1

    def add_template_tokens(self, token_ids: list[int]) -> None:
        """Append tokens the chat template renders (tool results, user turns, separators; mask 0)."""
        self.response_ids.extend(token_ids)
        self.loss_mask.extend([0] * len(token_ids))
        self.logprobs.extend([0.0] * len(token_ids))

    def last_model_position(self) -> int:
        """Index in the response of the last model token (-1 when there is none)."""
        for i in range(len(self.loss_mask) - 1, -1, -1):
            if self.loss_mask[i]:
                return i
        return -1

    @property
    def context_ids(self) -> list[int]:
        """Prompt and response: what the model continues from at the next turn."""
        return self.prompt_ids + self.response_ids

    def tokens_by_role(self) -> dict[str, int]:
        """Prompt, model and template (tool / user / separator) token counts."""
        model = sum(self.loss_mask)
        return {
            "prompt": len(self.prompt_ids),
            "model": model,
            "template": len(self.response_ids) - model,
        }

    def reward_text(self) -> str:
        """The text the reward function scores: ``response_text``, else the last assistant message."""
        return self.response_text if self.response_text is not None else self.final_text()

    def final_text(self) -> str:
        """The content of the last assistant message."""
        for message in reversed(self.messages):
            if message.get("role") == "assistant":
                return str(message.get("content") or "")
        return ""

    def as_record(self) -> dict[str, Any]:
        """A JSON-ready view of the whole trajectory (``rlkit generate --agent``)."""
        return {
            "messages": self.messages,
            "tool_calls": [c.as_dict() for c in self.tool_calls],
            "num_turns": self.num_turns,
            "finish_reason": self.finish_reason,
            "prompt_ids": self.prompt_ids,
            "response_ids": self.response_ids,
            "loss_mask": self.loss_mask,
            "logprobs": self.logprobs,
            "turn_rewards": [list(pair) for pair in self.turn_rewards],
            "final_reward": self.final_reward,
            "template_mismatch": self.template_mismatch,
            "truncated": self.truncated,
        }
