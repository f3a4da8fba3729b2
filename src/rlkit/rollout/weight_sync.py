"""Weight version and checksum of a rollout engine: what every engine reports after a push.

Every engine keeps a :class:`WeightLedger`: :meth:`WeightLedger.pushed` after each
``update_weights`` bumps the version and remembers ``[sum, sum |x|]`` (float64) of a few pushed
tensors (:func:`checksum_names`); the engine's ``weights_checksum()`` reads the same sums back
from where its weights really live (its own module, or inside vLLM's worker), and
:func:`check_checksums` compares them. A push that did not land (an extension that drops the
tensors, a reload that only warns) raises :class:`WeightSyncError` instead of letting the trainer
go on with rollouts of stale weights.

The trainer's rollout worker checks every push the same way for every engine
(:func:`check_push`), with the checksums of the tensors it streamed (:class:`ChecksumTap`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

# Relative tolerance of a checksum: float64 sums of the same float values in another order.
CHECKSUM_RTOL = 1e-9
Checksums = dict[str, list[float]]


class WeightSyncError(RuntimeError):
    """The engine does not hold the weights that were pushed (its checksum disagrees)."""


def checksum_names(hf_names: Iterable[str], *, linear: bool = False) -> list[str]:
    """The few parameters a checksum reads: embeddings, lm_head, the final and the last layer's norms.

    These are the parameters vLLM keeps under their Hugging Face names and layout on every
    platform (the CPU backend repacks linear weights into opaque buffers, so those cannot be read
    back). ``linear`` adds the last layer's projection weights (``*_proj.weight``), for engines
    that hold them under their Hugging Face names (native, hf): a LoRA run changes nothing but
    linear weights, so only these show that its merged push landed.
    """
    names = sorted(set(hf_names))
    keep = [n for n in names if "embed_tokens" in n or n.startswith("lm_head") or n == "model.norm.weight"]
    norms = [n for n in names if n.endswith("layernorm.weight")]
    last = max((_layer_index(n) for n in norms), default=None)
    keep += [n for n in norms if _layer_index(n) == last]
    if linear:
        last = max((_layer_index(n) for n in names), default=None)
        keep += [n for n in names if n.endswith("_proj.weight") and _layer_index(n) == last]
    return keep


def checksum_of(tensor: torch.Tensor) -> list[float]:
    """``[sum, sum of |x|]`` of a tensor, accumulated in float64 where the tensor is (no float64 copy)."""
    data = tensor.detach()
    return [float(data.sum(dtype=torch.float64)), float(data.abs().sum(dtype=torch.float64))]


def tensor_checksums(named_tensors: Iterable[tuple[str, torch.Tensor]], names: Iterable[str]) -> Checksums:
    """``[sum, sum of |x|]`` in float64 of the named tensors (the same numbers the engines read back)."""
    wanted = set(names)
    return {name: checksum_of(tensor) for name, tensor in named_tensors if name in wanted}


def check_checksums(expected: Checksums, got: Checksums, version: int, where: str = "") -> None:
    """Raise :class:`WeightSyncError` unless every expected checksum is matched by the engine's.

    The tolerance is float64 summation-order error relative to ``sum |x|`` (not a machine-measured
    number). ``where`` names the push in the message (default: ``weight push v<version>``).
    """
    for name, (total, magnitude) in expected.items():
        seen = got.get(name)
        tol = CHECKSUM_RTOL * max(magnitude, 1.0)
        if seen is None or abs(seen[0] - total) > tol or abs(seen[1] - magnitude) > tol:
            raise WeightSyncError(
                f"{where or f'weight push v{version}'}: the rollout engine's {name} has checksum {seen}, "
                f"the pushed tensor {[total, magnitude]}: the engine did not take the new weights"
            )


class WeightLedger:
    """An engine's weight version and the checksums of what it was last given.

    Attributes:
        version: Pushes so far (0: the weights the engine was built with).
        expected: Checksums of the last pushed value of every checked tensor.
    """

    def __init__(self) -> None:
        self.version = 0
        self.expected: Checksums = {}

    def pushed(self, checksums: Checksums) -> None:
        """A push happened: bump the version and remember what it sent."""
        self.version += 1
        self.expected.update(checksums)

    def verify(self, got: Checksums, expected: Checksums | None = None) -> None:
        """Check the engine's read-back ``got`` against ``expected`` (default: what was pushed).

        Raises:
            WeightSyncError: they disagree.
        """
        check_checksums(self.expected if expected is None else expected, got, self.version)


class VersionedWeights:
    """What every engine class mixes in: ``weight_version`` and ``verify_weights`` over its ledger.

    The engine sets ``self.ledger = WeightLedger()``, calls ``self.ledger.pushed(...)`` at the end
    of ``update_weights`` and implements ``weights_checksum()`` (read back from where its weights live).
    """

    ledger: WeightLedger

    @property
    def weight_version(self) -> int:
        """Pushes so far (0: the weights the engine was built with)."""
        return self.ledger.version

    def weights_checksum(self) -> Checksums:
        """``[sum, sum |x|]`` of a few parameters, read back from the engine."""
        raise NotImplementedError

    def verify_weights(self, expected: Checksums | None = None) -> None:
        """Check the engine's checksum against ``expected`` (default: the last pushed tensors').

        Raises:
            WeightSyncError: they disagree.
        """
        self.ledger.verify(self.weights_checksum(), expected)


def copy_weights(
    module: nn.Module, named_tensors: Iterable[tuple[str, torch.Tensor]], names: list[str]
) -> Checksums:
    """Copy tensors into ``module`` in place by Hugging Face name; returns the checksums of ``names``.

    Raises:
        ValueError: an unknown name or a shape that does not match.
    """
    state = module.state_dict()
    wanted = set(names)
    sums: Checksums = {}
    with torch.no_grad():
        for name, tensor in named_tensors:
            target = state.get(name)
            if target is None:
                raise ValueError(f"update_weights: the model has no parameter {name!r}")
            if target.shape != tensor.shape:
                raise ValueError(
                    f"update_weights: {name} has shape {tuple(target.shape)}, got {tuple(tensor.shape)}"
                )
            target.copy_(tensor)
            if name in wanted:
                sums[name] = checksum_of(tensor.to(target.dtype))
    return sums


def module_checksums(module: nn.Module, names: list[str]) -> Checksums:
    """``[sum, sum |x|]`` of the named tensors of an in-process module (what it really holds)."""
    state = module.state_dict()
    return {name: checksum_of(state[name]) for name in names if name in state}


class ChecksumTap:
    """Passes ``(name, tensor)`` pairs through and keeps the checksums of every tensor a checksum may read.

    Which names :func:`checksum_names` picks depends on all names (the last layer), so the tap
    keeps every small candidate's sums and :meth:`checksums` filters at the end. The projection
    weights (``linear=True``) are large: the tap holds only those of the highest layer seen so far
    and sums them at the end, instead of summing every layer's.
    """

    def __init__(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        self._source = named_tensors
        self._sums: Checksums = {}
        self._last_layer: dict[str, torch.Tensor] = {}

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in self._source:
            if checksum_names([name]) or ".lora_" in name:
                self._sums[name] = checksum_of(tensor)
            elif checksum_names([name], linear=True):
                self._hold_if_last(name, tensor)
            yield name, tensor

    def _hold_if_last(self, name: str, tensor: torch.Tensor) -> None:
        held = _layer_index(next(iter(self._last_layer))) if self._last_layer else -1
        if _layer_index(name) > held:
            self._last_layer = {}
        if _layer_index(name) >= held:
            self._last_layer[name] = tensor

    def checksums(self) -> Checksums:
        """The checksums of the tensors a checksum reads (call after the pairs were consumed)."""
        sums = {**self._sums, **{n: checksum_of(t) for n, t in self._last_layer.items()}}
        keep = set(checksum_names(sums, linear=True)) | {n for n in sums if ".lora_" in n}
        return {n: s for n, s in sums.items() if n in keep}


def check_push(step: int, engine: Any, version_before: int, pushed: Checksums) -> dict[str, Any]:
    """The trainer's check after a push: the engine's version advanced and it holds what was pushed.

    Args:
        step: The trainer step whose weights were pushed (0: the weights before training).
        engine: The rollout engine (``weight_version`` and ``weights_checksum()``).
        version_before: The engine's ``weight_version`` before the push.
        pushed: Checksums of the pushed tensors (:meth:`ChecksumTap.checksums`).

    Returns:
        ``{"version", "checksum"}``: what the engine reports.

    Raises:
        WeightSyncError: the version did not advance, the engine reports none of the pushed
            tensors, or its checksum differs from the pushed one (the policy changed, the engine did not).
    """
    where = f"weight push after step {step}"
    version = int(engine.weight_version)
    if version <= version_before:
        raise WeightSyncError(f"{where}: the rollout engine's weight version stayed at v{version}")
    got = engine.weights_checksum()
    common = {name: sums for name, sums in pushed.items() if name in got}
    if not common:
        raise WeightSyncError(
            f"{where}: the rollout engine reports no checksum of the pushed tensors "
            f"(pushed {sorted(pushed)[:3]}, engine {sorted(got)[:3]})"
        )
    check_checksums(common, got, version, where=f"{where} (engine v{version})")
    return {"version": version, "checksum": got}


def _layer_index(name: str) -> int:
    parts = name.split(".")
    return int(parts[2]) if len(parts) > 2 and parts[1] == "layers" and parts[2].isdigit() else -1
