"""The prompts of a run: parquet files, or the synthetic task generated on the fly."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from rlkit.config.schema import RlkitConfig
from rlkit.data.batch import Batch
from rlkit.data.rl_dataset import RLDataset, collate_prompts
from rlkit.data.sampler import PromptSampler
from rlkit.errors import UserError

logger = logging.getLogger(__name__)


@dataclass
class TrainData:
    """Training prompts with their seeded sampler, and the validation prompts."""

    train: RLDataset
    val: RLDataset | None
    sampler: PromptSampler
    pad_id: int

    def next_train_batch(self) -> Batch:
        items = [self.train[i] for i in self.sampler.next_batch()]
        return _to_batch(collate_prompts(items, self.pad_id))

    def val_batches(self, batch_size: int) -> Iterator[Batch]:
        assert self.val is not None
        for start in range(0, len(self.val), batch_size):
            items = [self.val[i] for i in range(start, min(start + batch_size, len(self.val)))]
            yield _to_batch(collate_prompts(items, self.pad_id))


def _to_batch(columns: dict[str, Any]) -> Batch:
    tensors = {k: v for k, v in columns.items() if isinstance(v, torch.Tensor)}
    return Batch(tensors=tensors, non_tensors={k: v for k, v in columns.items() if k not in tensors})


def _synthetic_rows(cfg: RlkitConfig) -> dict[str, list[dict[str, Any]]]:
    from rlkit.data_prep import arith, arith_tools, countdown

    size = cfg.data.synthetic_size
    task = {"arith": arith, "countdown": countdown, "arith_tools": arith_tools}[cfg.data.synthetic]
    return task.generate_splits(size, max(size // 8, 1), cfg.trainer.seed)


def build_train_data(cfg: RlkitConfig, tokenizer: Any) -> TrainData:
    """Datasets and sampler of ``cfg.data``; without train files, the synthetic task ``data.synthetic``."""
    d = cfg.data
    opts = {
        "max_prompt_length": d.max_prompt_length,
        "prompt_key": d.prompt_key,
        "reward_fn_key": d.reward_fn_key,
        "chat_template": d.chat_template,
        # the column naming each row's distillation teacher travels with its prompt
        "columns": (cfg.algo.distill.teacher_key,) if cfg.algo.distill.teachers else (),
    }
    if d.train_files:
        train = RLDataset(list(d.train_files), tokenizer, **opts)
        val = RLDataset(list(d.val_files), tokenizer, **opts) if d.val_files else None
    else:
        rows = _synthetic_rows(cfg)
        logger.info(
            "no data.train_files: generating the synthetic %s task (%d prompts)",
            d.synthetic,
            len(rows["train"]),
        )
        train = RLDataset.from_rows(rows["train"], tokenizer, **opts)
        val = RLDataset.from_rows(rows["test"], tokenizer, **opts) if not d.val_files else None
        if d.val_files:
            val = RLDataset(list(d.val_files), tokenizer, **opts)
    if len(train) < d.batch_size:
        raise UserError(
            f"only {len(train)} training prompts fit data.max_prompt_length={d.max_prompt_length}, "
            f"fewer than data.batch_size={d.batch_size}",
            hint="raise data.max_prompt_length or lower data.batch_size",
        )
    sampler = PromptSampler(len(train), d.batch_size, seed=cfg.trainer.seed, shuffle=d.shuffle)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return TrainData(train, val, sampler, pad_id)
