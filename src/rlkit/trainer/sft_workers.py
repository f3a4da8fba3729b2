"""The role an SFT worker group hosts, and how the controller calls it.

One :class:`SFTWorker` per device wraps an :class:`~rlkit.training.sft.SFTRole`; each method declares
how the controller spreads its arguments over the ranks (:func:`rlkit.controller.dispatch`).

Checkpoints use :mod:`rlkit.ckpt` as the RL actor does: the role's shards are saved under the role
name ``actor`` (so ``rlkit ckpt merge`` and ``rlkit generate`` read SFT checkpoints unchanged), next
to each rank's RNG states and the convenience Hugging Face export ``hf/`` (and ``adapter/`` with LoRA).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlkit.ckpt import load_role_state, load_worker_rng, save_role_state, save_worker_rng
from rlkit.controller.dispatch import dispatch
from rlkit.controller.worker import worker_context
from rlkit.data.batch import Batch
from rlkit.models import load_tokenizer, write_hf_folder
from rlkit.training.lora import write_adapter_folder
from rlkit.training.sft import SFTRole

CHECKPOINT_ROLE = "actor"
"""The role name an SFT checkpoint stores the model under (what merge and generate read by default)."""
HF_EXPORT_DIR = "hf"
ADAPTER_EXPORT_DIR = "adapter"


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

    @dispatch("broadcast")
    def save_checkpoint(self, step_dir: str, tokenizer_path: str, base_model: str) -> None:
        """Write the role's shards (DCP), this process's RNG states and the exports into ``step_dir``.

        ``step_dir`` is the save's temporary folder, so the exports are part of the atomic save:
        ``hf/`` (adapters merged) always, ``adapter/`` (PEFT, base ``base_model``) with LoRA.
        """
        folder = Path(step_dir)
        save_role_state(self.role, folder / CHECKPOINT_ROLE)
        save_worker_rng(folder, worker_context().rank)
        self.export_hf(str(folder / HF_EXPORT_DIR), tokenizer_path)
        if self.role.lora_rank > 0:
            self.export_adapter(str(folder / ADAPTER_EXPORT_DIR), base_model)

    @dispatch("broadcast")
    def load_checkpoint(self, step_dir: str) -> str | None:
        """Restore the role and this process's RNG states; returns what is wrong instead, if anything."""
        problem = load_role_state(self.role, Path(step_dir) / CHECKPOINT_ROLE)
        if problem is None:
            load_worker_rng(Path(step_dir), worker_context().rank)
        return problem
