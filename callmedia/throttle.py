"""A log line per event, up to a limit per minute; past it, one summary line with the count.

Anyone can open the media stream socket, so what it logs about strangers (refused tokens,
streams that never start, junk) must not grow with their effort: a flood of a thousand
refusals gives `limit` lines, then one "N more" line per window, per reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Window:
    started: float
    logged: int = 0
    suppressed: int = 0
    summary: asyncio.TimerHandle | None = None


class LogThrottle:
    def __init__(
        self,
        logger: logging.Logger,
        *,
        limit: int,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        # One entry per reason: reasons are the caller's constants, never input.
        self._windows: dict[str, _Window] = {}

    def log(self, level: int, reason: str, msg: str, *args: object) -> bool:
        """Log `msg % args` unless `reason` has had `limit` lines this window; True if logged."""
        now = self._clock()
        window = self._windows.get(reason)
        if window is not None and now - window.started >= self.window_s:
            self.summarize(reason)
            window = None
        if window is None:
            window = self._windows[reason] = _Window(started=now)
        if window.logged < self.limit:
            window.logged += 1
            self.logger.log(level, msg, *args)
            return True
        window.suppressed += 1
        if window.summary is None:
            # The summary comes when the window ends, even if nothing more happens.
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                pass  # no loop: the next event after the window writes it
            else:
                delay = max(0.0, window.started + self.window_s - now)
                window.summary = loop.call_later(delay, self.summarize, reason)
        return False

    def summarize(self, reason: str) -> None:
        """Close `reason`'s window: log how many lines it held back, if any."""
        window = self._windows.pop(reason, None)
        if window is None:
            return
        if window.summary is not None:
            window.summary.cancel()
        if window.suppressed:
            self.logger.warning(
                "%d more %s not logged one by one in the last %g s",
                window.suppressed,
                reason.replace("_", " "),
                self.window_s,
            )
