"""Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And Jitter").

Full jitter spreads reconnecting clients so a restarted server is not hit by all at once.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(
        self,
        *,
        initial: float = 0.1,
        maximum: float = 10.0,
        factor: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if initial <= 0 or maximum < initial or factor < 1:
            raise ValueError("need 0 < initial <= maximum and factor >= 1")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.attempt = 0
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        return min(self.maximum, self.initial * self.factor**self.attempt)

    def next(self) -> float:
        """Delay before the next try: uniform in [0, ceiling], ceiling doubling per attempt."""
        delay = self._rng.uniform(0, self.ceiling())
        self.attempt += 1
        return max(delay, self.initial / 10)

    def reset(self) -> None:
        self.attempt = 0
