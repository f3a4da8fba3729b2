"""Native decoder models, Hugging Face checkpoint I/O, tokenizers, tiny built-ins and fused log-probs.

Entry points: ``load_causal_lm`` (native Llama/Qwen2/Qwen3, transformers fallback otherwise),
``ValueModel.from_causal_lm``, ``save_hf``/``load_state_dict``/``load_hf_config``,
``load_tokenizer``/``build_tokenizer``/``stop_token_ids``, ``tiny_config`` (``builtin:tiny``) and
``token_logprobs``.
"""

from __future__ import annotations

from rlkit.models.decoder import CausalLM, DecoderConfig, DecoderModel, pack_padded
from rlkit.models.hf_fallback import HFCausalLM
from rlkit.models.hf_io import (
    checkpoint_files,
    iter_checkpoint_tensors,
    load_hf_config,
    load_state_dict,
    save_hf,
    write_hf_folder,
)
from rlkit.models.loader import (
    copy_checkpoint,
    init_weights,
    load_causal_lm,
    materialize,
    model_config,
    native_unsupported_reason,
)
from rlkit.models.logprobs import token_logprobs
from rlkit.models.tiny import TINY_PATH, packaged_checkpoint, tiny_config
from rlkit.models.tokenizer import build_tokenizer, load_tokenizer, stop_token_ids
from rlkit.models.value import ValueModel, load_value_model

__all__ = [
    "TINY_PATH",
    "CausalLM",
    "DecoderConfig",
    "DecoderModel",
    "HFCausalLM",
    "ValueModel",
    "build_tokenizer",
    "checkpoint_files",
    "copy_checkpoint",
    "init_weights",
    "iter_checkpoint_tensors",
    "load_causal_lm",
    "load_hf_config",
    "load_state_dict",
    "load_tokenizer",
    "load_value_model",
    "materialize",
    "model_config",
    "native_unsupported_reason",
    "pack_padded",
    "packaged_checkpoint",
    "save_hf",
    "stop_token_ids",
    "tiny_config",
    "token_logprobs",
    "write_hf_folder",
]
