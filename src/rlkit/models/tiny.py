"""Built-in tiny models: ``builtin:tiny`` is a Qwen2-architecture decoder over the byte tokenizer.

It is the model of the embedded default run (``rlkit train grpo`` with no argument) and of the
tests. ``load_causal_lm("builtin:tiny", init="pretrained")`` loads the packaged checkpoint in
``rlkit/models/assets/tiny/`` when the package ships one (a ``config.json`` plus safetensors
weights written by ``save_hf``); otherwise there is nothing pretrained to load and the model is
randomly initialised with the given seed, exactly as ``init="random"`` would.
"""

from __future__ import annotations

from pathlib import Path

from rlkit.errors import UserError
from rlkit.models.decoder import DecoderConfig
from rlkit.models.tokenizer import BUILTIN_EOS_ID, BUILTIN_PREFIX, BUILTIN_VOCAB_SIZE

TINY_PATH = "builtin:tiny"
ASSETS_DIR = Path(__file__).parent / "assets"

# name -> (hidden, layers, heads, kv heads, head dim, intermediate)
_SIZES: dict[str, tuple[int, int, int, int, int, int]] = {
    "tiny": (128, 4, 4, 2, 32, 384),
}


def builtin_name(path: str) -> str:
    """``builtin:tiny`` -> ``tiny``; a UserError naming the choices for an unknown name."""
    name = path[len(BUILTIN_PREFIX) :] if path.startswith(BUILTIN_PREFIX) else path
    if name not in _SIZES:
        choices = ", ".join(BUILTIN_PREFIX + n for n in _SIZES)
        raise UserError(f"model.path: unknown built-in model {path!r}", hint=f"built-in models: {choices}")
    return name


def tiny_config(name: str = "tiny") -> DecoderConfig:
    """Architecture of a built-in model (Qwen2 with qkv bias, tied embeddings).

    The vocabulary is the built-in tokenizer's size rounded up to a multiple of 64 (the extra rows
    are never produced by the tokenizer; rounding keeps matmuls aligned).
    """
    hidden, layers, heads, kv_heads, head_dim, inter = _SIZES[builtin_name(name)]
    vocab = -(-BUILTIN_VOCAB_SIZE // 64) * 64
    return DecoderConfig(
        architecture="qwen2",
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        attention_bias=True,
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=BUILTIN_EOS_ID,
        pad_token_id=BUILTIN_EOS_ID,
    )


def packaged_checkpoint(name: str = "tiny") -> Path | None:
    """The folder of the packaged pretrained checkpoint of a built-in model, if the package has one."""
    folder = ASSETS_DIR / builtin_name(name)
    return folder if (folder / "config.json").is_file() else None
