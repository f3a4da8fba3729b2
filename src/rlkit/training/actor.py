"""The actor role: old log-probs, the PPO-family policy update, and weights for the rollout engine.

Constructed inside a worker process that already has ``torch.distributed`` initialised (or none, for
a single process). Every method works on the rank's own shard of the batch (the controller chunks
the batch over ranks) and every method is collective: all ranks call it together.

Shape legend: B = rows of the rank's batch, R = response length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from rlkit.algos import GKD_LOSSES, agg_loss, compute_gkd_loss, kl_penalty, policy_losses
from rlkit.data.batch import Batch
from rlkit.errors import UserError
from rlkit.hardware import device as hw
from rlkit.models import load_causal_lm
from rlkit.models.logprobs import default_chunk_tokens
from rlkit.training.distributed import all_reduce_sum, ensure_process_group, world_size
from rlkit.training.engine import EngineOptions
from rlkit.training.engine_base import POLICY_ENGINES, hf_config_dict
from rlkit.training.lora import ALL_LINEAR, LoraRole, adapters_disabled
from rlkit.training.micro_batches import PackedMicroBatch
from rlkit.training.passes import (
    mini_batches,
    packed_micro_batches,
    require_columns,
    response_len,
    response_logprobs,
    rows_on,
    temperature_of,
)
from rlkit.training.stats import MiniBatchStats, RunningMeans

if TYPE_CHECKING:
    from typing_extensions import Unpack

_LOG_PROB_INPUTS = ("input_ids", "attention_mask", "responses")
_LOSS_COLUMNS = (
    "response_mask",
    "advantages",
    "old_log_probs",
    "ref_log_prob",
    "rollout_is_weights",
    "teacher_topk_log_probs",
)


def _check_update_inputs(
    batch: Batch, loss_mode: str, optimizer_steps: int, use_kl_loss: bool, gkd: dict[str, Any] | None
) -> bool:
    """Whether the update is on-policy (no ``old_log_probs`` in the batch); raises for a bad loss
    mode, an on-policy batch of several optimizer steps, or a missing column."""
    if loss_mode not in policy_losses:
        raise UserError(f"actor.loss_mode: unknown {loss_mode!r}; valid: {', '.join(sorted(policy_losses))}")
    on_policy = "old_log_probs" not in batch.tensors
    if on_policy and optimizer_steps != 1:
        raise ValueError("an update with several mini-batches or epochs needs old_log_probs in the batch")
    kl_columns = ["ref_log_prob"] if use_kl_loss else []
    needed = [*_LOG_PROB_INPUTS, "response_mask", "advantages", *kl_columns, *_gkd_columns(gkd)]
    require_columns(batch, needed, "actor update")
    return on_policy


def _gkd_columns(gkd: dict[str, Any] | None) -> list[str]:
    """The batch columns the GKD term reads (none without one); a UserError for an unknown loss."""
    if gkd is None:
        return []
    if gkd.get("loss") not in GKD_LOSSES:
        raise UserError(f"unknown GKD loss {gkd.get('loss')!r}; valid: {', '.join(GKD_LOSSES)}")
    return ["teacher_topk_ids", "teacher_topk_log_probs"]


class ActorRole(LoraRole):
    """The policy being trained, on the FSDP2 or the Megatron-core engine (``strategy``).

    Args:
        model_path: a Hugging Face model folder or ``builtin:tiny``.
        strategy: ``fsdp`` or ``megatron`` (:data:`~rlkit.training.engine_base.POLICY_ENGINES`).
        megatron: the Megatron engine's parallel sizes (``actor.megatron.*``; see
            :class:`~rlkit.training.megatron_engine.MegatronEngine`); ignored by FSDP.
        **engine: the engine's keywords (:class:`~rlkit.training.engine.EngineOptions`: dtype,
            offload, checkpointing, AdamW, schedule, clipping, compile); ``total_steps`` is
            required, ``lr`` defaults to 1e-6.
        micro_batch_tokens: most real tokens per micro-batch (per forward/backward pass).
        logprob_chunk_tokens: rows of LM-head logits computed at once (memory vs. speed); None: the
            device's default (:func:`rlkit.models.logprobs.default_chunk_tokens`).
        init: ``"pretrained"`` or ``"random"`` (benchmarks).
        seed: seeds the random init, the LoRA ``A`` matrices and the mini-batch shuffle.
        lora_rank: LoRA rank; 0 trains every weight. With adapters only they train and sit in the
            optimizer, the rollout engines get merged weights (:meth:`named_full_tensors`) and the
            frozen base under them is the reference policy (:meth:`compute_ref_log_prob`).
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
        strategy: str = "fsdp",
        megatron: dict[str, Any] | None = None,
        **engine: Unpack[EngineOptions],
    ) -> None:
        ensure_process_group()
        hw.manual_seed_all(seed)
        if micro_batch_tokens <= 0:
            raise UserError(f"actor.micro_batch_tokens must be positive, got {micro_batch_tokens}")
        if strategy not in POLICY_ENGINES:
            raise UserError(f"actor.strategy: unknown {strategy!r}; valid: {', '.join(POLICY_ENGINES)}")
        if strategy != "fsdp" and lora_rank > 0:
            raise UserError(
                f"model.lora_rank={lora_rank} needs actor.strategy=fsdp",
                hint="set model.lora_rank=0 or actor.strategy=fsdp",
            )
        model = load_causal_lm(model_path, dtype=torch.float32, device="cpu", init=init, seed=seed)  # type: ignore[arg-type]
        self.add_lora(model, lora_rank, lora_alpha, lora_target_modules)
        engine.setdefault("lr", 1e-6)
        self.config = model.config
        self.hf_config = hf_config_dict(model)  # what exports and checkpoints write as config.json
        self.engine = POLICY_ENGINES[strategy](model, dict(engine), dict(megatron or {}))
        self.micro_batch_tokens = micro_batch_tokens
        self.chunk_tokens = logprob_chunk_tokens or default_chunk_tokens(self.engine.device)
        self.seed = seed
        self._kept: tuple[torch.Tensor, slice] | None = None  # an on-policy update's log-probs

    # ------------------------------------------------------------------ inference

    def compute_log_prob(
        self,
        batch: Batch,
        temperature: float | None = None,
        with_entropy: bool = True,
        with_sum_pi_squared: bool = False,
    ) -> Batch:
        """Log-probs of the response tokens under the current policy (verl's ``old_log_probs``).

        Returns:
            A Batch with ``old_log_probs`` (B, R) fp32 and, when asked, ``entropy`` (B, R) fp32 and
            ``sum_pi_squared`` (B, R) fp32 (``sum_v pi(v)^2`` per position, OTB's input).
        """
        require_columns(batch, _LOG_PROB_INPUTS, "compute_log_prob")
        batch, own = self.engine.replica_batch(batch)
        squares = (
            torch.zeros(batch.tensors["responses"].shape, dtype=torch.float32)
            if with_sum_pi_squared
            else None
        )
        self.engine.eval()
        logp, entropy = response_logprobs(
            self.engine.module,
            batch,
            temperature=temperature_of(batch, temperature),
            with_entropy=with_entropy,
            budget=self.micro_batch_tokens,
            chunk_tokens=self.chunk_tokens,
            device=self.engine.device,
            sum_pi_squared=squares,
            runner=self.engine,
        )
        out = {"old_log_probs": logp}
        if entropy is not None:
            out["entropy"] = entropy
        if squares is not None:
            out["sum_pi_squared"] = squares
        return Batch(tensors={k: v[own] for k, v in out.items()})

    def compute_ref_log_prob(self, batch: Batch, temperature: float | None = None) -> Batch:
        """Log-probs under the reference policy of a LoRA actor: this model with its adapters off.

        The base weights never train, so the base model *is* the initial policy; no second copy
        of the model is needed (verl computes its LoRA reference the same way).

        Returns:
            A Batch with ``ref_log_prob`` (B, R) fp32.

        Raises:
            ValueError: The actor has no LoRA adapters (its reference is a separate role).
        """
        if not self.lora_targets:
            raise ValueError("only a LoRA actor holds its reference policy (the base under its adapters)")
        require_columns(batch, _LOG_PROB_INPUTS, "compute_ref_log_prob")
        batch, own = self.engine.replica_batch(batch)
        self.engine.eval()
        with adapters_disabled(self.engine.module):
            logp, _ = response_logprobs(
                self.engine.module,
                batch,
                temperature=temperature_of(batch, temperature),
                with_entropy=False,
                budget=self.micro_batch_tokens,
                chunk_tokens=self.chunk_tokens,
                device=self.engine.device,
                runner=self.engine,
            )
        return Batch(tensors={"ref_log_prob": logp[own]})

    # ------------------------------------------------------------------ training

    def update(
        self,
        batch: Batch,
        *,
        temperature: float | None = None,
        num_mini_batches: int = 1,
        epochs: int = 1,
        shuffle: bool = False,
        loss_mode: str = "vanilla",
        loss_agg_mode: str = "token-mean",
        clip_ratio_low: float = 0.2,
        clip_ratio_high: float = 0.2,
        clip_ratio_c: float = 3.0,
        entropy_coeff: float = 0.0,
        entropy_metric: bool = False,
        use_kl_loss: bool = False,
        kl_loss_coef: float = 0.001,
        kl_loss_type: str = "low_var_kl",
        loss_kwargs: dict[str, Any] | None = None,
        gkd: dict[str, Any] | None = None,
    ) -> dict[str, float]:
        """One RL step of policy optimisation: an optimizer step per mini-batch per epoch.

        The ratio's denominator is the batch's ``old_log_probs`` when it has them (in verl's bypass
        mode the trainer puts the rollout log-probs there). Without them the update must be
        on-policy (one mini-batch, one epoch) and the denominator is the current log-prob itself,
        detached, so the ratio is exactly 1 (verl's on-policy case; :meth:`update_on_policy` also
        returns those log-probs, which saves the old-log-prob pass).
        ``rollout_is_weights`` (B, R), when in the batch, multiplies the per-token policy loss.
        ``gkd`` (``{"loss", "coef", "beta"}``) adds ``coef`` times the GKD divergence to the teacher's
        top-k columns (:func:`rlkit.algos.compute_gkd_loss`). Micro-batch losses carry the whole
        mini-batch's token and sequence counts over all ranks: the split does not change the update.

        Returns:
            verl-named metrics averaged over the step's mini-batches: ``actor/pg_loss``,
            ``actor/pg_clipfrac``, ``actor/ppo_kl``, ``actor/pg_clipfrac_lower`` (those the loss
            reports), ``actor/entropy`` (with ``entropy_coeff`` != 0, aggregated like the loss; with
            ``entropy_metric``, the token mean, for a trainer that skipped the old-log-prob pass),
            ``actor/kl_loss``, ``distill/*`` (with ``gkd``), ``actor/grad_norm``, ``actor/lr`` (this
            step's) and ``actor/skipped_steps`` (steps skipped for a non-finite gradient norm).
        """
        on_policy = _check_update_inputs(batch, loss_mode, num_mini_batches * epochs, use_kl_loss, gkd)
        batch, own = self.engine.replica_batch(batch)
        # on-policy, the update's forward log-probs are the batch's old ones: kept for update_on_policy
        kept = torch.zeros(len(batch), response_len(batch), device=self.engine.device) if on_policy else None
        self._kept = None if kept is None else (kept, own)
        settings = {
            "temperature": temperature_of(batch, temperature),
            "kept": kept,
            "loss_fn": policy_losses[loss_mode],
            "loss_agg_mode": loss_agg_mode,
            "clip": {
                "clip_ratio_low": clip_ratio_low,
                "clip_ratio_high": clip_ratio_high,
                "clip_ratio_c": clip_ratio_c,
            },
            "entropy_coeff": entropy_coeff,
            "entropy_metric": entropy_metric,
            "kl": (kl_loss_coef, kl_loss_type) if use_kl_loss else None,
            "loss_kwargs": dict(loss_kwargs or {}),
            "gkd": gkd,
        }
        lr = self.engine.lr()
        skipped_before = self.engine.skipped_steps
        running = RunningMeans()
        self.engine.train()
        for epoch in range(epochs):
            seed = self.seed * 1_000_003 + self.engine.step_count * 1_009 + epoch
            # one mini-batch of one epoch: a shuffle would only reorder the rows kept above
            for mini in mini_batches(batch, num_mini_batches, shuffle=shuffle and not on_policy, seed=seed):
                running.add(self._update_mini_batch(mini, settings))
        self.engine.scheduler_step()
        metrics = running.means()
        metrics["actor/lr"] = lr
        metrics["actor/skipped_steps"] = float(self.engine.skipped_steps - skipped_before)
        return metrics

    def update_on_policy(self, batch: Batch, **settings: Any) -> Batch:
        """:meth:`update` of a batch without ``old_log_probs`` (one mini-batch, one epoch) that also
        returns what the separate pass would have: the update forward's log-probs.

        Returns:
            A Batch of ``old_log_probs`` (B, R) fp32, the log-probs under the weights before the
            step (0 at padding), with the update's metrics as its ``meta``.
        """
        if "old_log_probs" in batch.tensors:
            raise ValueError("update_on_policy: the batch already has old_log_probs; call update")
        metrics = self.update(batch, **settings)
        assert self._kept is not None
        kept, own = self._kept
        self._kept = None
        log_probs = self.engine.from_last_stage(kept.cpu())
        return Batch(tensors={"old_log_probs": log_probs[own]}, meta=metrics)

    def _update_mini_batch(self, mini: Batch, s: dict[str, Any]) -> dict[str, float]:
        """Forward/backward over the micro-batches of one mini-batch, then one optimizer step."""
        device, width = self.engine.device, response_len(mini)
        mask = mini.tensors["response_mask"].float()
        tokens, seqs = all_reduce_sum([mask.sum().item(), (mask.sum(-1) > 0).sum().item()], device)
        agg: dict[str, Any] = {"dp_size": world_size(), "batch_num_tokens": tokens, "global_batch_size": seqs}
        agg["loss_scale_factor"] = width
        agg.update({k: v for k, v in s["loss_kwargs"].items() if k in agg})
        mode_kwargs = {k: v for k, v in s["loss_kwargs"].items() if k not in agg}
        # The per-token columns go to the device once, before the loop (no copies between passes).
        names = [n for n in _LOSS_COLUMNS if n in mini.tensors]
        columns = {n: mini.tensors[n].to(device, torch.float32, non_blocking=True) for n in names}
        if s["gkd"] is not None:
            columns["teacher_topk_ids"] = mini.tensors["teacher_topk_ids"].to(device, non_blocking=True)
        stats = MiniBatchStats(device)

        def forward(mb: PackedMicroBatch) -> Any:
            return self._policy_forward(mb, s, columns.get("teacher_topk_ids"))

        def consume(mb: PackedMicroBatch, out: Any) -> torch.Tensor:
            lp_N, ent_N, *support_N = out
            rows = rows_on(mb, device)
            col = {n: t[rows] for n, t in columns.items()}
            log_prob = mb.scatter(lp_N, width)
            if s["kept"] is not None and not mb.is_padding:
                s["kept"][rows] = log_prob.detach().float()
            pg_loss, pg_metrics = s["loss_fn"](
                log_prob.detach() if s["kept"] is not None else col["old_log_probs"],
                log_prob,
                col["advantages"],
                col["response_mask"],
                loss_agg_mode=s["loss_agg_mode"],
                rollout_is_weights=col.get("rollout_is_weights"),
                **s["clip"],
                **agg,
                **mode_kwargs,
            )
            if not mb.is_padding:
                stats.add_share("actor/pg_loss", pg_loss)
                weight = float(mask[mb.rows].sum())  # host copy of the mask: no device sync
                for key, value in pg_metrics.items():
                    stats.add_mean(key, value, weight)
            loss, extra = pg_loss, self._entropy_and_kl(mb, log_prob, ent_N, col, s, agg, stats, mask)
            if extra is not None:
                loss = loss + extra
            if s["gkd"] is not None:
                loss = loss + self._gkd_term(mb, support_N[0], col, s, agg, stats, mask)
            # A padding micro-batch still runs backward so every rank joins the same collectives.
            out_loss: torch.Tensor = loss * 0.0 if mb.is_padding else loss
            return out_loss

        micro = packed_micro_batches(mini, self.micro_batch_tokens, device, self.engine.min_micro_batches)
        self.engine.run_micro_batches(micro, forward, consume, backward=True)
        grad_norm, _ = self.engine.optimizer_step()
        metrics: dict[str, float] = self.engine.reduce_stats(stats)
        metrics["actor/grad_norm"] = grad_norm
        return metrics

    def _policy_forward(
        self, mb: PackedMicroBatch, s: dict[str, Any], teacher_topk_ids: torch.Tensor | None
    ) -> Any:
        """The heads' outputs for one micro-batch (log-probs, entropy, the teacher's top-k log-probs)."""
        support = None
        if teacher_topk_ids is not None:
            support = teacher_topk_ids[rows_on(mb, self.engine.device)][mb.resp_row_N, mb.resp_col_N]
        return self.engine.module(
            mb.input_ids_T,
            mb.position_ids_T,
            mb.cu_seqlens,
            mb.gather_idx_N,
            mb.labels_N,
            temperature=s["temperature"],
            with_entropy=s["entropy_coeff"] != 0 or s["entropy_metric"],
            chunk_tokens=self.chunk_tokens,
            support_NK=support,
        )

    def _entropy_and_kl(
        self,
        mb: PackedMicroBatch,
        log_prob: torch.Tensor,
        ent_N: torch.Tensor | None,
        col: dict[str, torch.Tensor],
        s: dict[str, Any],
        agg: dict[str, Any],
        stats: MiniBatchStats,
        mask: torch.Tensor,
    ) -> torch.Tensor | None:
        """The micro-batch's entropy bonus and KL-to-reference terms of the loss (None without them),
        and their metrics; with ``entropy_metric`` the token-mean entropy as a metric only."""
        width, term = col["response_mask"].shape[-1], None
        if s["entropy_coeff"] != 0 and ent_N is not None:
            entropy = agg_loss(mb.scatter(ent_N, width), col["response_mask"], s["loss_agg_mode"], **agg)
            term = -s["entropy_coeff"] * entropy
            if not mb.is_padding:
                stats.add_share("actor/entropy", entropy)
        elif s["entropy_metric"] and ent_N is not None and not mb.is_padding:
            ent = mb.scatter(ent_N.detach(), width)
            tokens = float(mask[mb.rows].sum())
            stats.add_mean("actor/entropy", (ent * col["response_mask"]).sum() / max(tokens, 1.0), tokens)
        if s["kl"] is not None:
            coef, kind = s["kl"]
            kld = kl_penalty(log_prob, col["ref_log_prob"], kind)
            kl = agg_loss(kld, col["response_mask"], s["loss_agg_mode"], **agg)
            term = coef * kl if term is None else term + coef * kl
            if not mb.is_padding:
                stats.add_share("actor/kl_loss", kl)
        return term

    def _gkd_term(
        self,
        mb: Any,
        support_NK: torch.Tensor,
        col: dict[str, torch.Tensor],
        s: dict[str, Any],
        agg: dict[str, Any],
        stats: MiniBatchStats,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """``coef`` x the GKD divergence of this micro-batch (and its metrics)."""
        gkd = s["gkd"]
        student = mb.scatter(support_NK, col["response_mask"].shape[-1])
        value, metrics = compute_gkd_loss(
            student,
            col["teacher_topk_log_probs"],
            col["response_mask"],
            loss=gkd["loss"],
            beta=float(gkd.get("beta", 0.5)),
            loss_agg_mode=s["loss_agg_mode"],
            **agg,
        )
        if not mb.is_padding:
            stats.add_share("distill/gkd_loss", value)
            weight = float(mask[mb.rows].sum())
            for key, metric in metrics.items():
                stats.add_mean(key, metric, weight)
        return float(gkd.get("coef", 1.0)) * value

    # ------------------------------------------------------------------ weights and checkpoints

    def state_dict_for_checkpoint(self) -> dict[str, Any]:
        """Sharded model/optimizer state, schedule and counters (for DCP)."""
        return self.engine.state_dict_for_checkpoint()

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.engine.load_checkpoint_state(state)
