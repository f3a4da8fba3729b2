"""LoRA weight sync into the in-process ``vllm`` engine: adapter push vs merged push (CPU or GPU).

One tiny Qwen2 (head size 32) and one LoRA adapter (all linear layers, rank 8), then per round:

- ``merged``: fold the adapter into the base weights (``W + alpha/r * B @ A``) and push every
  tensor through :meth:`VllmEngine.update_weights` (vLLM's in-place reload on CPU), then generate;
- ``adapter``: the engine runs with ``enable_lora``; write only the adapter tensors (safetensors +
  ``adapter_config.json``) and register them under a new ``LoRARequest`` id (vLLM's ``add_lora``),
  then generate with that request.

It prints the push seconds, the decode tokens/s of each, and whether the two produce the same
greedy tokens (they must: same weights)::

    python benchmarks/lora_push.py            # tiny, CPU
    python benchmarks/lora_push.py --rounds 5 --rank 16
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _model(folder: Path) -> Path:
    from rlkit.models.tiny_foreign import save_tiny_foreign
    from rlkit.models.tokenizer import BUILTIN_EOS_ID, BUILTIN_VOCAB_SIZE

    return save_tiny_foreign(
        "qwen2",
        folder,
        chat_template=False,
        init_std=0.2,
        vocab_size=BUILTIN_VOCAB_SIZE,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        tie_word_embeddings=True,
        eos_token_id=BUILTIN_EOS_ID,
    )


def _adapter(base: Path, rank: int, seed: int) -> Any:
    """A PEFT model over ``base`` with random (non-zero) adapters."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, init_lora_weights=False)
    peft_model = get_peft_model(hf, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.mul_(0.3)
    return peft_model


def _merged_tensors(peft_model: Any) -> list[tuple[str, torch.Tensor]]:
    merged = peft_model.merge_and_unload(safe_merge=True)
    return [(n, t.detach().clone()) for n, t in merged.state_dict().items() if n != "lm_head.weight"]


def run_mode(mode: str, rounds: int, rank: int, prompts: int, new_tokens: int) -> None:
    """One engine, ``rounds`` pushes of a fresh adapter each; prints ``mode push_s tok_s tokens``."""
    from rlkit.rollout.base import SamplingParams
    from rlkit.rollout.vllm_engine import VllmEngine

    root = Path(tempfile.mkdtemp(prefix="rlkit-lora-bench-"))
    base = _model(root / "base")
    extra = {"enable_lora": True, "max_lora_rank": rank, "max_loras": 1} if mode == "adapter" else {}
    engine = VllmEngine(str(base), dtype="float32", max_model_len=256, enforce_eager=True, extra=extra)
    batch = [[(7 * i + j) % 250 for j in range(16)] for i in range(prompts)]
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    pushes, rates, tokens = [], [], []
    for r in range(rounds):
        peft_model = _adapter(base, rank, seed=r)
        start = time.perf_counter()
        request = None
        if mode == "merged":
            engine.update_weights(_merged_tensors(peft_model))
        else:
            request = _push_adapter(engine, peft_model, root / f"adapter{r}", r + 1)
        pushes.append(time.perf_counter() - start)
        start = time.perf_counter()
        outs = _generate(engine, batch, params, request)
        rates.append(prompts * new_tokens / (time.perf_counter() - start))
        tokens.append(outs)
    engine.close()
    print(f"RESULT {mode} {statistics.median(pushes):.4f} {statistics.median(rates):.1f} {tokens[-1]}")


def _push_adapter(engine: Any, peft_model: Any, folder: Path, lora_id: int) -> Any:
    """Write only the adapter (safetensors + config) and register it with vLLM under a new id."""
    from vllm.lora.request import LoRARequest

    peft_model.save_pretrained(str(folder))
    request = LoRARequest(f"rlkit-{lora_id}", lora_id, str(folder))
    core = engine.llm
    if lora_id > 1:
        core.llm_engine.remove_lora(lora_id - 1)
    core.llm_engine.add_lora(request)
    return request


def _generate(engine: Any, batch: list[list[int]], params: Any, request: Any) -> list[int]:
    from rlkit.rollout.vllm_engine import to_vllm_params

    vparams = to_vllm_params(params, engine.default_stop_ids)
    prompts = [{"prompt_token_ids": p} for p in batch]
    outs = engine.llm.generate(prompts, vparams, lora_request=request, use_tqdm=False)
    return list(outs[0].outputs[0].token_ids)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--mode", choices=["merged", "adapter"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mode:
        run_mode(args.mode, args.rounds, args.rank, args.prompts, args.new_tokens)
        return
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    results = {}
    for mode in ("merged", "adapter"):  # one process each: one vLLM engine per process
        cmd = [sys.executable, __file__, "--mode", mode, *(argv if argv is not None else sys.argv[1:])]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        line = next(x for x in out.splitlines() if x.startswith("RESULT "))
        _, _, push_s, tok_s, toks = line.split(" ", 4)
        results[mode] = (float(push_s), float(tok_s), toks)
    print(f"| push | seconds per push (median of {args.rounds}) | decode tokens/s |")
    print("|---|---|---|")
    for mode, (push_s, tok_s, _) in results.items():
        print(f"| {mode} | {push_s:.3f} | {tok_s:.0f} |")
    same = results["merged"][2] == results["adapter"][2]
    print(f"same greedy tokens (first prompt, last round): {same} {results['merged'][2]}")


if __name__ == "__main__":
    main()
