"""A TRL-style environment for the multi-turn e2e tests (one instance per trajectory)."""

from __future__ import annotations


class Counter:
    """Counts up; the trajectory's reward is 0.1 per call (so a call changes the reward)."""

    def reset(self, **kwargs: object) -> None:
        self.value = 0

    def bump(self, by: int) -> int:
        """Add ``by`` to the counter and return it."""
        self.value += int(by)
        return self.value

    def get_reward(self) -> float:
        return 0.1 * (self.value != 0)
