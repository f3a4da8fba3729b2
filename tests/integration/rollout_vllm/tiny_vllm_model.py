"""A tiny Qwen2 Hugging Face checkpoint vLLM can run (head size 32: vLLM's CPU attention needs >= 32)."""

from __future__ import annotations

from pathlib import Path

import torch

from rlkit.models.tiny_foreign import save_tiny_foreign
from rlkit.models.tokenizer import BUILTIN_EOS_ID, BUILTIN_VOCAB_SIZE

# What vLLM's CPU attention needs (head size 32) on the project's one tiny-model builder.
VLLM_TINY = dict(
    vocab_size=BUILTIN_VOCAB_SIZE,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,
    tie_word_embeddings=True,
    eos_token_id=BUILTIN_EOS_ID,
    bos_token_id=BUILTIN_EOS_ID,
    pad_token_id=BUILTIN_EOS_ID,
)


def save_tiny_model(out: Path, seed: int) -> Path:
    """A tiny Qwen2 with random weights (std 0.2, so samples are varied) and the built-in tokenizer."""
    return save_tiny_foreign("qwen2", out, seed=seed, chat_template=False, init_std=0.2, **VLLM_TINY)


def save_tiny_phi3(out: Path, seed: int = 0) -> Path:
    """A tiny Phi-3 (fused qkv / gate-up; not a native-decoder architecture) vLLM's CPU backend runs."""
    phi3 = {k: v for k, v in VLLM_TINY.items() if k not in ("head_dim", "tie_word_embeddings")}
    return save_tiny_foreign("phi3", out, seed=seed, chat_template=False, init_std=0.2, **phi3)


def hf_greedy(
    path: Path, prompt: list[int], steps: int, weights: list[tuple[str, torch.Tensor]] | None = None
) -> tuple[list[int], list[float]]:
    """Greedy tokens and their log_softmax(logits) under transformers (the reference), on the
    checkpoint's weights or on ``weights`` (every tensor, Hugging Face names) loaded over them."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    if weights is not None:
        model.load_state_dict(dict(weights), strict=False)
    ids = list(prompt)
    logprobs = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([ids])).logits[0, -1].double()
            lp = torch.log_softmax(logits, -1)
            tok = int(lp.argmax())
            ids.append(tok)
            logprobs.append(float(lp[tok]))
    return ids[len(prompt) :], logprobs


def hf_tensors(path: Path) -> list[tuple[str, torch.Tensor]]:
    from safetensors.torch import load_file

    return list(load_file(str(path / "model.safetensors")).items())


def lora_merged_tensors(path: Path, seed: int) -> list[tuple[str, torch.Tensor]]:
    """What a LoRA run pushes: the checkpoint's weights with trained rank-4 adapters on every
    linear layer merged in (rlkit's own inject and merge), so only the projection weights differ."""
    from transformers import AutoModelForCausalLM

    from rlkit.training.lora import ALL_LINEAR, inject_lora, is_lora_name, iter_merged

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    torch.manual_seed(seed)
    inject_lora(model, rank=4, alpha=8, targets=[ALL_LINEAR])
    with torch.no_grad():
        for name, param in model.named_parameters():
            if is_lora_name(name):
                param.normal_(0.0, 0.2)  # B is zero at injection: a trained adapter is not
    named = [(name, t.detach()) for name, t in model.named_parameters()]
    return list(iter_merged(named, scaling=8 / 4))
