"""SFT run data: synthetic arith chats, user files with prompt/response columns, batches padded for ranks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlkit.config.compose import to_dataclass
from rlkit.config.load import load_config
from rlkit.data_prep import arith
from rlkit.errors import UserError
from rlkit.models import build_tokenizer
from rlkit.trainer.sft import sft_settings
from rlkit.trainer.sft_data import arith_conversations, build_sft_data

TOKENIZER = build_tokenizer()


def _cfg(*overrides: str):
    return to_dataclass(load_config("sft", overrides=list(overrides), command="sft"))


def test_synthetic_arith_chats_are_the_rl_problems(tmp_path: Path) -> None:
    cfg = _cfg("data.synthetic_size=40", "data.batch_size=8")
    data = build_sft_data(cfg, TOKENIZER, tmp_path)
    rl = arith.generate_splits(40, 5, cfg.trainer.seed)
    assert len(data.train) == 40 and data.val is not None and len(data.val) == 5
    first = json.loads((tmp_path / "data" / "train.jsonl").read_text().splitlines()[0])
    assert first == arith_conversations(rl["train"][:1])[0]
    assert first["messages"][0]["content"] == rl["train"][0]["prompt"][0]["content"]
    item = data.train[0]
    answer = TOKENIZER.decode(item.input_ids[item.loss_mask.bool()].tolist())
    assert answer == rl["train"][0]["reward_model"]["ground_truth"] + "<|im_end|>"
    batch = data.next_train_batch(world=3)  # 8 rows -> 9, the extra one without loss tokens
    assert len(batch) == 9 and batch["response_mask"][8].sum() == 0
    val = list(data.val_batches(size=4, world=1))
    assert [len(b) for b in val] == [4, 1]


def test_user_files_with_prompt_response_columns(tmp_path: Path) -> None:
    rows = [{"q": f"{i}+1=", "a": str(i + 1)} for i in range(6)] + [{"q": "x" * 80, "a": "long"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(
        f"data.train_files=[{path}]",
        "data.batch_size=2",
        "sft.prompt_key=q",
        "sft.response_key=a",
        "sft.max_length=40",
    )
    data = build_sft_data(cfg, TOKENIZER, tmp_path / "run")
    assert len(data.train) == 7 and data.val is None and data.num_truncated == 1
    assert not (tmp_path / "run" / "data").exists()


def test_synthetic_countdown_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no reference answers"):
        build_sft_data(_cfg("data.synthetic=countdown"), TOKENIZER, tmp_path)


def test_settings_map_the_config() -> None:
    cfg = _cfg("model.lora_rank=8", "model.lora_target_modules=[q_proj]", "trainer.total_steps=7")
    settings = sft_settings(cfg, "cpu")
    assert settings["lora_rank"] == 8 and settings["lora_target_modules"] == ["q_proj"]
    assert settings["total_steps"] == 7 and settings["lr"] == cfg.actor.lr and settings["dtype"] == "float32"
