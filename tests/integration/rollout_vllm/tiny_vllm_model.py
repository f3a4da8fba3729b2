"""A tiny Qwen2 Hugging Face checkpoint vLLM can run (head size 32: vLLM's CPU attention needs >= 32)."""

from __future__ import annotations

from pathlib import Path

import torch

from rlkit.models import build_tokenizer
from rlkit.models.tokenizer import BUILTIN_EOS_ID, BUILTIN_VOCAB_SIZE


def tiny_hf_config():  # noqa: ANN201 (transformers is imported lazily)
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=BUILTIN_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=BUILTIN_EOS_ID,
        bos_token_id=BUILTIN_EOS_ID,
        pad_token_id=BUILTIN_EOS_ID,
        torch_dtype="float32",
    )


def save_tiny_model(out: Path, seed: int) -> Path:
    """Random weights (std 0.2, so samples are varied) and the built-in tokenizer, saved to ``out``."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(tiny_hf_config()).to(torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    model.save_pretrained(out)
    build_tokenizer(chat_template=False).save_pretrained(out)
    return out


def hf_greedy(path: Path, prompt: list[int], steps: int) -> tuple[list[int], list[float]]:
    """Greedy tokens and their log_softmax(logits) under transformers (the reference)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
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
