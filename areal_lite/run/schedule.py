"""When a periodic action is due: every N steps, every N seconds, or both (0 turns either off)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Schedule:
    freq_steps: int = 0
    freq_secs: float = 0.0
    _last: float = field(default_factory=time.monotonic, repr=False)

    @classmethod
    def of(cls, section) -> "Schedule":
        """From a config section with `freq_steps` and (optionally) `freq_secs`."""
        return cls(int(section.freq_steps), float(getattr(section, "freq_secs", 0.0)))

    @property
    def enabled(self) -> bool:
        return self.freq_steps > 0 or self.freq_secs > 0

    def due(self, step: int) -> bool:
        """After `step` (0-based) finished: is the action due? Restarts the seconds clock when it is."""
        now = time.monotonic()
        hit = (self.freq_steps > 0 and (step + 1) % self.freq_steps == 0) or (
            self.freq_secs > 0 and now - self._last >= self.freq_secs)
        if hit:
            self._last = now
        return hit
