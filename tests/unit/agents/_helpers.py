"""Small tools and a scripted engine for the agent-loop tests (the engine only drives control flow)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import torch

from rlkit.agents.template import prompt_ids
from rlkit.agents.tools.base import ToolResult
from rlkit.models import build_tokenizer
from rlkit.rollout.base import Completion, SamplingParams

TOK = build_tokenizer()
IM_END = TOK.convert_tokens_to_ids("<|im_end|>")


class AddTool:
    """A stateless tool: ``add(a, b)`` -> their sum; counts its calls per trajectory."""

    name = "add"
    schema = {
        "type": "function",
        "function": {
            "name": "add",
            "description": "add two integers",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            },
        },
    }

    def __init__(self, delay_s: float = 0.0, reward_per_call: float = 0.0) -> None:
        self.delay_s = delay_s
        self.reward_per_call = reward_per_call
        self.calls: dict[str, int] = {}
        self.created: list[tuple[str, dict[str, Any]]] = []
        self.released: list[str] = []

    async def create(self, instance_id: str, **kwargs: Any) -> None:
        self.created.append((instance_id, kwargs))
        self.calls[instance_id] = 0

    async def execute(self, instance_id: str, arguments: dict[str, Any]) -> ToolResult:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.calls[instance_id] += 1
        try:
            return ToolResult(
                text=str(int(arguments["a"]) + int(arguments["b"])), reward=self.reward_per_call
            )
        except (KeyError, TypeError, ValueError) as exc:
            return ToolResult(text="", error=f"bad arguments: {exc}")

    async def reward(self, instance_id: str) -> float:
        return 0.5 if self.calls.get(instance_id) else 0.0

    async def release(self, instance_id: str) -> None:
        self.released.append(instance_id)


class ScriptedEngine:
    """Answers the k-th assistant turn of a conversation with ``script[k]`` (+ ``<|im_end|>``).

    Only for the loops' control flow: the real-model tests run the same loops on ``builtin:tiny``.
    """

    def __init__(self, script: list[str], *, stop: bool = True) -> None:
        self.script = script
        self.stop = stop
        self.batches: list[int] = []

    def generate(
        self,
        prompt_token_ids: list[list[int]],
        params: SamplingParams | list[SamplingParams],
        *,
        progress: Any = None,
    ) -> list[list[Completion]]:
        plist = params if isinstance(params, list) else [params] * len(prompt_token_ids)
        self.batches.append(len(prompt_token_ids))
        out = []
        for ids, p in zip(prompt_token_ids, plist, strict=True):
            turn = TOK.decode(ids).count("<|im_start|>assistant") - 1
            text = self.script[min(turn, len(self.script) - 1)]
            tokens = TOK.encode(text, add_special_tokens=False) + ([IM_END] if self.stop else [])
            finish = "stop" if self.stop else "length"
            if len(tokens) > p.max_tokens:
                tokens, finish = tokens[: p.max_tokens], "length"
            out.append([Completion(tokens, [-0.5] * len(tokens), [-0.5] * len(tokens), finish)] * p.n)
        return out

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None: ...

    def sleep(self) -> None: ...

    def wake(self) -> None: ...

    def close(self) -> None: ...


def row(question: str = "what is 2+3?", **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": question}]
    return {
        "prompt_ids": prompt_ids(TOK, messages, None),
        "raw_prompt": messages,
        "extra_info": dict(extra),
        "index": 0,
    }
