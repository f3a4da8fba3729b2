"""RLDataset: chat templating, counted length filtering, column errors; collate_prompts' layout."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rlkit.data.rl_dataset import RLDataset, collate_prompts
from rlkit.data.rl_parquet import rows_to_table
from rlkit.data_prep import arith, countdown
from rlkit.errors import UserError
from rlkit.models.tokenizer import build_tokenizer

TOKENIZER = build_tokenizer()
# ChatML tokens the built-in template puts around a user message's content bytes
TEMPLATE_OVERHEAD = len(
    TOKENIZER.apply_chat_template(
        [{"role": "user", "content": ""}], add_generation_prompt=True, return_dict=False
    )
)


def _write(path: Path, rows: list[dict]) -> str:
    pq.write_table(rows_to_table(rows), path)
    return str(path)


def _rows_with_lengths(lengths: list[int]) -> list[dict]:
    rows = arith.generate(len(lengths), seed=0)
    for row, length in zip(rows, lengths, strict=True):
        row["prompt"] = [{"role": "user", "content": "x" * length}]
    return rows


def test_items_are_chat_templated_prompts(tmp_path: Path) -> None:
    rows = arith.generate(8, seed=1)
    dataset = RLDataset([_write(tmp_path / "a.parquet", rows)], TOKENIZER, max_prompt_length=64)
    assert len(dataset) == 8 and dataset.num_filtered == 0
    item = dataset[0]
    content = rows[0]["prompt"][0]["content"]
    assert (
        TOKENIZER.decode(item.prompt_ids) == f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert item.prompt_ids == TOKENIZER.apply_chat_template(
        rows[0]["prompt"], add_generation_prompt=True, return_dict=False
    )
    assert item.data_source == "arith" and item.ground_truth == rows[0]["reward_model"]["ground_truth"]
    assert item.extra_info == {"split": "train", "index": 0} and item.raw_prompt == rows[0]["prompt"]


def test_raw_text_prompts_without_chat_template(tmp_path: Path) -> None:
    rows = arith.generate(3, seed=2)
    dataset = RLDataset(
        _write(tmp_path / "a.parquet", rows), TOKENIZER, max_prompt_length=16, chat_template=False
    )
    assert TOKENIZER.decode(dataset[1].prompt_ids) == rows[1]["prompt"][0]["content"]


def test_long_prompts_are_filtered_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lengths = [1, 5, 10, 11, 30, 3, 12, 10]
    files = [
        _write(tmp_path / "a.parquet", _rows_with_lengths(lengths[:4])),
        _write(tmp_path / "b.parquet", _rows_with_lengths(lengths[4:])),
    ]
    limit = TEMPLATE_OVERHEAD + 10
    with caplog.at_level(logging.INFO, logger="rlkit.data.rl_dataset"):
        dataset = RLDataset(files, TOKENIZER, max_prompt_length=limit)
    assert dataset.num_rows == 8 and dataset.num_filtered == 3 and len(dataset) == 5
    assert [item.index for item in dataset.items] == [0, 1, 2, 5, 7]
    assert all(len(item.prompt_ids) <= limit for item in dataset.items)
    assert f"filtered 3 of 8 prompts longer than data.max_prompt_length={limit}" in caplog.text
    with pytest.raises(UserError, match="none left"):
        RLDataset(files, TOKENIZER, max_prompt_length=TEMPLATE_OVERHEAD)


def test_missing_column_names_file_and_columns(tmp_path: Path) -> None:
    rows = arith.generate(2, seed=0)
    for row in rows:
        del row["reward_model"]
    path = str(tmp_path / "no_rm.parquet")
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(UserError) as err:
        RLDataset([path], TOKENIZER, max_prompt_length=64)
    assert "no_rm.parquet" in err.value.message and "'reward_model'" in err.value.message
    assert "columns present: data_source, prompt, ability, extra_info" in err.value.message
    with pytest.raises(UserError, match="no such data file"):
        RLDataset([str(tmp_path / "nope.parquet")], TOKENIZER, max_prompt_length=64)
    with pytest.raises(UserError, match="question"):
        RLDataset([path], TOKENIZER, max_prompt_length=64, prompt_key="question")


def test_message_without_content_is_one_user_error(tmp_path: Path) -> None:
    """A parquet prompt message lacking ``content`` (parquet stores it as null) is named, not a template crash."""
    rows = arith.generate(3, seed=0)
    rows[1]["prompt"] = [{"role": "system", "content": "be brief"}, {"role": "user", "content": None}]
    path = tmp_path / "no_content.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(UserError) as err:
        RLDataset([str(path)], TOKENIZER, max_prompt_length=64)
    assert err.value.message.endswith("no_content.parquet row 1: message 1 (user) has no 'content'")
    assert "content string" in (err.value.hint or "")


def test_tokenizer_without_chat_template() -> None:
    """Asked for a template it lacks: a user error; left to auto (None): the plain text."""
    plain = build_tokenizer(chat_template=False)
    rows = arith.generate(2, seed=0)
    with pytest.raises(UserError, match="chat template"):
        RLDataset.from_rows(rows, plain, max_prompt_length=64, chat_template=True)
    dataset = RLDataset.from_rows(rows, plain, max_prompt_length=64)
    assert plain.decode(dataset[0].prompt_ids) == rows[0]["prompt"][0]["content"]


def test_from_rows_keeps_structured_ground_truth() -> None:
    rows = countdown.generate(4, seed=0)
    dataset = RLDataset.from_rows(rows, TOKENIZER, max_prompt_length=512)
    assert dataset[2].ground_truth == rows[2]["reward_model"]["ground_truth"]
    assert set(dataset[2].ground_truth) == {"target", "numbers"}
    with pytest.raises(UserError, match="columns present"):
        RLDataset.from_rows([{"prompt": "hi"}], TOKENIZER, max_prompt_length=64)


def test_collate_left_pads() -> None:
    rows = _rows_with_lengths([3, 1, 6])
    dataset = RLDataset.from_rows(rows, TOKENIZER, max_prompt_length=64, chat_template=False)
    batch = collate_prompts([dataset[0], dataset[1], dataset[2]], pad_id=TOKENIZER.pad_token_id)
    prompts, mask = batch["prompts"], batch["prompt_attention_mask"]
    assert prompts.shape == (3, 6) and prompts.dtype == torch.long and mask.dtype == torch.long
    assert mask.sum(dim=1).tolist() == [3, 1, 6] and mask[:, -1].all()
    assert prompts[1, :5].eq(TOKENIZER.pad_token_id).all() and prompts[1, 5].item() == ord("x")
    for key in ("raw_prompt_ids", "data_source", "ground_truth", "extra_info", "raw_prompt", "index"):
        assert isinstance(batch[key], np.ndarray) and batch[key].dtype == object and batch[key].shape == (3,)
    assert batch["raw_prompt_ids"][1] == [ord("x")]
    from rlkit.data.batch import Batch

    tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    objects = {k: v for k, v in batch.items() if isinstance(v, np.ndarray)}
    assert len(Batch(tensors=tensors, non_tensors=objects)) == 3


def test_countdown_parquet_round_trip(tmp_path: Path) -> None:
    from rlkit.data.prepare import prepare_dataset

    result = prepare_dataset("countdown", out=tmp_path, options={"size": 20}, progress=False)
    truth_type = pq.read_schema(result.files[0]).field("reward_model").type.field("ground_truth").type
    assert truth_type == pa.struct([("target", pa.int64()), ("numbers", pa.list_(pa.int64()))])
    dataset = RLDataset([str(f) for f in result.files], TOKENIZER, max_prompt_length=512)
    assert len(dataset) == 20 and dataset[0].ground_truth == result.sample["reward_model"]["ground_truth"]


def test_extra_columns_travel_with_their_prompts(tmp_path: Path) -> None:
    """``columns`` (e.g. the distillation teacher's name) reach the collated batch; a missing value is None."""
    rows = arith.generate(3, seed=2)
    rows[0]["teacher"], rows[2]["teacher"] = "math", ""
    dataset = RLDataset(
        [_write(tmp_path / "a.parquet", rows)], TOKENIZER, max_prompt_length=64, columns=("teacher",)
    )
    batch = collate_prompts([dataset[i] for i in range(3)], pad_id=TOKENIZER.pad_token_id)
    assert batch["teacher"].dtype == object and list(batch["teacher"]) == ["math", None, ""]
    plain = RLDataset.from_rows(rows, TOKENIZER, max_prompt_length=64)
    assert "teacher" not in collate_prompts([plain[0]], pad_id=TOKENIZER.pad_token_id)
