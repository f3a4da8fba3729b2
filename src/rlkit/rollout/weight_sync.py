"""Weight version and checksums of a rollout engine: what every engine reports after a push.

A checksum is :func:`word_sum`: the tensor's bytes added up as 64-bit integers. It is exact (no
tolerance: integer addition gives the same result in any order, on any device and thread count),
so two checksums are compared with ``==``, and it costs one reduction over the tensor's memory.
Two checks, both after every push, for every engine:

- **Receipt** (every pushed tensor): the engine sums each tensor as it takes it in (vLLM: inside
  its worker, as vLLM's loader is handed the tensor, before the CPU backend repacks it; native and
  hf: read back from the module after the copy) and names what did not line up: pushed names it
  has no parameter for, and its parameters no pushed tensor covered (vLLM's reload only *warns*
  about those). The trainer compares the sums with those of what it sent
  (:class:`ChecksumTap`, :func:`check_push`).
- **Read-back** (a few parameters, :func:`checksum_names`): ``weights_checksum()`` sums them
  where the engine's weights really live after the push (its own module, or vLLM's parameters
  that keep their Hugging Face layout), compared with the pushed tensors' sums.

Every engine keeps a :class:`WeightLedger` and ends ``update_weights`` with :func:`land_push`.
A push that did not land raises :class:`WeightSyncError` instead of letting the trainer go on
with rollouts of stale weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

# Checksums (:func:`word_sum`) by Hugging Face name.
Checksums = dict[str, int]
# Names a one-line error lists before "and N more".
_NAMES_SHOWN = 3
# Integer views of a tensor's bytes, widest first: the first whose size divides the byte count
# (and the tensor's offset in its storage) is used.
_WORDS = ((8, torch.int64), (4, torch.int32), (2, torch.int16), (1, torch.uint8))


class WeightSyncError(RuntimeError):
    """The engine does not hold the weights that were pushed; ``where`` names the push."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(where, problem)  # both in args: Ray re-creates the error from them
        self.where = where
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}"


def word_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as integers, summed in int64 on its own device (a 0-d tensor, not fetched).

    Integer addition (wrapping at 2**64) is associative, so the sum is the same bit for bit
    whatever the order, device or thread count: an exact checksum, compared with ``==``. Any
    change of any value changes it (except a permutation, or changes that cancel in the sum).
    One reduction over the tensor's memory, no float64 copy: about the cost of a ``sum()``.
    """
    data = tensor.detach()
    if not data.is_contiguous():
        data = data.contiguous()  # the same word boundaries as a contiguous copy of the values
    raw = data.reshape(-1).view(torch.uint8)
    offset = data.storage_offset() * data.element_size()
    word = next(w for size, w in _WORDS if raw.numel() % size == 0 and offset % size == 0)
    return raw.view(word).sum(dtype=torch.int64)


class WordSumAccumulator:
    """:func:`word_sum` of many tensors, each summed where it is, all fetched together at the end.

    No transfer per tensor (on an accelerator the sums queue behind the push): one ``tolist()``
    per device in :meth:`result`.
    """

    def __init__(self) -> None:
        self._names: list[str] = []
        self._sums: list[torch.Tensor] = []

    def add(self, name: str, tensor: torch.Tensor) -> None:
        self._names.append(name)
        self._sums.append(word_sum(tensor))

    def result(self) -> Checksums:
        """The sums by name (a name added twice: its last sum)."""
        by_device: dict[torch.device, list[int]] = {}
        for i, value in enumerate(self._sums):
            by_device.setdefault(value.device, []).append(i)
        out: Checksums = {}
        for rows in by_device.values():
            values = torch.stack([self._sums[i] for i in rows]).tolist()
            out.update((self._names[i], int(v)) for i, v in zip(rows, values, strict=True))
        return out


@dataclass
class Receipt:
    """What an engine took in during one push.

    Attributes:
        sums: :func:`word_sum` of every tensor as the engine took it in, by pushed name.
        unknown: Pushed names the engine has no parameter for (None: it cannot tell).
        uncovered: The engine's parameters no pushed tensor covered (None: it cannot tell).
        read_back: The sums were read back from where the weights live after the push (native,
            hf), so they are the engine's read-back too; vLLM's are taken before its repack.
    """

    sums: Checksums
    unknown: list[str] | None = field(default_factory=list)
    uncovered: list[str] | None = field(default_factory=list)
    read_back: bool = False

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Receipt:
        """From the plain dict vLLM's worker returns (``collective_rpc`` results are JSON for a server)."""
        return cls({k: int(v) for k, v in raw["sums"].items()}, raw.get("unknown"), raw.get("uncovered"))


def checksum_names(hf_names: Iterable[str], *, linear: bool = False) -> list[str]:
    """The few parameters a checksum reads: embeddings, lm_head, the final and the last layer's norms.

    These are the parameters vLLM keeps under their Hugging Face names and layout on every
    platform (the CPU backend repacks linear weights into opaque buffers, so those cannot be read
    back). ``linear`` adds the last layer's projection weights (``*_proj.weight``), for engines
    that hold them under their Hugging Face names (native, hf): a LoRA run changes nothing but
    linear weights. (Every pushed tensor, linear ones included, is in the receipt on every engine.)
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


def checksum_of(tensor: torch.Tensor) -> int:
    """The :func:`word_sum` of one tensor, fetched (many tensors: :class:`WordSumAccumulator`)."""
    return int(word_sum(tensor))


def tensor_checksums(named_tensors: Iterable[tuple[str, torch.Tensor]], names: Iterable[str]) -> Checksums:
    """The checksums of the named tensors (the same numbers the engines read back)."""
    wanted = set(names)
    return {name: checksum_of(tensor) for name, tensor in named_tensors if name in wanted}


def check_checksums(expected: Checksums, got: Checksums, version: int, where: str = "") -> None:
    """Raise :class:`WeightSyncError` unless every expected checksum equals the engine's.

    ``where`` names the push in the message (default: ``weight push v<version>``).
    """
    for name, total in expected.items():
        seen = got.get(name)
        if seen != total:
            raise WeightSyncError(
                where or f"weight push v{version}",
                f"the rollout engine's {name} has checksum {seen}, the pushed tensor {total}: "
                "the engine did not take the new weights",
            )


class WeightLedger:
    """An engine's weight version and the checksums of what it was last given.

    Attributes:
        version: Pushes so far (0: the weights the engine was built with).
        expected: Checksums of the checked tensors of the last push.
        received: The last push's receipt (:class:`Receipt`; empty before the first push).
    """

    def __init__(self) -> None:
        self.version = 0
        self.expected: Checksums = {}
        self.received = Receipt({})

    def pushed(self, checksums: Checksums, received: Receipt | None = None) -> None:
        """A push happened: bump the version and remember what it sent and what the engine took."""
        self.version += 1
        self.expected = dict(checksums)  # a push covers every parameter (land_push checks it)
        self.received = received if received is not None else Receipt({})

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
        """The checksums of a few parameters, read back from the engine."""
        raise NotImplementedError

    def push_receipt(self) -> Receipt:
        """What the engine took in during the last push (:class:`Receipt`)."""
        return self.ledger.received

    def verify_weights(self, expected: Checksums | None = None) -> None:
        """Check the engine's checksum against ``expected`` (default: the last pushed tensors').

        Raises:
            WeightSyncError: they disagree.
        """
        self.ledger.verify(self.weights_checksum(), expected)


def copy_weights(
    module: nn.Module, named_tensors: Iterable[tuple[str, torch.Tensor]], names: list[str]
) -> tuple[Checksums, Receipt]:
    """Copy tensors into ``module`` in place by Hugging Face name (the native and hf engines' push).

    Returns:
        The checksums of ``names`` as pushed (cast to the module's dtype), and the receipt: every
        pushed name read back from the module (right after its copy, while it is in cache; again
        at the end where two pushed names share one storage, as tied weights do, so the value that
        stayed shows), and the parameters whose storage no pushed name wrote.

    Raises:
        ValueError: an unknown name or a shape that does not match.
    """
    state = module.state_dict()
    wanted = set(names)
    sums: Checksums = {}
    held = WordSumAccumulator()
    written: dict[int, list[str]] = {}
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
            held.add(name, target)
            written.setdefault(target.data_ptr(), []).append(name)
            if name in wanted:
                sums[name] = checksum_of(tensor.to(target.dtype))
    for group in written.values():
        if len(group) > 1:  # one storage under several names: read what stayed, after the push
            for name in group:
                held.add(name, state[name])  # the later sum wins
    uncovered = [n for n, p in module.named_parameters() if p.numel() and p.data_ptr() not in written]
    return sums, Receipt(held.result(), [], uncovered, read_back=True)


def module_checksums(module: nn.Module, names: list[str]) -> Checksums:
    """The checksums of the named tensors of an in-process module (what it really holds)."""
    state = module.state_dict()
    sums = WordSumAccumulator()
    for name in names:
        if name in state:
            sums.add(name, state[name])
    return sums.result()


def _listed(names: list[str]) -> str:
    """A few names for a one-line error: ``a, b, c and 4 more``."""
    shown = ", ".join(names[:_NAMES_SHOWN])
    return shown + (f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else "")


def land_push(engine: VersionedWeights, expected: Checksums, receipt: Receipt) -> None:
    """The tail of every engine's ``update_weights``: record the push, then check that it landed.

    Bumps the version (the error names the push that failed), then raises unless the engine has a
    parameter for every pushed name, every parameter was covered, and the read-back checksum is
    the pushed tensors' (:meth:`VersionedWeights.verify_weights`; a receipt that is a read-back
    already is used as it is, no second pass over the weights). The receipt's sums are the
    trainer's to compare (:func:`check_push`): only it knows what it sent.

    Raises:
        WeightSyncError: one of those does not hold.
    """
    engine.ledger.pushed(expected, receipt)
    where = f"weight push v{engine.ledger.version}"
    if receipt.unknown:
        raise WeightSyncError(
            where,
            f"the rollout engine has no parameter for the pushed {_listed(receipt.unknown)}: "
            "the pushed weights are not this engine's model",
        )
    if receipt.uncovered:
        raise WeightSyncError(
            where,
            f"no pushed tensor covered the rollout engine's {_listed(receipt.uncovered)}: "
            "the engine did not take the new weights (it keeps their old values)",
        )
    if receipt.read_back:
        check_checksums(expected, receipt.sums, engine.ledger.version)
    else:
        engine.verify_weights()


class ChecksumTap:
    """Passes ``(name, tensor)`` pairs through and sums every one: what the engine's checks compare.

    Each sum is taken on the tensor's device as it passes (queued behind the push on an
    accelerator) and all are fetched once, by :meth:`checksums` after the pairs were consumed.
    """

    def __init__(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        self._source = named_tensors
        self._sums = WordSumAccumulator()
        self._result: Checksums | None = None

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in self._source:
            self._sums.add(name, tensor)
            yield name, tensor

    def checksums(self) -> Checksums:
        """The checksum of every tensor that passed."""
        if self._result is None:
            self._result = self._sums.result()
        return self._result


def check_push(step: int, engine: Any, version_before: int, sent: Checksums) -> dict[str, Any]:
    """The trainer's check after a push: the version advanced, the engine took every tensor sent
    unchanged, and its read-back is the pushed tensors'.

    Args:
        step: The trainer step whose weights were pushed (0: the weights before training).
        engine: The rollout engine (``weight_version``, ``push_receipt()``, ``weights_checksum()``).
        version_before: The engine's ``weight_version`` before the push.
        sent: The checksum of every pushed tensor (:meth:`ChecksumTap.checksums`).

    Returns:
        ``{"version", "checksum"}``: what the engine reports (``checksum``: its read-back).

    Raises:
        WeightSyncError: naming the step: the version did not advance, a tensor sent is missing
            from the engine's receipt or differs there, or the read-back differs (the policy
            changed, the engine did not).
    """
    version = int(engine.weight_version)
    where = f"weight push after step {step} (engine v{version})"
    if version <= version_before:
        raise WeightSyncError(
            f"weight push after step {step}", f"the rollout engine's weight version stayed at v{version}"
        )
    _check_receipt(where, engine.push_receipt().sums, sent)
    got = engine.weights_checksum()
    common = {name: sums for name, sums in sent.items() if name in got}
    if not common:
        raise WeightSyncError(
            where,
            f"the rollout engine reads back none of the pushed tensors "
            f"(pushed {sorted(sent)[:3]}, engine {sorted(got)[:3]})",
        )
    check_checksums(common, got, version, where=where)
    return {"version": version, "checksum": got}


def _check_receipt(where: str, received: Checksums, sent: Checksums) -> None:
    """Every tensor sent is in the engine's receipt with the same checksum."""
    missing = [name for name in sent if name not in received]
    if missing:
        raise WeightSyncError(
            where,
            f"the rollout engine did not take in {_listed(missing)} ({len(received)} of the "
            f"{len(sent)} pushed tensors arrived): the engine did not take the new weights",
        )
    for name, value in sent.items():
        if received[name] != value:
            raise WeightSyncError(
                where,
                f"the rollout engine took in {name} with checksum {received[name]}, the trainer sent "
                f"{value}: the tensor changed on the way, the engine did not take the new weights",
            )


def push_checked(
    step: int,
    engine: Any,
    named_tensors: Iterable[tuple[str, torch.Tensor]],
    sent: Checksums | None = None,
) -> dict[str, Any]:
    """Push ``named_tensors`` into ``engine`` and check it (:func:`check_push`): the rollout
    worker's weight sync, for every engine.

    ``sent``: the sender's checksums when the tensors were summed elsewhere (split placement: the
    actor's process); by default they are summed here as they stream. An engine's own
    :class:`WeightSyncError` is re-raised naming the step.
    """
    before = engine.weight_version
    tap = ChecksumTap(named_tensors)
    try:
        engine.update_weights(tap if sent is None else named_tensors)
    except WeightSyncError as exc:
        where = f"weight push after step {step} (engine v{engine.weight_version})"
        raise WeightSyncError(where, exc.problem).with_traceback(exc.__traceback__) from None
    return check_push(step, engine, before, tap.checksums() if sent is None else sent)


def _layer_index(name: str) -> int:
    parts = name.split(".")
    return int(parts[2]) if len(parts) > 2 and parts[1] == "layers" and parts[2].isdigit() else -1
