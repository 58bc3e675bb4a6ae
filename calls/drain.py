"""Draining a server process: its live calls move to other processes instead of dropping.

On SIGTERM or SIGINT (voicebot/shutdown.py hooks this into daphne's shutdown) the process
stops serving new media streams and hands each live call over: at the call's next quiet
moment its stream is closed with the handover recorded, so that Twilio requests our
`<Connect action>`, whose answer (calls.services.handover) is a new `<Connect><Stream>` for
the same call, served by whichever process Twilio reaches. The new stream's session picks
the conversation up from the database. The process exits once every call is handed over,
or at DRAIN_DEADLINE_SECONDS, whatever is left.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Protocol

logger = logging.getLogger(__name__)

# Why a stream ended, as the consumer records it (calls.consumers.media).
HANDOVER = "handover"
# Handed over even if the agent is still talking, this long before the deadline.
FORCE_BEFORE_DEADLINE_S = 1.0


class Drainable(Protocol):
    async def hand_over(self) -> None:
        """Close the stream at the call's next quiet moment (or at the deadline)."""


class _Drain:
    def __init__(self) -> None:
        self.draining = False
        self.deadline = 0.0  # loop time by which every call must be handed over
        self.live: set[Drainable] = set()


_state = _Drain()


def draining() -> bool:
    return _state.draining


def force_at() -> float:
    """The loop time from which a call is handed over without waiting for a quiet moment."""
    return _state.deadline - FORCE_BEFORE_DEADLINE_S


def register(stream: Drainable) -> None:
    _state.live.add(stream)


def unregister(stream: Drainable) -> None:
    _state.live.discard(stream)


def drain_start(*, deadline_s: float) -> asyncio.Task[int]:
    """Start `drain_process` in a task with a context of its own.

    The drain is started from a signal handler, which runs in whatever context the signal
    interrupted (Twisted's callFromThread copies it). That may be a task in the middle of a
    `database_sync_to_async` call, whose context marks the single database thread as taken:
    every database call of the drain would then fail ("would deadlock") and the calls drop.
    An empty context inherits nothing.
    """
    loop = asyncio.get_running_loop()
    return loop.create_task(drain_process(deadline_s=deadline_s), context=contextvars.Context())


async def drain_process(*, deadline_s: float) -> int:
    """Hand over every live call; return how many were still live after `deadline_s`."""
    loop = asyncio.get_running_loop()
    _state.draining = True
    _state.deadline = loop.time() + deadline_s
    streams = list(_state.live)
    logger.warning("Draining: handing over %d live call(s) within %ss", len(streams), deadline_s)
    if not streams:
        return 0
    tasks = [asyncio.ensure_future(stream.hand_over()) for stream in streams]
    done, pending = await asyncio.wait(tasks, timeout=deadline_s)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            logger.error("Draining: a handover failed", exc_info=task.exception())
    logger.warning(
        "Drained: %d call(s) handed over, %d not", len(done) - len(pending), len(pending)
    )
    return len(pending)


def reset() -> None:
    """Back to serving (tests that drain an in-process server)."""
    _state.draining = False
    _state.deadline = 0.0
