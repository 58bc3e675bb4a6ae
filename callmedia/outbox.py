"""An outbox: messages queued by code that must not wait, written in order by one writer.

Posting never awaits, so a hot path (an audio frame, a barge-in) queues its message and goes
on; the writer task wakes and sends. Queued messages can be dropped before they leave
(`clear`): a barge-in must not let audio still in our queue reach the caller.

`hold` and `flush` let a producer that posts in bursts write the burst itself, in its own
task, instead of waking the writer: one task switch fewer per message on a hot path.

With `batch=True` the writer sends everything queued in one call (a list), e.g. one
thread-pool hop for many database writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Outbox(Generic[T]):
    def __init__(
        self, send: Callable[[Any], Awaitable[None]], *, name: str, batch: bool = False
    ) -> None:
        self.name = name  # for the writer task and log lines
        self._send = send
        self._batch = batch
        self._queue: deque[T] = deque()
        self._ready = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._holding = False  # between hold() and flush()
        self._draining = False  # the writer or a flush is sending
        self._closing = False

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[T]:
        return iter(self._queue)

    def post(self, message: T) -> None:
        self._queue.append(message)
        if not self._holding:
            self._ready.set()

    def clear(self) -> None:
        """Drop what has not been sent yet."""
        self._queue.clear()

    def hold(self) -> None:
        """Keep what is posted from now on queued until `flush`: no writer wake-up."""
        self._holding = True

    async def flush(self) -> None:
        """Send what is queued, in the caller's task."""
        self._holding = False
        if self._queue:
            await self._drain()

    def start(self) -> None:
        """Start the writer task."""
        self._writer = asyncio.get_running_loop().create_task(self._write(), name=self.name)

    async def stop(self) -> None:
        """Stop the writer at once; what is still queued is dropped."""
        self._queue.clear()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    async def close(self, timeout_s: float) -> bool:
        """Send what is queued, then end the writer; False if that took over `timeout_s`.

        On a timeout the writer carries on in the background.
        """
        self._closing = True
        self._ready.set()
        if self._writer is None or self._writer.done():
            return True  # never started, or stopped: nothing more will be sent
        try:
            await asyncio.wait_for(asyncio.shield(self._writer), timeout_s)
        except TimeoutError:
            return False
        return True

    async def _write(self) -> None:
        ready = self._ready
        while True:
            await ready.wait()
            ready.clear()
            await self._drain()
            if self._closing and not self._queue:
                return

    async def _drain(self) -> None:
        if self._draining:
            return  # the writer or a flush is at it, and loops until the queue is empty
        self._draining = True
        queue, send = self._queue, self._send
        try:
            if self._batch:
                while queue:
                    batch = list(queue)
                    queue.clear()
                    await send(batch)
            else:
                while queue:
                    await send(queue.popleft())
        except Exception as error:
            # The peer went away mid-write (servers and clients raise their own errors);
            # whoever reads from it learns that and ends the conversation.
            logger.debug("%s: dropping %d queued after %r", self.name, len(queue), error)
            queue.clear()
        finally:
            self._draining = False
            if self._closing:
                self._ready.set()  # a flush drained it: let a closing writer see that
