"""The ``server`` engine against a real vLLM server rlkit starts.

One server start for the module: 45 s on an idle 2-core CPU, over 2 minutes when the machine is
busy, so the module is ``slow`` (run it with ``-m slow``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rlkit.errors import UserError
from rlkit.rollout.base import RolloutEngine, SamplingParams
from rlkit.rollout.server_engine import ServerEngine, VllmServer, group_alive

from .tiny_vllm_model import hf_greedy, hf_tensors

pytestmark = pytest.mark.slow

PROMPT = [72, 101, 108, 108, 111]
LOGPROB_ATOL = 1e-4  # the same fp32 reasoning as test_vllm_engine


@pytest.fixture(scope="module")
def server_engine(tiny_paths: tuple[Path, Path]) -> Iterator[ServerEngine]:
    engine = ServerEngine.launch(
        str(tiny_paths[0]), dtype="float32", max_model_len=256, extra_args=["--enforce-eager"]
    )
    yield engine
    engine.close()
    assert engine.server is not None and not engine.server.running


def test_generate_push_and_close(server_engine: ServerEngine, tiny_paths: tuple[Path, Path]) -> None:
    assert isinstance(server_engine, RolloutEngine)
    greedy = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    (c,) = server_engine.generate([PROMPT], greedy)[0]
    ref_ids, ref_lp = hf_greedy(tiny_paths[0], PROMPT, 10)
    assert c.token_ids == ref_ids
    assert c.logprobs == pytest.approx(ref_lp, abs=LOGPROB_ATOL)

    group = server_engine.generate([PROMPT], SamplingParams(n=3, max_tokens=8, seed=5, ignore_eos=True))[0]
    assert len(group) == 3 and all(len(s.token_ids) == len(s.logprobs) == 8 for s in group)

    server_engine.update_weights(hf_tensors(tiny_paths[1]))
    assert server_engine.weight_version == 1
    (c,) = server_engine.generate([PROMPT], greedy)[0]
    ref_ids, ref_lp = hf_greedy(tiny_paths[1], PROMPT, 10)
    assert c.token_ids == ref_ids
    assert c.logprobs == pytest.approx(ref_lp, abs=LOGPROB_ATOL)
    server_engine.verify_weights()

    server = server_engine.server
    assert server is not None and server.running
    server_engine.close()
    assert not server.running and not group_alive(server.proc.pid)


def test_startup_timeout_is_one_clear_error(tiny_paths: tuple[Path, Path]) -> None:
    with pytest.raises(UserError, match="was not ready after 1 s") as info:
        VllmServer(str(tiny_paths[0]), startup_timeout_s=1.0)
    assert "log" in str(info.value)
