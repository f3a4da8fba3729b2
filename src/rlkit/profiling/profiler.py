"""Profilers that run inside every worker process for a window of RL steps (``rlkit profile``).

Four kinds, one per ``rlkit profile`` flag:

- ``torch``: ``torch.profiler`` (CPU ops, plus GPU kernels on CUDA/ROCm); one Chrome trace per
  worker, ``RUN/profile/torch_rank{R}.pt.trace.json`` (open in https://ui.perfetto.dev).
- ``npu``: torch_npu's profiler (Ascend); one folder per worker under ``RUN/profile/npu/`` (open
  with MindStudio Insight, or ``torch-tb-profiler-ascend``).
- ``memory``: the device allocator's history with Python stacks; one snapshot per worker,
  ``RUN/profile/memory_rank{R}.pickle`` (drop it on https://pytorch.org/memory_viz).
- ``nsight``: opens and closes the CUDA profiler-API range, so that ``nsys profile
  --capture-range=cudaProfilerApi`` (which ``rlkit profile --nsight`` runs the whole job under)
  records exactly the chosen steps; the report is ``RUN/profile/nsight.nsys-rep``.

:class:`ProfilerRole` is the role the trainer adds to its worker group; the controller
broadcasts ``start`` before the first profiled step and ``stop`` after the last
(:class:`ProfileWindow` says when).
"""

from __future__ import annotations

import os
import warnings
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from rlkit.controller.dispatch import dispatch
from rlkit.errors import UserError
from rlkit.hardware import capture
from rlkit.hardware import device as hw

ProfileKind = Literal["torch", "npu", "memory", "nsight"]
KINDS: tuple[str, ...] = get_args(ProfileKind)
# Allocation events a memory snapshot keeps; about 1 KB each with stacks, so ~100 MB per worker.
_MEMORY_MAX_ENTRIES = 100_000


class _Session(ABC):
    """One running profiler, started by its constructor."""

    @abstractmethod
    def stop(self) -> list[str]:
        """Stop and write the results; returns the files or folders written."""


def _all_threads_config() -> Any:
    """Kineto config that records CPU ops of every thread, not just the one that started the profiler.

    Ray runs an actor's calls on pool threads, so the thread that starts the profiler is rarely
    the one that runs the work; torch builds without the option record that thread only.
    """
    try:
        return torch._C._profiler._ExperimentalConfig(profile_all_threads=True)
    except TypeError:  # pragma: no cover - older torch
        warnings.warn(
            "this torch cannot profile all threads; CPU ops of other threads are missing", stacklevel=3
        )
        return None


class _TorchSession(_Session):
    def __init__(self, out_dir: Path, rank: int, tag: str) -> None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if hw.device_type() in ("cuda", "rocm"):
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._path = out_dir / f"torch_rank{rank}{tag}.pt.trace.json"
        self._prof = torch.profiler.profile(
            activities=activities, record_shapes=True, experimental_config=_all_threads_config()
        )
        self._prof.start()

    def stop(self) -> list[str]:
        self._prof.stop()
        self._prof.export_chrome_trace(str(self._path))
        return [str(self._path)]


class _NpuSession(_Session):
    def __init__(self, out_dir: Path, rank: int, tag: str) -> None:
        self._dir = out_dir / "npu"
        self._prof = capture.npu_profiler(self._dir, worker_name=f"rank{rank}{tag}")
        self._prof.start()

    def stop(self) -> list[str]:
        self._prof.stop()  # the trace handler writes (and parses) the data here
        return [str(self._dir)]


class _MemorySession(_Session):
    def __init__(self, out_dir: Path, rank: int, tag: str) -> None:
        self._path = out_dir / f"memory_rank{rank}{tag}.pickle"
        capture.record_memory_history(True, max_entries=_MEMORY_MAX_ENTRIES)

    def stop(self) -> list[str]:
        capture.dump_memory_snapshot(self._path)
        capture.record_memory_history(False)
        return [str(self._path)]


class _NsightSession(_Session):
    def __init__(self, out_dir: Path, rank: int, tag: str) -> None:
        hw.synchronize()  # work queued before the window must not land inside it
        capture.profiler_range_start()

    def stop(self) -> list[str]:
        hw.synchronize()
        capture.profiler_range_stop()
        return []  # nsys writes the report when the job ends


_SESSIONS: dict[str, type[_Session]] = {
    "torch": _TorchSession,
    "npu": _NpuSession,
    "memory": _MemorySession,
    "nsight": _NsightSession,
}


class WorkerProfiler:
    """Runs at most one profiler in this process, between :meth:`start` and :meth:`stop`.

    Both run on one thread of this object's own: torch's profiler must be stopped on the thread
    that started it (another thread crashes the process), and Ray may run the two calls on
    different threads of its pool.
    """

    def __init__(self) -> None:
        self._session: _Session | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlkit-profiler")

    @property
    def active(self) -> bool:
        return self._session is not None

    def start(self, out_dir: str | Path, kind: str, *, rank: int = 0, tag: str = "") -> None:
        """Start profiling this process; files go to ``out_dir`` (created if missing).

        Args:
            out_dir: Folder of the run's profiles (``RUN/profile``).
            kind: One of :data:`KINDS`.
            rank: Rank of this worker, used in file names.
            tag: Appended to file names (e.g. ``"_steps3-5"``), so that several windows can coexist.

        Raises:
            ValueError: Unknown kind, or a profiler already runs here.
            RuntimeError: The kind cannot run on this device (memory snapshots on CPU, npu without torch_npu).
        """
        if kind not in _SESSIONS:
            raise ValueError(f"unknown profiler kind {kind!r}; use one of {KINDS}")
        if self._session is not None:
            raise ValueError("a profiler is already running in this process; stop it first")
        path = Path(out_dir)
        path.mkdir(parents=True, exist_ok=True)
        self._session = self._thread.submit(_SESSIONS[kind], path, rank, tag).result()

    def stop(self) -> list[str]:
        """Stop profiling and write the results; returns the paths written ([] if nothing ran)."""
        session, self._session = self._session, None
        return self._thread.submit(session.stop).result() if session is not None else []


class ProfilerRole:
    """The ``profiler`` role of a worker group: a :class:`WorkerProfiler` in every worker process.

    Colocated with the other roles, it profiles everything the process does between ``start``
    and ``stop`` (rollout, log-probs, updates, weight sync).
    """

    def __init__(self) -> None:
        self.profiler = WorkerProfiler()

    @dispatch("broadcast")
    def start(self, out_dir: str, kind: str, tag: str = "") -> None:
        # RANK is set by the worker host before any role is built.
        self.profiler.start(out_dir, kind, rank=int(os.environ.get("RANK", "0")), tag=tag)

    @dispatch("broadcast")
    def stop(self) -> list[str]:
        return self.profiler.stop()


@dataclass(frozen=True)
class ProfileWindow:
    """Which RL steps a run profiles: ``first`` to ``last`` inclusive (``kind="none"``: none)."""

    kind: str
    first: int = 0
    last: int = 0

    @classmethod
    def from_settings(cls, kind: str, steps: list[int] | tuple[int, ...], total_steps: int) -> ProfileWindow:
        """From ``trainer.profile`` and ``trainer.profile_steps``; the window is clamped to the run.

        Raises:
            UserError: ``steps`` is not ``[first, last]`` with 1 <= first <= last, or starts after the run ends.
        """
        if kind == "none":
            return cls("none")
        if kind not in KINDS:
            raise UserError(f"trainer.profile={kind!r} is not one of none, {', '.join(KINDS)}")
        if len(steps) != 2 or not 1 <= steps[0] <= steps[1]:
            raise UserError(
                f"trainer.profile_steps={list(steps)} must be [first, last] with 1 <= first <= last",
                hint="e.g. trainer.profile_steps=[2,3]",
            )
        if steps[0] > total_steps:
            raise UserError(
                f"trainer.profile_steps starts at step {steps[0]} but the run has {total_steps} steps",
                hint=f"e.g. trainer.profile_steps=[1,{total_steps}]",
            )
        return cls(kind, int(steps[0]), min(int(steps[1]), total_steps))

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    @property
    def tag(self) -> str:
        return f"_steps{self.first}-{self.last}"

    def starts_at(self, step: int) -> bool:
        return self.enabled and step == self.first

    def stops_at(self, step: int) -> bool:
        return self.enabled and step == self.last


def parse_steps(text: str) -> tuple[int, int]:
    """``"3-5"`` -> ``(3, 5)``; ``"4"`` -> ``(4, 4)``.

    Raises:
        UserError: Not ``A-B`` or ``A`` with 1 <= A <= B.
    """
    parts = text.strip().split("-")
    try:
        first, last = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, -1)
    except ValueError:
        first, last = 0, -1
    if not 1 <= first <= last:
        raise UserError(
            f"--steps {text!r} is not a step range", hint="e.g. --steps 2-3 (first and last step, from 1)"
        )
    return first, last
