"""The ``server`` engine against a real vLLM server rlkit starts (the folder's one server, conftest.py).

That the server never outlives its owner (``kill -9`` of the owner) is checked when the folder's
server fixture ends; the start-up timeout here starts (and stops) a server of its own for ~1 s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

from rlkit.errors import UserError
from rlkit.rollout.base import RolloutEngine, SamplingParams
from rlkit.rollout.server_engine import ServerEngine, VllmServer, group_alive
from rlkit.rollout.weight_sync import WeightSyncError, push_checked, word_sum

from .tiny_vllm_model import hf_greedy, hf_tensors, lora_merged_tensors

PROMPT = [72, 101, 108, 108, 111]
LOGPROB_ATOL = 1e-4  # the same fp32 reasoning as test_vllm_engine


def test_generate_push_and_verify(server_engine: ServerEngine, tiny_paths: tuple[Path, Path]) -> None:
    assert isinstance(server_engine, RolloutEngine)
    greedy = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    (c,) = server_engine.generate([PROMPT], greedy)[0]
    ref_ids, ref_lp = hf_greedy(tiny_paths[0], PROMPT, 10)
    assert c.token_ids == ref_ids
    assert c.logprobs == pytest.approx(ref_lp, abs=LOGPROB_ATOL)

    group = server_engine.generate([PROMPT], SamplingParams(n=3, max_tokens=8, seed=5, ignore_eos=True))[0]
    assert len(group) == 3 and all(len(s.token_ids) == len(s.logprobs) == 8 for s in group)

    version = server_engine.weight_version
    try:
        server_engine.update_weights(hf_tensors(tiny_paths[1]))
        assert server_engine.weight_version == version + 1
        (c,) = server_engine.generate([PROMPT], greedy)[0]
        ref_ids, ref_lp = hf_greedy(tiny_paths[1], PROMPT, 10)
        assert c.token_ids == ref_ids
        assert c.logprobs == pytest.approx(ref_lp, abs=LOGPROB_ATOL)
        server_engine.verify_weights()
    finally:
        server_engine.update_weights(hf_tensors(tiny_paths[0]))  # the other tests expect checkpoint a


def test_close_leaves_a_server_given_by_url_running(
    vllm_server: dict[str, object], tiny_paths: tuple[Path, Path]
) -> None:
    engine = ServerEngine(str(vllm_server["url"]), tokenizer_path=str(tiny_paths[0]))
    engine.close()
    assert group_alive(int(vllm_server["group"]))  # type: ignore[call-overload]
    assert engine.generate([PROMPT], SamplingParams(temperature=0.0, max_tokens=2))[0]


def test_startup_timeout_is_one_clear_error(tiny_paths: tuple[Path, Path]) -> None:
    with pytest.raises(UserError, match="was not ready after 1 s") as info:
        VllmServer(str(tiny_paths[0]), startup_timeout_s=1.0)
    assert "log" in str(info.value)


def test_a_lora_push_is_checked_tensor_by_tensor(
    server_engine: ServerEngine, tiny_paths: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's worker reports the sums of every tensor it took in, linear layers included: a
    merged LoRA push passes, and one whose file carries another value of a projection is caught."""
    merged = lora_merged_tensors(tiny_paths[0], seed=5)
    name = "model.layers.0.self_attn.o_proj.weight"
    real_save = safetensors.torch.save_file

    def tampered(tensors: dict[str, torch.Tensor], path: str, *args: Any, **kwargs: Any) -> None:
        real_save({**tensors, name: tensors[name] * 1.5}, path, *args, **kwargs)

    try:
        push_checked(1, server_engine, merged)
        receipt = server_engine.push_receipt()
        assert receipt.sums == {n: int(word_sum(t)) for n, t in merged}
        assert receipt.unknown == [] and receipt.uncovered == []
        monkeypatch.setattr(safetensors.torch, "save_file", tampered)
        with pytest.raises(WeightSyncError, match=rf"after step 2 \(engine v\d+\): .*took in {name} with"):
            push_checked(2, server_engine, merged)
    finally:
        monkeypatch.undo()
        server_engine.update_weights(hf_tensors(tiny_paths[0]))  # the other tests expect checkpoint a
