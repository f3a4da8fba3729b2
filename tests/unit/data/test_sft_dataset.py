"""SFTDataset: the loss mask covers exactly the assistant replies (+ end-of-turn), truncation is counted."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rlkit.data.sft_dataset import SFTDataset, assistant_token_mask, collate_sft
from rlkit.errors import UserError
from rlkit.models.tokenizer import build_tokenizer

TOKENIZER = build_tokenizer()
CONVERSATION = [
    {"role": "system", "content": "You add numbers."},
    {"role": "user", "content": "2+2="},
    {"role": "assistant", "content": "4, héllo ✓\n"},
    {"role": "user", "content": "and 3+3?"},
    {"role": "assistant", "content": "6 日本"},
]


def _masked_runs(ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Decoded text of each contiguous run of masked-in tokens."""
    runs: list[list[int]] = []
    previous = 0
    for token, bit in zip(ids.tolist(), mask.tolist(), strict=True):
        if bit and not previous:
            runs.append([])
        if bit:
            runs[-1].append(token)
        previous = bit
    return [TOKENIZER.decode(run) for run in runs]


def test_mask_is_exactly_the_assistant_replies(tmp_path: Path) -> None:
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": CONVERSATION}]), path)
    dataset = SFTDataset([str(path)], TOKENIZER, max_length=512)
    item = dataset[0]
    assert item.input_ids.shape == item.loss_mask.shape and item.input_ids.dtype == torch.long
    assert item.input_ids.tolist() == TOKENIZER.apply_chat_template(
        CONVERSATION, tokenize=True, return_dict=False
    )
    assert _masked_runs(item.input_ids, item.loss_mask) == ["4, héllo ✓\n<|im_end|>", "6 日本<|im_end|>"]
    assert dataset.num_truncated == 0


def test_prompt_response_columns_from_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    rows = [{"q": "23+45=", "a": "68"}, {"q": [{"role": "user", "content": "1+1="}], "a": "2"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = SFTDataset([str(path)], TOKENIZER, max_length=64, prompt_key="q", response_key="a")
    assert [_masked_runs(it.input_ids, it.loss_mask) for it in dataset.items] == [
        ["68<|im_end|>"],
        ["2<|im_end|>"],
    ]


@pytest.mark.parametrize("truncation", ["right", "left"])
def test_truncation_is_counted(tmp_path: Path, truncation: str, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "chat.parquet"
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    pq.write_table(pa.Table.from_pylist([{"messages": CONVERSATION}, {"messages": short}]), path)
    full = TOKENIZER.apply_chat_template(CONVERSATION, tokenize=True, return_dict=False)
    with caplog.at_level(logging.INFO, logger="rlkit.data.sft_dataset"):
        dataset = SFTDataset([str(path)], TOKENIZER, max_length=40, truncation=truncation)
    assert dataset.num_truncated == 1 and "truncated 1 of 2 examples to 40 tokens" in caplog.text
    kept = dataset[0].input_ids.tolist()
    assert kept == (full[:40] if truncation == "right" else full[-40:])
    assert len(dataset[1].input_ids) < 40
    with pytest.raises(UserError, match="max_length=40"):
        SFTDataset([str(path)], TOKENIZER, max_length=40, truncation="error")


def test_bad_inputs_are_user_errors(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    pq.write_table(pa.Table.from_pylist([{"text": "hello"}]), path)
    with pytest.raises(UserError, match="columns present: text"):
        SFTDataset([str(path)], TOKENIZER, max_length=64)
    no_reply = tmp_path / "no_reply.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": [{"role": "user", "content": "hi"}]}]), no_reply)
    with pytest.raises(UserError, match="no assistant message"):
        SFTDataset([str(no_reply)], TOKENIZER, max_length=64)
    with pytest.raises(UserError, match="both"):
        SFTDataset([str(path)], TOKENIZER, max_length=64, prompt_key="text")


def test_template_that_rewrites_history_is_refused() -> None:
    tokenizer = build_tokenizer()
    # renders the number of messages first, so no rendering of a prefix is a prefix of the whole
    tokenizer.chat_template = "{{ messages|length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(UserError, match="differently"):
        assistant_token_mask(tokenizer, CONVERSATION[1:3])


def test_collate_right_pads(tmp_path: Path) -> None:
    path = tmp_path / "chat.parquet"
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    pq.write_table(pa.Table.from_pylist([{"messages": CONVERSATION}, {"messages": short}]), path)
    dataset = SFTDataset([str(path)], TOKENIZER, max_length=512)
    batch = collate_sft(dataset.items, pad_id=TOKENIZER.pad_token_id)
    long_len, short_len = len(dataset[0].input_ids), len(dataset[1].input_ids)
    assert batch["input_ids"].shape == (2, long_len)
    assert batch["attention_mask"][1].sum().item() == short_len
    assert (
        batch["loss_mask"][1, short_len:].eq(0).all()
        and batch["input_ids"][1, short_len:].eq(TOKENIZER.pad_token_id).all()
    )
    assert batch["position_ids"][1, :short_len].tolist() == list(range(short_len))
    assert batch["position_ids"][1, short_len:].eq(0).all()


def test_plain_text_rows_without_a_chat_template(tmp_path: Path) -> None:
    """No template (false, or null with a template-less tokenizer): prompt text, then reply + eos."""
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"q": "23+45=", "a": "68"}) + "\n")
    base = build_tokenizer(chat_template=False)
    for tokenizer, setting in ((TOKENIZER, False), (base, None)):
        dataset = SFTDataset(
            [str(path)], tokenizer, max_length=64, prompt_key="q", response_key="a", chat_template=setting
        )
        item = dataset[0]
        assert TOKENIZER.decode(item.input_ids) == "23+45=68<|endoftext|>"
        assert _masked_runs(item.input_ids, item.loss_mask) == ["68<|endoftext|>"]
    multi = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": CONVERSATION}]), multi)
    with pytest.raises(UserError, match="one assistant reply"):
        SFTDataset([str(multi)], base, max_length=512)
    with pytest.raises(UserError, match="no chat template"):
        SFTDataset([str(path)], base, max_length=64, prompt_key="q", response_key="a", chat_template=True)
