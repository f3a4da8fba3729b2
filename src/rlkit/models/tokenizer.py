"""Tokenizers: the built-in byte-level tokenizer of the tiny model, and loading a model's own.

The built-in tokenizer needs no file and no network: its vocabulary is the 256 bytes (id = byte
value) plus three special tokens, so any unicode string round-trips exactly, and it carries a
ChatML chat template (Qwen style, no default system prompt) so chat-formatted datasets work with it.
"""

from __future__ import annotations

import os
from functools import cache
from typing import TYPE_CHECKING

from rlkit.errors import UserError

if TYPE_CHECKING:  # transformers takes seconds to import; only the functions below need it
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
BUILTIN_PREFIX = "builtin:"
# The built-in tokenizer's ids: 0-255 are the bytes, then these special tokens in this order.
SPECIAL_TOKENS = (EOS_TOKEN, IM_START, IM_END)
BUILTIN_EOS_ID = 256
BUILTIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)

# Qwen2.5's ChatML template without the default system prompt. Tool calling follows Qwen2.5's
# format (Hermes: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` in assistant turns,
# tool results as ``<tool_response>`` blocks in a user turn) with a compact tools preamble (one line
# per tool, ``name(arg, ...): description``) so the byte-level tiny model's prompts stay short.
# Messages without tools render exactly as the plain ChatML template always did.
CHATML_TEMPLATE = (
    "{%- set ns = namespace(start=0) %}"
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{{- messages[0]['content'] + '\\n' }}{%- set ns.start = 1 %}"
    "{%- endif %}"
    "{{- 'tools:' }}"
    "{%- for tool in tools %}{%- set f = tool['function'] if tool['function'] is defined else tool %}"
    "{{- '\\n' + f['name'] + '(' + (f['parameters']['properties'] | list | join(', ')"
    " if f['parameters'] is defined and f['parameters']['properties'] is defined else '') + ')' }}"
    "{%- if f['description'] %}{{- ': ' + f['description'] }}{%- endif %}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages[ns.start:] %}"
    "{%- if message['role'] == 'assistant' and message['tool_calls'] %}"
    "{{- '<|im_start|>assistant\\n' + (message['content'] or '') }}"
    "{%- for call in message['tool_calls'] %}{%- set c = call['function'] if call['function'] is defined else call %}"
    "{{- '<tool_call>{\"name\": \"' + c['name'] + '\", \"arguments\": ' }}"
    "{{- (c['arguments'] if c['arguments'] is string else c['arguments'] | tojson) + '}</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{%- if loop.first or loop.previtem['role'] != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>' + message['content'] + '</tool_response>' }}"
    "{%- if loop.last or loop.nextitem['role'] != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@cache
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def build_tokenizer(chat_template: bool = True) -> PreTrainedTokenizerFast:
    """The built-in byte-level tokenizer (ids 0-255 are bytes, then the special tokens).

    It carries the ChatML template unless ``chat_template`` is False (a plain base-model tokenizer).

    Special tokens: ``<|endoftext|>`` (eos and pad, id 256), ``<|im_start|>`` (257) and
    ``<|im_end|>`` (258). No bos token. ``decode(encode(s)) == s`` for every string ``s``
    (special-token text inside ``s`` becomes the special token and decodes back to the same text).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 20,
    )
    if chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def load_tokenizer(path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """The tokenizer of a model: the built-in one for ``builtin:*`` paths, else the folder's own.

    A Hub id ``ORG/NAME`` is resolved as a model path is (:func:`rlkit.data.hub.resolve_model_path`:
    the Hugging Face cache, downloaded into it once). The pad token is set to the eos token when the
    tokenizer has none, as verl does.

    Raises:
        UserError: the folder does not exist or holds no loadable tokenizer; a Hub id that is not
            cached while offline, or cannot be downloaded.
    """
    from transformers import AutoTokenizer

    from rlkit.data.hub import resolve_model_path

    path = os.fspath(path)
    if path.startswith(BUILTIN_PREFIX):
        from rlkit.models.tiny import builtin_name

        builtin_name(path)  # validates the name
        return build_tokenizer()
    folder = os.path.expanduser(resolve_model_path(path, key="tokenizer"))
    if not os.path.isdir(folder):
        raise UserError(
            f"tokenizer: no such folder {path!r}",
            hint="pass a model folder, a Hub id ORG/NAME or builtin:tiny",
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # transformers raises many types (OSError, ValueError, HFValidationError)
        raise UserError(
            f"tokenizer: cannot load a tokenizer from {path!r}: {exc}",
            hint="the folder needs tokenizer.json or tokenizer_config.json (as save_pretrained writes)",
        ) from exc
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end a generation: eos, plus ``<|im_end|>`` when the vocabulary has it.

    A chat model ends its turn with ``<|im_end|>`` and may never emit eos, so the rollout engine
    must stop on either.
    """
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id and im_end not in ids:
        ids.append(im_end)
    return ids
