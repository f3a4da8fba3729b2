"""The conversations of an SFT run: parquet/jsonl files, or the synthetic arith task as chat pairs.

With no ``data.train_files`` the synthetic ``arith`` task is written as chat conversations (user:
the arith prompt, assistant: the answer) to ``RUN/data/{train,val}.jsonl`` and read back like any
user file. The problems are ``rlkit.data_prep.arith.generate_splits(data.synthetic_size,
data.synthetic_size // 8, trainer.seed)``, the same call the RL trainer makes, so with the same
size and seed the SFT training problems are the RL training prompts and the RL validation
prompts stay unseen.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlkit.config.schema import RlkitConfig
from rlkit.data.batch import Batch
from rlkit.data.sampler import PromptSampler
from rlkit.data.sft_dataset import SFTDataset, collate_sft
from rlkit.errors import UserError
from rlkit.training.sft import pad_for_ranks, sft_batch


@dataclass
class SFTData:
    """Training conversations with their seeded sampler, and the validation conversations."""

    train: SFTDataset
    val: SFTDataset | None
    sampler: PromptSampler
    pad_id: int

    @property
    def num_truncated(self) -> int:
        return self.train.num_truncated + (self.val.num_truncated if self.val is not None else 0)

    def next_train_batch(self, world: int) -> Batch:
        """The next ``data.batch_size`` conversations, padded with loss-free rows to a multiple of ``world``."""
        return self._batch([self.train[i] for i in self.sampler.next_batch()], world)

    def val_batches(self, size: int, world: int) -> Iterator[Batch]:
        assert self.val is not None
        for start in range(0, len(self.val), size):
            items = [self.val[i] for i in range(start, min(start + size, len(self.val)))]
            yield self._batch(items, world)

    def _batch(self, items: list[Any], world: int) -> Batch:
        columns = collate_sft(items, self.pad_id)
        return pad_for_ranks(
            sft_batch(columns["input_ids"], columns["attention_mask"], columns["loss_mask"]), world
        )


def arith_conversations(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """RL-schema arith rows as SFT rows: the prompt's messages, then the answer as the assistant turn."""
    return [
        {
            "messages": [
                *row["prompt"],
                {"role": "assistant", "content": str(row["reward_model"]["ground_truth"])},
            ]
        }
        for row in rows
    ]


def write_synthetic_files(cfg: RlkitConfig, out_dir: Path) -> tuple[Path, Path]:
    """Write the synthetic arith conversations to ``out_dir/train.jsonl`` and ``out_dir/val.jsonl``.

    Raises:
        UserError: ``data.synthetic`` is not ``arith`` (other tasks have no reference answers).
    """
    if cfg.data.synthetic != "arith":
        raise UserError(
            f"rlkit sft has no reference answers for data.synthetic={cfg.data.synthetic}",
            hint="use data.synthetic=arith, or pass data.train_files with messages or prompt/response columns",
        )
    from rlkit.data_prep import arith

    size = cfg.data.synthetic_size
    splits = arith.generate_splits(size, max(size // 8, 1), cfg.trainer.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = (out_dir / "train.jsonl", out_dir / "val.jsonl")
    for path, split in zip(paths, ("train", "test"), strict=True):
        lines = [json.dumps(row) for row in arith_conversations(splits[split])]
        path.write_text("\n".join(lines) + "\n")
    return paths


def build_sft_data(cfg: RlkitConfig, tokenizer: Any, run_dir: Path) -> SFTData:
    """Datasets and sampler of ``cfg.data`` / ``cfg.sft``; without train files, synthetic arith chats."""
    d, s = cfg.data, cfg.sft
    train_files, val_files = [str(f) for f in d.train_files], [str(f) for f in d.val_files]
    columns: dict[str, Any] = {
        "messages_key": s.messages_key,
        "prompt_key": s.prompt_key,
        "response_key": s.response_key,
    }
    synthetic = not train_files
    if synthetic:
        train_path, val_path = write_synthetic_files(cfg, run_dir / "data")
        train_files, val_files = [str(train_path)], val_files or [str(val_path)]
    opts: dict[str, Any] = {
        "max_length": s.max_length,
        "truncation": s.truncation,
        "chat_template": d.chat_template,
    }
    plain: dict[str, Any] = {"messages_key": "messages", "prompt_key": None, "response_key": None}
    train = SFTDataset(train_files, tokenizer, **opts, **(plain if synthetic else columns))
    val_columns = plain if synthetic and not d.val_files else columns
    val = SFTDataset(val_files, tokenizer, **opts, **val_columns) if val_files else None
    sampler = PromptSampler(len(train), d.batch_size, seed=cfg.trainer.seed, shuffle=d.shuffle)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return SFTData(train, val, sampler, int(pad_id))
