"""Data: RL and SFT datasets over parquet, chat templating, prompt sampling, and ``rlkit data``.

- :class:`RLDataset` / :func:`collate_prompts`: verl-schema prompts, tokenized and length-filtered.
- :class:`PromptSampler`: seeded per-epoch shuffles with exact resume.
- :class:`SFTDataset` / :func:`collate_sft`: conversations with an assistant-only loss mask.
- :func:`prepare_dataset` (``rlkit data``) and :func:`download` (``rlkit download``).
- :mod:`rlkit.data.batch`: the batch type that moves between controller and workers.

Names are imported on first use, so ``import rlkit.data.batch`` (every worker) and the CLI's
startup do not pay for pyarrow, datasets or transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PromptItem": "rlkit.data.rl_dataset",
    "RLDataset": "rlkit.data.rl_dataset",
    "collate_prompts": "rlkit.data.rl_dataset",
    "PromptSampler": "rlkit.data.sampler",
    "SFTDataset": "rlkit.data.sft_dataset",
    "SFTItem": "rlkit.data.sft_dataset",
    "collate_sft": "rlkit.data.sft_dataset",
    "prepare_dataset": "rlkit.data.prepare",
    "download": "rlkit.data.hub",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rlkit.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
