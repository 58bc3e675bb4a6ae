"""A set of background tasks that belong to one object: spawned, tracked, cancelled together.

A task that fails is logged at once, with its owner's name, rather than when (or if) someone
awaits it; asyncio would otherwise report it only as "exception was never retrieved". An
owner that must act on a failure (end what it runs, re-raise it to whoever waits on it)
passes `on_failure`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

logger = logging.getLogger(__name__)


class TaskSet:
    def __init__(
        self,
        owner: str,
        *,
        failure_level: int = logging.ERROR,
        on_failure: Callable[[BaseException], object] | None = None,
    ) -> None:
        self.owner = owner  # names the object in log lines, e.g. "Call CA123"
        # Tasks whose awaiter handles their errors log them at a lower level.
        self.failure_level = failure_level
        self.on_failure = on_failure  # called with each error a task ends with
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    def cancel(self, *names: str) -> list[asyncio.Task[Any]]:
        """Cancel every task (or those with these names) but the one calling: it may be
        ending its own owner."""
        current = asyncio.current_task()
        cancelled = [
            task
            for task in self._tasks
            if task is not current and (not names or task.get_name() in names)
        ]
        for task in cancelled:
            task.cancel()
        return cancelled

    async def close(self, *names: str) -> None:
        """Cancel every task (or those named) but the one calling; wait until they unwound."""
        await asyncio.gather(*self.cancel(*names), return_exceptions=True)

    async def wait(self, timeout_s: float) -> None:
        """Let the tasks finish, for at most `timeout_s`."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.log(
                self.failure_level,
                "%s: task %s failed",
                self.owner,
                task.get_name(),
                exc_info=error,
            )
            if self.on_failure is not None:
                self.on_failure(error)
