"""The roles a worker group hosts for RL, and how the controller calls them.

Each class wraps one engine (training or rollout) and declares, per method, how the controller
spreads its arguments over ranks (:func:`rlkit.controller.dispatch`). In colocated placement all
of them live in one process per device: the rollout engine takes the actor's weights in-process
(:meth:`RolloutWorker.sync_weights`) and frees its KV cache while the trainer updates.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ray
import torch

from rlkit import hardware
from rlkit.agents.setup import loop_settings
from rlkit.ckpt import (
    load_role_state,
    load_worker_rng,
    save_role_state,
    save_worker_rng,
)
from rlkit.ckpt.state import role_hf_config
from rlkit.controller.dispatch import dispatch, probe
from rlkit.controller.worker import worker_context
from rlkit.data.batch import Batch
from rlkit.errors import UserError
from rlkit.models import load_tokenizer, write_hf_folder
from rlkit.rollout.base import InFlightWeights, SamplingParams
from rlkit.rollout.cache_policy import CacheKeeper
from rlkit.rollout.registry import build_engine_from_path
from rlkit.rollout.weight_sync import ChecksumTap, check_push, push_checked
from rlkit.trainer.rollout_batch import (
    agent_rows,
    completion_versions,
    completions_to_batch,
    prompt_token_lists,
    trajectories_to_batch,
)
from rlkit.trainer.transfer import WeightReceiver, WeightSender
from rlkit.training import ActorRole, CriticRole, RefRole, Teachers

_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


class ActorWorker:
    """The policy being trained (FSDP2)."""

    def __init__(self, **settings: Any) -> None:
        self.role = ActorRole(**settings)
        self._sender: WeightSender | None = None  # the collective transport's side (split placement)

    @dispatch("shard")
    def compute_log_prob(self, batch: Batch, temperature: float, with_sum_pi_squared: bool = False) -> Batch:
        return self.role.compute_log_prob(
            batch, temperature=temperature, with_sum_pi_squared=with_sum_pi_squared
        )

    @dispatch("shard")
    def compute_ref_log_prob(self, batch: Batch, temperature: float) -> Batch:
        """The reference log-probs of a LoRA actor (its base model, adapters off)."""
        return self.role.compute_ref_log_prob(batch, temperature=temperature)

    @dispatch("shard")
    def update(self, batch: Batch, settings: dict[str, Any]) -> dict[str, float]:
        """One RL update; on an accelerator also ``memory/update_peak_gib``, the peak device memory
        torch allocated during it (every role of this process included)."""
        hardware.reset_peak_memory_stats()
        metrics = self.role.update(batch, **settings)
        return self._with_peak(metrics)

    @dispatch("shard")
    def update_on_policy(self, batch: Batch, settings: dict[str, Any]) -> Batch:
        """One on-policy RL update that returns the forward's log-probs as ``old_log_probs`` (its
        metrics, with :meth:`update`'s peak memory, in the Batch's ``meta``)."""
        hardware.reset_peak_memory_stats()
        out = self.role.update_on_policy(batch, **settings)
        out.meta = self._with_peak(out.meta)
        return out

    @staticmethod
    def _with_peak(metrics: dict[str, Any]) -> dict[str, Any]:
        if worker_context().device.type != "cpu":
            metrics["memory/update_peak_gib"] = hardware.max_memory_allocated() / 2**30
        return metrics

    @dispatch("rank0")
    def export_hf(self, out_dir: str, tokenizer_path: str) -> None:
        """Write the current weights as a Hugging Face folder (all ranks gather, rank 0 writes)."""
        tensors = dict(self.role.named_full_tensors(dtype=None))
        if worker_context().rank == 0:
            tokenizer = load_tokenizer(tokenizer_path)
            write_hf_folder(out_dir, role_hf_config(self.role), tensors, tokenizer=tokenizer)

    @dispatch("rank0")
    def export_weights(self, dtype: str, bucket_mb: float) -> dict[str, Any]:
        """The full weights in Ray's object store, for rollout workers in another pool (split placement).

        Every rank gathers; rank 0 puts the tensors into buckets of about ``bucket_mb`` MiB and
        returns ``{"buckets": [ObjectRef, ...], "checksums": ...}`` (the checksum of every tensor:
        what the receiver's engine must report after loading them,
        :func:`~rlkit.rollout.weight_sync.check_push`).
        """
        tap = ChecksumTap(self.role.named_full_tensors(dtype=_DTYPES[dtype]))
        rank0 = worker_context().rank == 0
        buckets: list[Any] = []
        bucket: list[tuple[str, torch.Tensor]] = []
        size, limit = 0, bucket_mb * 2**20
        for name, tensor in tap:
            if not rank0:
                continue
            bucket.append((name, tensor.cpu()))
            size += tensor.numel() * tensor.element_size()
            if size >= limit:
                buckets.append(ray.put(bucket))
                bucket, size = [], 0
        if bucket:
            buckets.append(ray.put(bucket))
        return {"buckets": buckets, "checksums": tap.checksums()} if rank0 else {}

    @dispatch("rank0")
    def open_weight_transfer(self, world: int, dtype: str, bucket_mb: float) -> dict[str, Any]:
        """The collective transport's layout and store address (split placement, trainer/transfer.py)."""
        self._sender = WeightSender(self.role, _DTYPES[dtype])
        return self._sender.open(world, bucket_mb)

    @dispatch("rank0")
    def send_weights(self, step: int, timeout_s: float) -> dict[str, Any]:
        """Every rank gathers, rank 0 broadcasts to the rollout ranks; rank 0's checksums of what it sent."""
        assert self._sender is not None, "open_weight_transfer comes first"
        return self._sender.send(step, timeout_s)

    @dispatch("broadcast")
    def save_checkpoint(self, step_dir: str) -> None:
        """Write the actor's shards (DCP) and this worker process's RNG states into ``step_dir``."""
        save_role_state(self.role, Path(step_dir) / "actor")
        save_worker_rng(Path(step_dir), worker_context().rank)

    @dispatch("broadcast")
    def load_checkpoint(self, step_dir: str) -> str | None:
        """Restore the actor and this process's RNG states; returns what is wrong instead, if anything."""
        problem = load_role_state(self.role, Path(step_dir) / "actor")
        if problem is None:
            load_worker_rng(Path(step_dir), worker_context().rank)
        return problem


class RefWorker:
    """The frozen reference policy (KL terms)."""

    def __init__(self, **settings: Any) -> None:
        self.role = RefRole(**settings)

    @dispatch("shard")
    def compute_ref_log_prob(self, batch: Batch, temperature: float) -> Batch:
        return self.role.compute_ref_log_prob(batch, temperature=temperature)

    @dispatch("broadcast")
    def sync_from_actor(self, source_role: str = "actor") -> None:
        """Load the colocated actor's current weights (``ref.update_every``; every rank takes part)."""
        actor = worker_context().roles[source_role]
        self.role.load_weights(actor.role.named_full_tensors(dtype=self.role.dtype))

    @dispatch("broadcast")
    def save_checkpoint(self, step_dir: str) -> None:
        """Write the reference weights (a refreshed reference is part of the run's state)."""
        self.role.save_frozen(Path(step_dir) / "ref")

    @dispatch("broadcast")
    def load_checkpoint(self, step_dir: str) -> str | None:
        problem: str | None = self.role.load_frozen(Path(step_dir) / "ref")
        return problem


class TeacherWorker:
    """The frozen teacher models of on-policy distillation (each row scored by its own teacher)."""

    def __init__(self, **settings: Any) -> None:
        self.role = Teachers(**settings)

    @dispatch("shard")
    def compute_teacher(self, batch: Batch, temperature: float, topk: int) -> Batch:
        return self.role.compute_teacher(batch, temperature=temperature, topk=topk)


class CriticWorker:
    """The value model (PPO)."""

    def __init__(self, **settings: Any) -> None:
        self.role = CriticRole(**settings)

    @dispatch("shard")
    def compute_values(self, batch: Batch) -> Batch:
        return self.role.compute_values(batch)

    @dispatch("shard")
    def update(self, batch: Batch, settings: dict[str, Any]) -> dict[str, float]:
        return self.role.update(batch, **settings)

    @dispatch("broadcast")
    def save_checkpoint(self, step_dir: str) -> None:
        save_role_state(self.role, Path(step_dir) / "critic")

    @dispatch("broadcast")
    def load_checkpoint(self, step_dir: str) -> str | None:
        return load_role_state(self.role, Path(step_dir) / "critic")


class RolloutWorker:
    """The rollout engine on this worker's device, built by name (``rollout.engine``, resolved)."""

    def __init__(
        self,
        *,
        engine: str,
        model_path: str,
        dtype: str,
        max_num_seqs: int,
        cuda_graphs: bool,
        gpu_memory_utilization: float,
        max_model_len: int,
        seed: int,
        options: dict[str, Any] | None = None,
        log_dir: str | None = None,
        multi_turn: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        free_cache: str = "auto",
        partial_rollouts: str = "finish",
    ) -> None:
        device = worker_context().device
        self.keeper = CacheKeeper(free_cache, on_accelerator=device.type != "cpu")
        self.multi_turn = multi_turn if multi_turn and multi_turn.get("enable") else None
        self._agent: Any = None  # rlkit.agents.setup.AgentRuntime, built at the first generation
        self._tokenizer_path = tokenizer or model_path
        self.dtype = _DTYPES[dtype]
        self.engine = build_engine_from_path(
            engine,
            model_path,
            dtype=self.dtype,
            device=device,
            max_num_seqs=max_num_seqs,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            cuda_graphs=cuda_graphs and device.type == "cuda",
            seed=seed,
            options=options,
            log_dir=log_dir,
        )
        self._tally: dict[str, float] = {"seconds": 0.0, "sequences": 0, "tokens": 0}
        self._receiver: WeightReceiver | None = None  # the collective transport's side, at its first push
        # trainer.partial_rollouts=continue: pushes reach a running generation, tokens carry versions
        self.in_flight = partial_rollouts == "continue"
        if self.in_flight and not isinstance(self.engine, InFlightWeights):
            raise UserError(
                f"trainer.partial_rollouts=continue: rollout.engine={engine} cannot take new weights "
                "in the middle of a generation",
                hint="set rollout.engine=native or hf, or trainer.partial_rollouts=finish",
            )
        self._step_of: dict[int, int] = {}  # engine weight version -> the trainer step it loaded

    @dispatch("shard")
    def generate(
        self, prompts: Batch, params: dict[str, Any], pad_id: int, max_response_length: int
    ) -> Batch:
        """Samples for a shard of prompts (``prompts``/``prompt_attention_mask`` columns); rows are prompts x n."""
        sampling = SamplingParams(**params)
        if self.multi_turn is not None:
            return self._generate_with_agent(prompts, sampling, pad_id, max_response_length)
        token_lists = prompt_token_lists(prompts["prompts"], prompts["prompt_attention_mask"])
        started = time.perf_counter()
        completions = self.engine.generate(token_lists, sampling)
        self._tally["seconds"] += time.perf_counter() - started
        self._tally["sequences"] += sum(len(group) for group in completions)
        self._tally["tokens"] += sum(len(c.token_ids) for group in completions for c in group)
        batch = completions_to_batch(
            prompts, completions, pad_id=pad_id, max_response_length=max_response_length
        )
        if self.in_flight:  # a token's version is the step whose weights sampled it, not the draw's
            batch.set(
                "rollout_versions", completion_versions(completions, self._step_of, max_response_length)
            )
        return batch

    def _generate_with_agent(
        self, prompts: Batch, sampling: SamplingParams, pad_id: int, max_response_length: int
    ) -> Batch:
        """The agent loop's trajectories of a shard of prompts (``rollout.multi_turn.enable``)."""
        from rlkit.agents.rollouts import run_rollouts
        from rlkit.agents.setup import AgentRuntime

        mt = self.multi_turn
        assert mt is not None
        if self._agent is None:  # once per worker: tools may hold processes or indexes
            self._agent = AgentRuntime.build(mt, load_tokenizer(self._tokenizer_path))
        agent = self._agent
        started = time.perf_counter()
        groups, info = run_rollouts(
            self.engine,
            agent_rows(prompts),
            sampling,
            agent=str(mt["agent"]),
            tokenizer=agent.tokenizer,
            settings=loop_settings(mt, max_response_length),
            tools=agent.tools,
            interactions=agent.interactions,
            max_wait_s=float(mt.get("max_wait_ms", 10.0)) / 1000.0,
            executor=agent.executor,
        )
        # the same gauges as the single-turn path: trajectories, and the model's own tokens
        self._tally["seconds"] += time.perf_counter() - started
        self._tally["sequences"] += sum(len(group) for group in groups)
        self._tally["tokens"] += sum(sum(t.loss_mask) for group in groups for t in group)
        width = prompts["prompts"].shape[1] + int(info["prompt_overhead"])
        return trajectories_to_batch(
            prompts, groups, pad_id=pad_id, max_response_length=max_response_length, multi_turn=True,
            prompt_width=width,
        )  # fmt: skip

    @dispatch("broadcast")
    def sync_weights(self, step: int = 0, source_role: str = "actor") -> dict[str, Any]:
        """Copy the colocated actor's current weights into the engine and check that it took them.

        Every rank takes part. ``step`` is the trainer step the weights come from (0: before training).

        Returns:
            The engine's ``{"version", "checksum"}`` after the push.

        Raises:
            WeightSyncError: naming the step: the engine's weight version did not advance, it did
                not take in every pushed tensor unchanged, left a parameter out, or its read-back
                is not the pushed tensors' (the policy changed and the engine did not).
        """
        actor = worker_context().roles[source_role]
        self.keeper.after_update()
        self.engine.wake()
        return self._record(
            step, push_checked(step, self.engine, actor.role.named_full_tensors(dtype=self.dtype))
        )

    @dispatch("broadcast")
    def load_weights(self, step: int, export: dict[str, Any]) -> dict[str, Any]:
        """Load the weights :meth:`ActorWorker.export_weights` put in the object store (split placement).

        With partial rollouts this call arrives while :meth:`generate` may run on another thread of
        this worker: the engine takes the weights at its next step boundary and this returns once
        it has (:class:`~rlkit.rollout.base.InFlightWeights`).

        Returns and raises as :meth:`sync_weights` does: the engine's version must advance and its
        checksum must be the sender's.
        """
        self.engine.wake()

        def stream() -> Any:
            for ref in export["buckets"]:
                yield from ray.get(ref)

        if self.in_flight:  # a running generation takes them at its next step (rollout/inflight.py)
            assert isinstance(self.engine, InFlightWeights)  # checked when the worker was built
            before = self.engine.weight_version
            self.engine.update_weights_in_flight(stream())
            return self._record(step, check_push(step, self.engine, before, export["checksums"]))
        return self._record(step, push_checked(step, self.engine, stream(), sent=export["checksums"]))

    @dispatch("broadcast")
    def receive_weights(self, step: int, plan: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Receive the weights :meth:`ActorWorker.send_weights` broadcasts (collective transport);
        returns as :meth:`sync_weights` does, plus the checksums of the buckets as they arrived."""
        self.engine.wake()
        if self._receiver is None:
            self._receiver = WeightReceiver()
        return self._record(step, self._receiver.receive(self.engine, step, plan, timeout_s))

    def _record(self, step: int, pushed: dict[str, Any]) -> dict[str, Any]:
        """Remember which trainer step the engine's new weight version holds (per-token versions)."""
        self._step_of[int(pushed["version"])] = step
        return pushed

    @dispatch("broadcast")
    def gauges(self) -> dict[str, float]:
        """What this worker generated since the last call: ``sequences``, ``tokens``, ``tokens_per_s``."""
        tally, self._tally = self._tally, {"seconds": 0.0, "sequences": 0, "tokens": 0}
        out = {"sequences": float(tally["sequences"]), "tokens": float(tally["tokens"])}
        if tally["seconds"] > 0:
            out["tokens_per_s"] = tally["tokens"] / tally["seconds"]
        return out

    @probe
    def live_gauges(self) -> dict[str, float]:
        """The engine's gauges now (``running_seqs``, ``waiting_seqs``, ``kv_cache_used_fraction``,
        ``tokens_per_s``, where it knows them), read while a generation may be running."""
        return self.engine.gauges().as_metrics()

    @dispatch("broadcast")
    def sleep(self) -> None:
        """Before the colocated actor's update: free the engine's memory unless ``rollout.free_cache``
        keeps it (see :mod:`rlkit.rollout.cache_policy`)."""
        self.keeper.before_update(self.engine)

    @dispatch("broadcast")
    def close(self) -> None:
        """Close the engine: a vLLM server it started stops (killing the worker would leave it running)."""
        if self._agent is not None:  # the agent path's engine thread, and tools holding processes
            self._agent.close()
            self._agent = None
        self.engine.close()


class RewardModelWorker:
    """A sequence-classification reward model scoring (prompt, response) texts on this worker's device."""

    def __init__(self, *, model_path: str, dtype: str, max_length: int) -> None:
        from rlkit.rewards import RewardModelScorer

        torch_dtype = _DTYPES[dtype]
        self.scorer = RewardModelScorer(
            model_path, device=worker_context().device, dtype=torch_dtype, max_length=max_length
        )

    @dispatch("shard")
    def score(self, texts: Batch) -> Batch:
        """``prompt_text`` and ``response_text`` columns -> ``rm_scores`` (B,) float32."""
        scores = self.scorer.score(
            [str(t) for t in texts["prompt_text"]], [str(t) for t in texts["response_text"]]
        )
        return Batch(tensors={"rm_scores": scores.detach().float().cpu()})
