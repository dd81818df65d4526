"""Logging that a flood of bad input cannot turn into a flood of log lines."""

from __future__ import annotations

import logging
import time

logger = logging.getLogger(__name__)

EVERY_S = 5.0


class LogThrottle:
    """Lets one line per key through every ``every_s`` seconds; counts what it held back.

    Args:
        every_s: the shortest time between two lines of one key.

        >>> throttle = LogThrottle(60)
        >>> throttle.allow("bad_json"), throttle.allow("bad_json"), throttle.allow("bad_ref")
        (True, False, True)
    """

    def __init__(self, every_s: float = EVERY_S) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}

    def allow(self, key: str) -> bool:
        """True if a line for ``key`` may be logged now."""
        now = time.monotonic()
        if now - self._last.get(key, -self.every_s) < self.every_s:
            return False
        self._last[key] = now
        return True
