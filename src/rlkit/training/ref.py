"""The reference-policy role: frozen log-probs for the KL loss or the KL-in-reward penalty.

Sharded like the actor but without an optimizer; with ``param_offload`` its parameters live on the
CPU and are streamed to the device layer by layer during the forward pass.

Shape legend: B = rows of the rank's batch, R = response length.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.distributed.tensor import DTensor, distribute_tensor

from rlkit.data.batch import Batch
from rlkit.errors import UserError
from rlkit.hardware import device as hw
from rlkit.models import load_causal_lm
from rlkit.models.logprobs import default_chunk_tokens
from rlkit.training.distributed import ensure_process_group, training_device
from rlkit.training.engine import resolve_dtype, shard_module
from rlkit.training.engine_base import MicroBatchRunner
from rlkit.training.heads import PackedPolicy, PackedTopK
from rlkit.training.passes import PLAIN_LOOP, require_columns, response_logprobs, temperature_of


class RefRole:
    """A frozen copy of the initial policy (or of the actor at its last :meth:`load_weights`).

    Args:
        model_path: a Hugging Face model folder or ``builtin:tiny``.
        dtype: compute dtype (``"auto"``: bf16 on accelerators, fp32 on the CPU).
        param_offload: keep the parameters on the CPU between layers (CPUOffloadPolicy).
        torch_compile: compile each decoder layer's forward (see :class:`FSDPEngine`).
        micro_batch_tokens: most real tokens per forward pass.
        logprob_chunk_tokens: rows of LM-head logits computed at once; None: the device's default.
        init, seed: as for :class:`rlkit.training.actor.ActorRole` (same seed, same weights).
        strategy: ``fsdp`` (FSDP2 shards in the compute dtype) or ``megatron`` (Megatron-core's
            ``GPTModel`` with the actor's parallel sizes ``megatron``, fp32 weights computing under
            autocast as the Megatron actor does; its passes run through the engine's pipeline
            schedule; ``param_offload`` is FSDP's).
    """

    head: type[PackedPolicy] | type[PackedTopK] = PackedPolicy
    """The root module wrapped around the model (a subclass may compute other outputs at the head)."""

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "auto",
        param_offload: bool = False,
        torch_compile: bool = False,
        micro_batch_tokens: int = 8192,
        logprob_chunk_tokens: int | None = None,
        init: str = "pretrained",
        seed: int = 0,
        strategy: str = "fsdp",
        megatron: dict[str, Any] | None = None,
    ) -> None:
        ensure_process_group()
        hw.manual_seed_all(seed)
        if micro_batch_tokens <= 0:
            raise UserError(f"ref micro_batch_tokens must be positive, got {micro_batch_tokens}")
        self.micro_batch_tokens = micro_batch_tokens
        self.chunk_tokens = logprob_chunk_tokens or default_chunk_tokens(training_device())
        self.engine: Any = None  # the Megatron engine (ref.strategy=megatron), else None
        self.runner: MicroBatchRunner = PLAIN_LOOP
        if strategy == "megatron":
            self._build_megatron(model_path, dtype, torch_compile, init, seed, megatron or {})
            return
        if strategy != "fsdp":
            raise ValueError(f"unknown ref strategy {strategy!r}; valid: fsdp, megatron")
        # The reference never trains: its parameters are stored in the compute dtype directly.
        compute_dtype = resolve_dtype(dtype)
        model = load_causal_lm(model_path, dtype=compute_dtype, device="cpu", init=init, seed=seed)  # type: ignore[arg-type]
        model.requires_grad_(False)
        self.module = shard_module(
            self.head(model),
            compute_dtype=compute_dtype,
            param_offload=param_offload,
            torch_compile=torch_compile,
        )
        self.module.eval()
        self.dtype = compute_dtype
        self.device = training_device()

    def _build_megatron(
        self, model_path: str, dtype: str, torch_compile: bool, init: str, seed: int, sizes: dict[str, Any]
    ) -> None:
        """The reference on Megatron: the actor's engine without ever stepping its optimizer."""
        from rlkit.training.engine_base import POLICY_ENGINES

        if self.head is not PackedPolicy:
            raise ValueError("only the reference policy runs on Megatron")
        model = load_causal_lm(model_path, dtype=torch.float32, device="cpu", init=init, seed=seed)  # type: ignore[arg-type]
        options = {"dtype": dtype, "torch_compile": torch_compile, "lr": 0.0, "total_steps": 1, "seed": seed}
        self.engine = POLICY_ENGINES["megatron"](model, options, sizes)
        self.engine.eval()
        self.runner = self.engine
        self.module = self.engine.module
        self.dtype = torch.float32  # the weights' dtype: a refresh from the actor takes them in full
        self.device = self.engine.device

    def compute_ref_log_prob(self, batch: Batch, temperature: float | None = None) -> Batch:
        """Log-probs of the response tokens under the reference policy.

        Returns:
            A Batch with ``ref_log_prob`` (B, R) fp32.
        """
        require_columns(batch, ("input_ids", "attention_mask", "responses"), "compute_ref_log_prob")
        batch, own = self.engine.replica_batch(batch) if self.engine is not None else (batch, slice(None))
        logp, _ = response_logprobs(
            self.module,
            batch,
            temperature=temperature_of(batch, temperature),
            with_entropy=False,
            budget=self.micro_batch_tokens,
            chunk_tokens=self.chunk_tokens,
            device=self.device,
            runner=self.runner,
        )
        return Batch(tensors={"ref_log_prob": logp[own]})

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace every parameter with full tensors by name (e.g. the actor's, for SPIN's refresh).

        Each rank keeps its own shard of each full tensor (no communication here).

        Raises:
            ValueError: A name the module does not have, or a parameter left without a tensor.
        """
        if self.engine is not None:
            self.engine.load_hf_weights(named_tensors)
            return
        params = dict(self.module.named_parameters())
        buffers = dict(self.module.named_buffers())
        loaded: set[str] = set()
        for name, full in named_tensors:
            target = params.get(name, buffers.get(name))
            if target is None:
                raise ValueError(f"reference model has no parameter or buffer {name!r}")
            if isinstance(target, DTensor):
                shard = distribute_tensor(full, target.device_mesh, target.placements, src_data_rank=None)
                target.to_local().copy_(shard.to_local())
            else:
                target.copy_(full)
            loaded.add(name)
        missing = sorted(set(params) - loaded)
        if missing:
            raise ValueError(f"no weights given for reference parameters {missing[:5]}")

    def save_frozen(self, role_dir: Path) -> None:
        """Write the reference weights (collective): DCP model tensors, ``state.json`` and its config."""
        from rlkit.ckpt import save_frozen_role
        from rlkit.ckpt.state import save_frozen_tensors

        if self.engine is None:
            save_frozen_role(self.module, role_dir)
        else:
            save_frozen_tensors(self.engine.frozen_tensors(), self.engine.hf_config, role_dir)

    def load_frozen(self, role_dir: Path) -> str | None:
        """Restore what :meth:`save_frozen` wrote (collective); what is wrong instead, if anything."""
        from rlkit.ckpt import load_frozen_role
        from rlkit.ckpt.state import load_frozen_tensors

        if self.engine is None:
            return load_frozen_role(self.module, role_dir)
        return load_frozen_tensors(self.engine.frozen_tensors(), role_dir)
