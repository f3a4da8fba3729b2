"""The SFT role: next-token cross-entropy on the assistant's tokens, packed, with optional LoRA.

Batch layout: SFT reuses the RL layout so the RL packing code runs unchanged. A conversation of
``L`` tokens becomes a one-token "prompt" (its first token, never padding) and a "response" of the
other ``L - 1`` tokens, right-padded; ``response_mask`` is the assistant loss mask shifted left by
one, so column ``t`` says whether token ``t + 1`` is trained on. The log-prob of response token
``t`` is read at packed position ``t`` (the token before it), as for RL. Only the positions that
predict a loss token reach the LM head (:func:`sft_micro_batches`), through the chunked
``token_logprobs`` (no full fp32 logits); the backbone sees each micro-batch packed end to end, and
``cu_seqlens`` keeps attention inside each conversation.

Loss: ``sft/loss`` is the mean negative log-likelihood over the loss tokens of the whole step's
batch on all ranks. Each micro-batch loss is its share of that mean (``agg_loss`` with the global
token count and ``dp_size``), so the update does not depend on how the batch is cut into
micro-batches or ranks.

Shape legend: B = rows of the rank's batch, L = padded conversation length, R = L - 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from rlkit.algos import agg_loss
from rlkit.data.batch import Batch
from rlkit.errors import UserError
from rlkit.hardware import device as hw
from rlkit.models import load_causal_lm
from rlkit.models.logprobs import default_chunk_tokens
from rlkit.training.distributed import all_reduce_max, all_reduce_sum, ensure_process_group, world_size
from rlkit.training.engine import EngineOptions, FSDPEngine
from rlkit.training.heads import PackedPolicy
from rlkit.training.lora import ALL_LINEAR, LoraRole
from rlkit.training.micro_batches import PackedMicroBatch, count_micro_batches, micro_batch_rows, pack_rows
from rlkit.training.passes import require_columns, response_len, rows_on
from rlkit.training.stats import MiniBatchStats

if TYPE_CHECKING:
    from typing_extensions import Unpack

SFT_COLUMNS = ("input_ids", "attention_mask", "responses", "response_mask")


def sft_batch(
    input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor, loss_mask_BL: torch.Tensor
) -> Batch:
    """Right-padded conversations (``collate_sft``'s output) in the RL layout with a one-token prompt.

    Returns:
        A Batch with ``prompts`` (B, 1), ``responses`` (B, R), ``input_ids``, ``attention_mask`` and
        ``position_ids`` (B, L), and ``response_mask`` (B, R) float: 1 where the next token is a
        loss token.

    Shape:
        input_ids_BL, attention_mask_BL, loss_mask_BL: (B, L) with L >= 2.
    """
    if input_ids_BL.dim() != 2 or input_ids_BL.shape[1] < 2:
        raise ValueError(
            f"SFT rows need at least 2 tokens, got input_ids of shape {tuple(input_ids_BL.shape)}"
        )
    attention = attention_mask_BL.long()
    if not bool(attention[:, 0].all()):
        raise ValueError("SFT rows must be right-padded with a real first token")
    response_mask = (loss_mask_BL[:, 1:] * attention[:, 1:]).float()
    return Batch(
        tensors={
            "prompts": input_ids_BL[:, :1],
            "responses": input_ids_BL[:, 1:],
            "input_ids": input_ids_BL,
            "attention_mask": attention,
            "position_ids": (attention.cumsum(-1) - 1).clamp(min=0),
            "response_mask": response_mask,
        }
    )


def pad_for_ranks(batch: Batch, world: int) -> Batch:
    """Pad to a multiple of ``world`` rows with one-token rows that carry no loss.

    The controller's ``shard`` dispatch pads by repeating rows, which would count those rows twice
    in the loss; padding here with rows cut to their first token and a zeroed ``response_mask``
    keeps the loss exact and costs one token of compute per padding row.
    """
    padded, pad = batch.pad_to_divisor(world)
    if pad:
        mask = padded.tensors["response_mask"].clone()
        mask[-pad:] = 0
        attention = padded.tensors["attention_mask"].clone()
        attention[-pad:, 1:] = 0
        padded.set("response_mask", mask)
        padded.set("attention_mask", attention)
        padded.set("position_ids", (attention.cumsum(-1) - 1).clamp(min=0))
    return padded


def _keep_loss_tokens(mb: PackedMicroBatch, mask_BR: torch.Tensor) -> PackedMicroBatch:
    """Drop the gathered positions whose target is not a loss token (they never reach the LM head)."""
    keep = mask_BR[mb.rows][mb.resp_row_N, mb.resp_col_N] > 0
    return replace(
        mb,
        gather_idx_N=mb.gather_idx_N[keep],
        labels_N=mb.labels_N[keep],
        resp_row_N=mb.resp_row_N[keep],
        resp_col_N=mb.resp_col_N[keep],
    )


def sft_micro_batches(batch: Batch, budget: int, device: torch.device) -> list[PackedMicroBatch]:
    """The batch packed into micro-batches of at most ``budget`` tokens, loss positions only.

    The micro-batch count is agreed over ranks (a collective). Filtering runs on the host before the
    copy to ``device``, so it costs no device synchronisation.
    """
    mask = batch.tensors["attention_mask"]
    num = all_reduce_max(count_micro_batches(mask, budget), device)
    width, loss_mask = response_len(batch), batch.tensors["response_mask"]
    out = []
    for rows, is_padding in micro_batch_rows(mask, budget, num):
        mb = pack_rows(
            batch.tensors["input_ids"],
            mask,
            batch.tensors.get("position_ids"),
            width,
            rows,
            is_padding=is_padding,
        )
        out.append(_keep_loss_tokens(mb, loss_mask).to(device))
    return out


class SFTRole(LoraRole):
    """A causal LM fine-tuned on conversations, sharded with FSDP2; LoRA adapters when ``lora_rank`` > 0.

    Args:
        model_path: a Hugging Face model folder or ``builtin:tiny``.
        **engine: the engine's keywords (:class:`~rlkit.training.engine.EngineOptions`: dtype,
            offload, checkpointing, AdamW, schedule, clipping, compile); ``total_steps`` (SFT
            steps) is required, ``lr`` defaults to 1e-5.
        micro_batch_tokens: most tokens per micro-batch (per forward/backward pass).
        logprob_chunk_tokens: rows of LM-head logits computed at once; None: the device's default.
        init: ``"pretrained"`` or ``"random"``.
        seed: seeds the random init and the LoRA ``A`` matrices.
        lora_rank: LoRA rank; 0 trains every weight.
        lora_alpha: LoRA scale numerator (scale = alpha / rank).
        lora_target_modules: ``all-linear`` or module names (``q_proj``, ...).
    """

    def __init__(
        self,
        model_path: str,
        *,
        micro_batch_tokens: int = 8192,
        logprob_chunk_tokens: int | None = None,
        init: str = "pretrained",
        seed: int = 0,
        lora_rank: int = 0,
        lora_alpha: int = 16,
        lora_target_modules: Sequence[str] = (ALL_LINEAR,),
        **engine: Unpack[EngineOptions],
    ) -> None:
        ensure_process_group()
        hw.manual_seed_all(seed)
        if micro_batch_tokens <= 0:
            raise UserError(f"actor.micro_batch_tokens must be positive, got {micro_batch_tokens}")
        model = load_causal_lm(model_path, dtype=torch.float32, device="cpu", init=init, seed=seed)  # type: ignore[arg-type]
        to_hf = getattr(model, "hf_config_dict", None)
        self.hf_config: dict[str, Any] = to_hf() if callable(to_hf) else model.config.to_hf()
        self.add_lora(model, lora_rank, lora_alpha, lora_target_modules)
        engine.setdefault("lr", 1e-5)
        self.engine = FSDPEngine(PackedPolicy(model), **engine)
        self.config = model.config
        self.micro_batch_tokens = micro_batch_tokens
        self.chunk_tokens = logprob_chunk_tokens or default_chunk_tokens(self.engine.device)

    # ------------------------------------------------------------------ training and evaluation

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One optimizer step on the rank's shard of the step's batch (collective).

        Returns:
            ``sft/loss`` (token-mean NLL of the whole batch over all ranks, before the update),
            ``sft/loss_tokens`` and ``sft/tokens`` (loss tokens and all tokens over all ranks),
            ``actor/grad_norm`` (before clipping), ``actor/lr`` (the rate this step used) and
            ``actor/skipped_steps`` (1 when a non-finite gradient norm skipped the update).
        """
        require_columns(batch, SFT_COLUMNS, "SFT train_step")
        lr = self.engine.lr()
        self.engine.train()
        metrics = self._loss_pass(batch, "sft", backward=True)
        grad_norm, stepped = self.engine.optimizer_step()
        self.engine.scheduler_step()
        metrics.update(
            {"actor/grad_norm": grad_norm, "actor/lr": lr, "actor/skipped_steps": 0.0 if stepped else 1.0}
        )
        return metrics

    @torch.no_grad()
    def eval_loss(self, batch: Batch) -> dict[str, float]:
        """The loss of a batch without training (collective).

        Returns:
            ``val/loss`` (token-mean NLL over all ranks), ``val/loss_tokens`` and ``val/tokens``.
        """
        require_columns(batch, SFT_COLUMNS, "SFT eval_loss")
        self.engine.eval()
        return self._loss_pass(batch, "val", backward=False)

    def _loss_pass(self, batch: Batch, prefix: str, *, backward: bool) -> dict[str, float]:
        device, width = self.engine.device, response_len(batch)
        mask = batch.tensors["response_mask"].float()
        loss_tokens, tokens = all_reduce_sum(
            [mask.sum().item(), batch.tensors["attention_mask"].sum().item()], device
        )
        agg = {"dp_size": world_size(), "batch_num_tokens": loss_tokens}
        mask_dev = mask.to(device, non_blocking=True)
        stats = MiniBatchStats(device)
        for mb in sft_micro_batches(batch, self.micro_batch_tokens, device):
            lp_N, _ = self.engine.module(
                mb.input_ids_T,
                mb.position_ids_T,
                mb.cu_seqlens,
                mb.gather_idx_N,
                mb.labels_N,
                chunk_tokens=self.chunk_tokens,
            )
            nll = agg_loss(-mb.scatter(lp_N, width), mask_dev[rows_on(mb, device)], "token-mean", **agg)
            if not mb.is_padding:
                stats.add_share(f"{prefix}/loss", nll)
            if backward:
                # A padding micro-batch still runs backward so every rank joins the same collectives.
                (nll * 0.0 if mb.is_padding else nll).backward()
        metrics = stats.reduce()
        metrics[f"{prefix}/loss"] = metrics.get(f"{prefix}/loss", 0.0)
        metrics[f"{prefix}/loss_tokens"] = loss_tokens
        metrics[f"{prefix}/tokens"] = tokens
        return metrics

    # ------------------------------------------------------------------ weights and checkpoints

    def state_dict_for_checkpoint(self) -> dict[str, Any]:
        """Sharded model/optimizer state, schedule and counters (for DCP)."""
        return self.engine.state_dict_for_checkpoint()

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.engine.load_checkpoint_state(state)
