"""Real tool calls by a real tiny model: ``builtin:tiny-tools`` (SFT on calculator traces) with the
built-in calculator, on the native and hf engines. Needs the tools side of issue #21 (the warm
start and the tool registry); skipped until both are installed."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from rlkit.agents.loops import MultiTurnSettings
from rlkit.agents.rollouts import run_rollouts
from rlkit.rollout.base import SamplingParams
from rlkit.rollout.registry import build_engine

from ._helpers import TOK, row


def _ready() -> bool:
    from rlkit.models.tiny import ASSETS_DIR, PACKAGED

    shipped = "tiny-tools" in PACKAGED and (ASSETS_DIR / "tiny-tools" / "config.json").is_file()
    return shipped and importlib.util.find_spec("rlkit.agents.tools.registry") is not None


pytestmark = pytest.mark.skipif(
    not _ready(), reason="needs builtin:tiny-tools and rlkit.agents.tools.registry"
)
LOGPROB_ATOL = 1e-4  # fp32 KV-cache decoding against one full pass (see test_loops_real_model)


@pytest.mark.parametrize("engine_name", ["native", "hf"])
def test_the_tiny_tools_model_calls_the_calculator_and_copies_its_result(engine_name: str) -> None:
    from rlkit.agents.tools.registry import load_tools
    from rlkit.models import load_causal_lm

    model = load_causal_lm("builtin:tiny-tools")
    engine = build_engine(engine_name, model, max_num_seqs=16, tokenizer=TOK)
    rows = [row(f"{q}=", tool_selection=["calculator"]) for q in ("123*45", "964*59", "876*63")]
    groups, _ = run_rollouts(
        engine, rows, SamplingParams(n=2, temperature=0.0, max_tokens=160), agent="tool", tokenizer=TOK,
        settings=MultiTurnSettings(max_turns=3, max_response_length=160), tools=load_tools(["calculator"]),
    )  # fmt: skip
    trajectories = [t for g in groups for t in g]
    called = [t for t in trajectories if t.tool_calls]
    assert len(called) >= len(trajectories) // 2
    for traj in called:
        assert not traj.template_mismatch
        call = traj.tool_calls[0]
        assert call.name == "calculator" and call.error is None
        assert traj.messages[2] == {"role": "tool", "name": "calculator", "content": call.result}
        ids = torch.tensor([traj.context_ids])
        with torch.no_grad():
            logits = model(ids, torch.ones_like(ids)).float()
        logp = torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
        got = logp[len(traj.prompt_ids) - 1 :][: len(traj.response_ids)]
        mask = torch.tensor(traj.loss_mask, dtype=torch.bool)
        assert torch.allclose(got[mask], torch.tensor(traj.logprobs)[mask], atol=LOGPROB_ATOL)
