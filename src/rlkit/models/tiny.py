"""Built-in tiny models: Qwen2-architecture decoders over the byte tokenizer, named ``builtin:NAME``.

- ``builtin:tiny``: the architecture only, randomly initialised with the run's seed. The tests use
  it, and the embedded ``rlkit sft`` trains it from scratch.
- ``builtin:tiny-arith``: the same architecture with weights shipped in the package
  (``rlkit/models/assets/tiny-arith/``: ``config.json`` plus safetensors, written by ``rlkit sft``).
  It is ``builtin:tiny`` fine-tuned on the synthetic arith task, the warm start of the embedded RL
  default (``rlkit train grpo`` with no argument). docs/train.md says how it was made and how to
  rebuild it (``python scripts/build_tiny_arith.py``).
- ``builtin:tiny-tools``: ``builtin:tiny-arith`` fine-tuned by ``rlkit sft`` on calculator
  tool-call traces of the ``arith_tools`` task, the warm start of the tool-use RL recipe
  (``rlkit/models/assets/tiny-tools/``; docs/tools.md, ``python scripts/build_tiny_tools.py``).
- ``builtin:tiny-teacher``: a larger architecture (8 layers, intermediate 512: 2.0M parameters, 2.4x
  the others' 0.83M; same tokenizer and vocabulary), randomly initialised.
- ``builtin:tiny-arith-teacher``: ``builtin:tiny-teacher`` trained from scratch by the embedded SFT run
  (``rlkit sft model.path=builtin:tiny-teacher``), shipped in bf16 (``assets/tiny-arith-teacher/``,
  its build in ``build.json``): the teacher of the embedded distillation recipe (``rlkit train
  distill``; docs/distill.md says how to rebuild it with ``scripts/build_tiny_arith.py``).
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
    "tiny-arith": (128, 4, 4, 2, 32, 384),
    "tiny-tools": (128, 4, 4, 2, 32, 384),
    "tiny-teacher": (128, 8, 4, 2, 32, 512),
    "tiny-arith-teacher": (128, 8, 4, 2, 32, 512),
}
# built-in models whose weights ship with the package (the others are random-init architectures)
PACKAGED = ("tiny-arith", "tiny-tools", "tiny-arith-teacher")


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
    """The folder of a built-in model's packaged weights; None for a random-init built-in.

    Raises:
        UserError: the model should ship with weights but the installed package lacks them.
    """
    name = builtin_name(name)
    if name not in PACKAGED:
        return None
    folder = ASSETS_DIR / name
    if not (folder / "config.json").is_file():
        raise UserError(
            f"model.path: the weights of {BUILTIN_PREFIX}{name} are missing from this install ({folder})",
            hint=f"reinstall rlkit, or rebuild them with `python scripts/build_tiny_arith.py --name {name}`",
        )
    return folder
