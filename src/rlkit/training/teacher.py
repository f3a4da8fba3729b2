"""The teacher role of on-policy distillation: a frozen model scoring the student's own samples.

Built on the reference role's machinery (:class:`~rlkit.training.ref.RefRole`: frozen, sharded, in the
compute dtype, colocated with the actor), with a head that returns, for each response token, the
teacher's log-prob of the sampled token and its top-k log-probs and token ids, computed a chunk of
positions at a time (:func:`rlkit.models.topk.token_topk_logprobs`: never the full (N, V) fp32 logits).

Shape legend: B = rows of the rank's batch, R = response length, K = top-k.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rlkit.data.batch import Batch
from rlkit.errors import UserError
from rlkit.training.heads import PackedTopK
from rlkit.training.passes import packed_micro_batches, require_columns, response_len, rows_on, temperature_of
from rlkit.training.ref import RefRole

TEACHER_COLUMNS = ("teacher_log_prob", "teacher_topk_log_probs", "teacher_topk_ids")
"""The columns :meth:`TeacherRole.compute_teacher` returns."""


class TeacherRole(RefRole):
    """One frozen teacher model (any model the training engine loads; ``builtin:`` names included)."""

    head = PackedTopK

    @torch.no_grad()
    def compute_teacher(self, batch: Batch, temperature: float | None = None, topk: int = 32) -> Batch:
        """The teacher's log-probs of the sampled response tokens and its top-k at each position.

        Returns:
            A Batch with ``teacher_log_prob`` (B, R) fp32, ``teacher_topk_log_probs`` (B, R, K) fp32
            (descending) and ``teacher_topk_ids`` (B, R, K) int64; zeros on padding.
        """
        require_columns(batch, ("input_ids", "attention_mask", "responses"), "compute_teacher")
        rows, width, device = len(batch), response_len(batch), self.device
        logp = torch.zeros(rows, width, dtype=torch.float32, device=device)
        top = torch.zeros(rows, width, topk, dtype=torch.float32, device=device)
        ids = torch.zeros(rows, width, topk, dtype=torch.long, device=device)
        for mb in packed_micro_batches(batch, self.micro_batch_tokens, device):
            lp_N, top_NK, ids_NK = self.module(
                mb.input_ids_T,
                mb.position_ids_T,
                mb.cu_seqlens,
                mb.gather_idx_N,
                mb.labels_N,
                temperature=temperature_of(batch, temperature),
                topk=topk,
                chunk_tokens=self.chunk_tokens,
            )
            if mb.is_padding:
                continue
            index = rows_on(mb, device)
            logp[index] = mb.scatter(lp_N.float(), width)
            top[index] = mb.scatter(top_NK.float(), width)
            ids[index] = mb.scatter(ids_NK, width)
        return Batch(
            tensors={
                "teacher_log_prob": logp.cpu(),
                "teacher_topk_log_probs": top.cpu(),
                "teacher_topk_ids": ids.cpu(),
            }
        )


class Teachers:
    """Several teachers, each row scored by the one its ``teacher`` column names (default: the first).

    Args:
        teachers: name -> model path, in order (the first is the default teacher).
        column: the non-tensor batch column naming each row's teacher.
        **settings: :class:`TeacherRole`'s keywords, shared by all teachers.
    """

    def __init__(self, teachers: dict[str, str], *, column: str = "teacher", **settings: Any) -> None:
        if not teachers:
            raise UserError("distillation needs at least one teacher", hint="set algo.distill.teachers")
        self.names = list(teachers)
        self.column = column
        self.roles = {name: TeacherRole(path, **settings) for name, path in teachers.items()}

    def choose(self, batch: Batch) -> np.ndarray:
        """The index (into :attr:`names`) of each row's teacher.

        Raises:
            UserError: a row names a teacher that is not configured.
        """
        if len(self.names) == 1 or self.column not in batch.non_tensors:
            return np.zeros(len(batch), dtype=np.int64)
        position = {name: i for i, name in enumerate(self.names)}
        chosen = [
            None if v is None or v == "" else position.get(str(v), -1) for v in batch.non_tensors[self.column]
        ]
        unknown = sorted(
            {str(v) for v, c in zip(batch.non_tensors[self.column], chosen, strict=True) if c == -1}
        )
        if unknown:
            raise UserError(
                f"data column {self.column!r} names teachers {unknown[:3]} that are not configured",
                hint=f"algo.distill.teachers has {self.names}; name one of them per row (empty: the first)",
            )
        return np.array([0 if c is None else c for c in chosen], dtype=np.int64)

    def compute_teacher(self, batch: Batch, temperature: float | None = None, topk: int = 32) -> Batch:
        """Each row's teacher outputs (see :meth:`TeacherRole.compute_teacher`).

        Every teacher runs over the rank's whole shard (its passes are collectives, so all ranks run
        the same teachers), and each row keeps its own teacher's results.
        """
        chosen = torch.from_numpy(self.choose(batch))
        outputs = [self.roles[name].compute_teacher(batch, temperature, topk) for name in self.names]
        if len(outputs) == 1:
            return outputs[0]
        merged = {}
        for key in TEACHER_COLUMNS:
            stacked = torch.stack([out[key] for out in outputs])  # (T, B, ...)
            merged[key] = stacked[chosen, torch.arange(len(batch))]
        return Batch(tensors=merged)
