"""Whether a colocated rollout engine frees its memory while the actor updates (``rollout.free_cache``).

Colocated, the engine and the trainer share each device. Freeing the engine's KV cache for the
update (``sleep``) makes room for the update's activations, but waking costs: the native engine
re-allocates its cache and re-captures one CUDA graph per batch bucket, about 0.3 s per step on a
0.5B model. When the device has room for both, keeping them makes the weight sync a plain copy.

``auto`` (the default) decides from measurements, on an accelerator:

1. Before each update it notes the memory the update could grow into while the engine holds its
   memory: the device's free bytes plus what torch's allocator has reserved but not handed out.
2. The first update runs with the engine asleep; its growth is the peak of the bytes torch
   allocated during the update minus the bytes allocated when it started.
3. After each update the engine is kept awake for the next one if ``growth * (1 + margin) +
   headroom`` fits in the room of step 1, and freed again otherwise. The check repeats every step,
   so an update that grows (longer responses) makes the engine free its memory again before it runs
   out.

On the CPU ``auto`` frees as before (re-allocating a CPU cache is cheap and there are no graphs);
``always`` frees before every update; ``never`` keeps the engine's memory for the whole run.
"""

from __future__ import annotations

from typing import Protocol

from rlkit import hardware

# The update's measured growth must fit this much enlarged, plus HEADROOM_BYTES, in the free room.
GROWTH_MARGIN = 0.15
HEADROOM_BYTES = 1 << 30


class Sleeper(Protocol):
    def sleep(self) -> None: ...


def fits(growth: int, room: int, *, margin: float = GROWTH_MARGIN, headroom: int = HEADROOM_BYTES) -> bool:
    """Whether an update that grew by ``growth`` bytes fits in ``room`` free bytes with the margins."""
    return growth * (1.0 + margin) + headroom <= room


def room_bytes() -> int:
    """Bytes new tensors can take now: the device's free memory plus torch's reserved-but-unused."""
    free, _ = hardware.mem_get_info()
    return free + hardware.memory_reserved() - hardware.memory_allocated()


class CacheKeeper:
    """Frees (``engine.sleep()``) or keeps a colocated engine's memory around each actor update.

    Args:
        mode: ``auto``, ``always`` or ``never`` (see the module docstring).
        on_accelerator: Whether the engine runs on an accelerator (``auto`` measures only there).
    """

    def __init__(self, mode: str, *, on_accelerator: bool) -> None:
        if mode not in ("auto", "always", "never"):
            raise ValueError(f"rollout.free_cache must be auto, always or never, got {mode!r}")
        self.measures = mode == "auto" and on_accelerator
        self.keep = mode == "never"  # auto starts by freeing: the first update is measured asleep
        self.updates_measured = 0
        self._room = 0
        self._base = 0

    def before_update(self, engine: Sleeper) -> None:
        """Called right before the actor's update: free the engine's memory unless it is kept."""
        if self.measures:
            self._room = room_bytes()
        if not self.keep:
            engine.sleep()
        if self.measures:
            self._base = hardware.memory_allocated()
            hardware.reset_peak_memory_stats()

    def after_update(self) -> None:
        """Called after the update, before the engine wakes: decide for the next update."""
        if not self.measures or self._room == 0:
            return
        growth = max(hardware.max_memory_allocated() - self._base, 0)
        self.keep = fits(growth, self._room)
        self.updates_measured += 1
        self._room = 0
