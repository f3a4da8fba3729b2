"""The built-in byte-level tokenizer, its ChatML template, stop tokens and load_tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlkit.errors import UserError
from rlkit.models import build_tokenizer, load_tokenizer, stop_token_ids, tiny_config
from rlkit.models.tokenizer import BUILTIN_EOS_ID, BUILTIN_VOCAB_SIZE

SAMPLES = [
    "",
    "hello world",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\n",
    "héllo wörld ñ ß",
    "日本語のテキスト 中文 한국어",
    "emoji 🤗🚀 and ZWJ 👩‍👩‍👧",
    "math: ∑ x² ≤ ∞, 3/4 = 0.75",
    "special text <|endoftext|> inside <|im_start|>user",
    "\x00\x01 control \u200b zero-width",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_any_unicode(text: str) -> None:
    tokenizer = build_tokenizer()
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_ids_are_bytes_then_special_tokens() -> None:
    tokenizer = build_tokenizer()
    assert tokenizer.encode("aé", add_special_tokens=False) == [97, 0xC3, 0xA9]
    assert len(tokenizer) == BUILTIN_VOCAB_SIZE == 259
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == BUILTIN_EOS_ID == 256
    assert tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [257, 258]
    assert tokenizer.bos_token is None
    assert stop_token_ids(tokenizer) == [256, 258]
    cfg = tiny_config()
    assert cfg.vocab_size == 320 and cfg.eos_token_id == cfg.pad_token_id == 256


def test_chat_template_renders_chatml() -> None:
    tokenizer = build_tokenizer()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3+3?"},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\nand 3+3?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    no_prompt = tokenizer.apply_chat_template(messages[1:2], tokenize=False, add_generation_prompt=False)
    assert no_prompt == "<|im_start|>user\n2+2?<|im_end|>\n"  # no default system prompt
    ids = tokenizer.encode(rendered, add_special_tokens=False)
    assert ids[0] == 257 and ids.count(258) == 4


def test_saved_tokenizer_loads_back_identically(tmp_path: Path) -> None:
    build_tokenizer().save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.encode("héllo 🤗<|im_end|>", add_special_tokens=False) == build_tokenizer().encode(
        "héllo 🤗<|im_end|>", add_special_tokens=False
    )
    assert loaded.chat_template == build_tokenizer().chat_template
    assert stop_token_ids(loaded) == [256, 258]


def test_load_tokenizer_builtin_pad_fallback_and_errors(tmp_path: Path) -> None:
    assert len(load_tokenizer("builtin:tiny")) == 259
    with pytest.raises(UserError, match="unknown built-in model"):
        load_tokenizer("builtin:huge")
    with pytest.raises(UserError, match="no such folder"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(UserError, match="cannot load a tokenizer"):
        load_tokenizer(tmp_path)
    no_pad = build_tokenizer()
    no_pad.pad_token = None
    no_pad.save_pretrained(tmp_path / "nopad")
    loaded = load_tokenizer(tmp_path / "nopad")
    assert loaded.pad_token == loaded.eos_token == "<|endoftext|>"


_CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "evaluate arithmetic",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
    },
}


def test_chat_template_renders_tool_calls_and_results_in_qwen_format() -> None:
    messages = [
        {"role": "user", "content": "12*34="},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "12*34"}}}
            ],
        },
        {"role": "tool", "content": "408"},
        {"role": "tool", "content": "ok"},
        {"role": "assistant", "content": "408"},
    ]
    text = build_tokenizer().apply_chat_template(messages, tools=[_CALCULATOR], tokenize=False)
    assert text == (
        "<|im_start|>system\ntools:\ncalculator(expression): evaluate arithmetic<|im_end|>\n"
        "<|im_start|>user\n12*34=<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>{"name": "calculator", "arguments": {"expression": "12*34"}}'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>408</tool_response>\n<tool_response>ok</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n408<|im_end|>\n"
    )


def test_chat_template_without_tools_is_plain_chatml() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1="}]
    text = build_tokenizer().apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert (
        text
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1+1=<|im_end|>\n<|im_start|>assistant\n"
    )
