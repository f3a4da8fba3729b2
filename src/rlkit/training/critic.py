"""The critic role (PPO/GAE): token values and the clipped value-function update.

The value of response token t is read at padded position ``P + t - 1`` (the token before it), as
verl does, so the value and the log-prob of a token come from the same hidden state.

Shape legend: B = rows of the rank's batch, R = response length.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from rlkit.algos import compute_value_loss
from rlkit.data.batch import Batch
from rlkit.errors import UserError
from rlkit.hardware import device as hw
from rlkit.models.value import ValueModel
from rlkit.training.distributed import all_reduce_sum, ensure_process_group, world_size
from rlkit.training.engine import EngineOptions
from rlkit.training.engine_base import VALUE_ENGINES, hf_config_dict
from rlkit.training.micro_batches import PackedMicroBatch
from rlkit.training.passes import (
    mini_batches,
    packed_micro_batches,
    require_columns,
    response_len,
    response_values,
    rows_on,
)
from rlkit.training.stats import MiniBatchStats, RunningMeans

if TYPE_CHECKING:
    from typing_extensions import Unpack

_INPUTS = ("input_ids", "attention_mask", "responses")


class CriticRole:
    """A value model (decoder backbone + scalar head) trained with PPO's clipped value loss.

    Args:
        model_path: a causal-LM or value-model folder, or ``builtin:tiny``; the backbone is loaded
            from it and the ``score`` head initialised when the folder has none.
        **engine: the engine's keywords (:class:`~rlkit.training.engine.EngineOptions`: dtype,
            offload, checkpointing, AdamW, schedule, clipping, compile); ``total_steps`` is
            required, ``lr`` defaults to 1e-5.
        micro_batch_tokens: most real tokens per forward/backward pass.
        init, seed: as for :class:`rlkit.training.actor.ActorRole`.
        strategy, megatron: the engine (``fsdp`` or ``megatron``) and Megatron's parallel sizes, as
            for :class:`rlkit.training.actor.ActorRole`.
    """

    def __init__(
        self,
        model_path: str,
        *,
        micro_batch_tokens: int = 8192,
        init: str = "pretrained",
        seed: int = 0,
        strategy: str = "fsdp",
        megatron: dict[str, Any] | None = None,
        **engine: Unpack[EngineOptions],
    ) -> None:
        ensure_process_group()
        hw.manual_seed_all(seed)
        if micro_batch_tokens <= 0:
            raise UserError(f"critic.micro_batch_tokens must be positive, got {micro_batch_tokens}")
        model = ValueModel.from_causal_lm(model_path, dtype=torch.float32, device="cpu", init=init, seed=seed)  # type: ignore[arg-type]
        if strategy not in VALUE_ENGINES:
            raise UserError(f"critic.strategy: unknown {strategy!r}; valid: {', '.join(VALUE_ENGINES)}")
        engine.setdefault("lr", 1e-5)
        self.config = model.config
        self.hf_config = hf_config_dict(model)  # what exports and checkpoints write as config.json
        self.engine = VALUE_ENGINES[strategy](model, dict(engine), dict(megatron or {}))
        self.micro_batch_tokens = micro_batch_tokens
        self.seed = seed

    def compute_values(self, batch: Batch) -> Batch:
        """Values of the response tokens under the current critic.

        Returns:
            A Batch with ``values`` (B, R) fp32 (0 on padding).
        """
        require_columns(batch, _INPUTS, "compute_values")
        batch, own = self.engine.replica_batch(batch)
        self.engine.eval()
        values = response_values(
            self.engine.module,
            batch,
            budget=self.micro_batch_tokens,
            device=self.engine.device,
            runner=self.engine,
        )
        return Batch(tensors={"values": values[own]})

    def update(
        self,
        batch: Batch,
        *,
        num_mini_batches: int = 1,
        epochs: int = 1,
        shuffle: bool = False,
        cliprange_value: float = 0.5,
        loss_agg_mode: str = "token-mean",
    ) -> dict[str, float]:
        """One RL step of value regression towards ``returns``: an optimizer step per mini-batch per epoch.

        Returns:
            ``critic/vf_loss``, ``critic/vf_clipfrac``, ``critic/vpred_mean``, ``critic/grad_norm``
            (averaged over the step's mini-batches), ``critic/lr`` (the rate this step used) and
            ``critic/skipped_steps``.
        """
        require_columns(batch, [*_INPUTS, "response_mask", "values", "returns"], "critic update")
        batch, _ = self.engine.replica_batch(batch)
        lr = self.engine.lr()
        skipped_before = self.engine.skipped_steps
        running = RunningMeans()
        self.engine.train()
        for epoch in range(epochs):
            seed = self.seed * 1_000_003 + self.engine.step_count * 1_009 + epoch
            for mini in mini_batches(batch, num_mini_batches, shuffle=shuffle, seed=seed):
                running.add(self._update_mini_batch(mini, cliprange_value, loss_agg_mode))
        self.engine.scheduler_step()
        metrics = running.means()
        metrics["critic/lr"] = lr
        metrics["critic/skipped_steps"] = float(self.engine.skipped_steps - skipped_before)
        return metrics

    def _update_mini_batch(self, mini: Batch, cliprange_value: float, loss_agg_mode: str) -> dict[str, float]:
        device, width = self.engine.device, response_len(mini)
        mask = mini.tensors["response_mask"].float()
        tokens, seqs = all_reduce_sum([mask.sum().item(), (mask.sum(-1) > 0).sum().item()], device)
        agg: dict[str, Any] = {
            "dp_size": world_size(),
            "batch_num_tokens": tokens,
            "global_batch_size": seqs,
            "loss_scale_factor": width,
        }
        columns = {
            n: mini.tensors[n].to(device, torch.float32, non_blocking=True)
            for n in ("response_mask", "returns", "values")
        }
        stats = MiniBatchStats(device)

        def forward(mb: PackedMicroBatch) -> Any:
            return self.engine.module(mb.input_ids_T, mb.position_ids_T, mb.cu_seqlens, mb.gather_idx_N)

        def consume(mb: PackedMicroBatch, v_N: Any) -> torch.Tensor:
            rows = rows_on(mb, device)
            vpreds = mb.scatter(v_N, width)
            mb_mask = columns["response_mask"][rows]
            vf_loss, clipfrac = compute_value_loss(
                vpreds,
                columns["returns"][rows],
                columns["values"][rows],
                mb_mask,
                cliprange_value,
                loss_agg_mode,
                **agg,
            )
            if not mb.is_padding:
                weight = float(mask[mb.rows].sum())  # host copy of the mask: no device sync
                stats.add_share("critic/vf_loss", vf_loss)
                stats.add_mean("critic/vf_clipfrac", clipfrac, weight)
                vmean = (vpreds.detach() * mb_mask).sum() / max(weight, 1.0)
                stats.add_mean("critic/vpred_mean", vmean, weight)
            return vf_loss * 0.0 if mb.is_padding else vf_loss

        micro = packed_micro_batches(mini, self.micro_batch_tokens, device, self.engine.min_micro_batches)
        self.engine.run_micro_batches(micro, forward, consume, backward=True)
        grad_norm, _ = self.engine.optimizer_step()
        metrics: dict[str, float] = self.engine.reduce_stats(stats)
        metrics["critic/grad_norm"] = grad_norm
        return metrics

    def named_full_tensors(
        self, dtype: torch.dtype | None = torch.bfloat16
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Hugging Face names (``model.*``, ``score.*``) and full tensors (collective, for HF export)."""
        return self.engine.named_full_tensors(dtype)

    def state_dict_for_checkpoint(self) -> dict[str, Any]:
        """Sharded model/optimizer state, schedule and counters (for DCP)."""
        return self.engine.state_dict_for_checkpoint()

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.engine.load_checkpoint_state(state)
