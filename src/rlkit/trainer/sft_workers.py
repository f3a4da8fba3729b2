"""The role an SFT worker group hosts, and how the controller calls it.

One :class:`SFTWorker` per device wraps an :class:`~rlkit.training.sft.SFTRole`; each method declares
how the controller spreads its arguments over the ranks (:func:`rlkit.controller.dispatch`).
"""

from __future__ import annotations

from typing import Any

from rlkit.controller.dispatch import dispatch
from rlkit.controller.worker import worker_context
from rlkit.data.batch import Batch
from rlkit.models import load_tokenizer, write_hf_folder
from rlkit.training.lora import write_adapter_folder
from rlkit.training.sft import SFTRole


class SFTWorker:
    """The model being fine-tuned (FSDP2, optionally LoRA)."""

    def __init__(self, **settings: Any) -> None:
        self.role = SFTRole(**settings)

    @dispatch("shard")
    def train_step(self, batch: Batch) -> dict[str, float]:
        return self.role.train_step(batch)

    @dispatch("shard")
    def eval_loss(self, batch: Batch) -> dict[str, float]:
        return self.role.eval_loss(batch)

    @dispatch("rank0")
    def export_hf(self, out_dir: str, tokenizer_path: str) -> None:
        """Write the weights (adapters merged) as a Hugging Face folder: all ranks gather, rank 0 writes."""
        tensors = dict(self.role.named_full_tensors(dtype=None))
        if worker_context().rank == 0:
            tokenizer = load_tokenizer(tokenizer_path)
            write_hf_folder(out_dir, self.role.hf_config, tensors, tokenizer=tokenizer)

    @dispatch("rank0")
    def export_adapter(self, out_dir: str, base_model: str) -> None:
        """Write the LoRA adapters as a PEFT adapter folder for ``base_model`` (all ranks gather)."""
        tensors = self.role.adapter_tensors()
        if worker_context().rank == 0:
            write_adapter_folder(
                out_dir,
                tensors,
                rank=self.role.lora_rank,
                alpha=self.role.lora_alpha,
                target_modules=self.role.lora_targets,
                base_model=base_model,
            )
