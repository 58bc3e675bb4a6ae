"""This server process's background work: its streams' heartbeat, and the reconciler.

Started once per process on the server's event loop (`with_process_tasks`): as daphne's
reactor starts, or else on the ASGI application's first scope:

- the heartbeat: while the process holds media streams, one UPDATE of its `ServerProcess`
  row every STREAM_HEARTBEAT_SECONDS, for all of them; nothing while it holds none. The
  media consumer says which streams it holds (`stream_held` / `stream_released`); nothing
  is added on the media path.
- the reconciler (with CALL_RECONCILER on): every RECONCILE_INTERVAL_SECONDS it tries to
  take the reconciler lease, and the process that has it resumes or ends the calls nothing
  serves (`services.calls_reconcile`). `manage.py reconcile_calls --loop` runs the same loop
  on its own.

- the post-call analysis (with CALL_ANALYSIS on): every ANALYSIS_POLL_SECONDS it claims the
  analyses that are due and runs them (`services.analyses_run_due`).

On a normal exit the process marks itself stopped, so what it still held is taken over at
the next pass rather than after STREAM_STALE_SECONDS.
"""

import asyncio
import atexit
import logging
import os
import random
import socket
import sys
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connection

from callmedia.tasks import TaskSet

from . import services

logger = logging.getLogger(__name__)

PROCESS_ID = uuid.uuid4()
HOST = socket.gethostname()

_held: set[str] = set()
_tasks = TaskSet(f"Process {os.getpid()}")
_started = False
_attached: str | None = None
# Other apps' loops to run beside these (e.g. the campaign dialler), registered at start-up.
_registered: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = []


def holder_name() -> str:
    """Who holds the reconciler lease, as its row shows it."""
    return f"{HOST}:{os.getpid()}:{PROCESS_ID.hex[:8]}"


# --- the streams this process holds ---------------------------------------------------------


async def stream_held(stream_sid: str) -> None:
    """The consumer holds `stream_sid` now: record it against this process (once per stream)."""
    global _attached
    _held.add(stream_sid)
    await database_sync_to_async(services.stream_process_attach)(
        stream_sid=stream_sid, process_id=PROCESS_ID, host=HOST, pid=os.getpid()
    )
    # Which database holds this process's row: at exit it is marked there, and nowhere else.
    _attached = connection.settings_dict["NAME"]


def stream_released(stream_sid: str) -> None:
    _held.discard(stream_sid)


def streams_held() -> int:
    return len(_held)


# --- the background loops -------------------------------------------------------------------


def loop_register(name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `factory()` as one of this process's background loops (from an AppConfig.ready)."""
    _registered.append((name, factory))


def start() -> None:
    """Start this process's loops on the running event loop, once (later if none runs)."""
    global _started
    if _started:
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return  # not on the server's loop: the first scope starts them
    _started = True
    _tasks.spawn(_heartbeat_loop(), "stream-heartbeat")
    if settings.CALL_RECONCILER:
        _tasks.spawn(reconcile_loop(holder_name()), "call-reconciler")
    for name, factory in _registered:
        _tasks.spawn(factory(), name)
    if settings.CALL_ANALYSIS:
        _tasks.spawn(analysis_loop(), "call-analysis")
    atexit.register(_on_exit)


async def _heartbeat_loop() -> None:
    beat = database_sync_to_async(services.process_heartbeat)
    while True:
        await asyncio.sleep(settings.STREAM_HEARTBEAT_SECONDS)
        if not _held:
            continue
        try:
            await beat(process_id=PROCESS_ID)
        except Exception:
            logger.exception("Heartbeat of process %s failed", holder_name())


async def reconcile_loop(holder: str) -> None:
    """Try to reconcile every RECONCILE_INTERVAL_SECONDS (with a little jitter, so the
    processes started together do not all ask for the lease at the same instant)."""
    while True:
        interval = settings.RECONCILE_INTERVAL_SECONDS
        await asyncio.sleep(interval * random.uniform(0.8, 1.0))
        try:
            outcomes = await services.calls_reconcile(holder=holder)
        except Exception:
            logger.exception("Reconciler %s: the pass failed", holder)
            continue
        if outcomes:
            logger.info("Reconciler %s: %s", holder, dict(outcomes))


async def analysis_loop() -> None:
    """Run the post-call analyses that are due: every ANALYSIS_POLL_SECONDS, or at once
    again while there is work (at most ANALYSIS_CONCURRENCY jobs at a time)."""
    while True:
        try:
            statuses = await services.analyses_run_due()
        except Exception:
            logger.exception("Analysis pass failed")
            statuses = None
        if not statuses:
            await asyncio.sleep(settings.ANALYSIS_POLL_SECONDS * random.uniform(0.8, 1.0))


def _on_exit() -> None:
    """Say this process is gone, so its streams are taken over at once (best effort).

    At exit, so after the server has finished whatever it does with its streams on a
    graceful stop; a killed process never gets here, and its heartbeat's silence says it.
    """
    try:
        if _attached is not None and connection.settings_dict["NAME"] == _attached:
            services.process_stopped(process_id=PROCESS_ID)
        if settings.CALL_RECONCILER:
            services.reconcile_lease_release(holder=holder_name())
    except Exception as error:  # the database may be gone first; the delay then applies
        logger.debug("Could not record the end of process %s: %r", holder_name(), error)


# --- the ASGI hook --------------------------------------------------------------------------


def with_process_tasks(application: Any) -> Any:
    """`application`, which starts this process's loops when daphne's reactor runs (so a
    restarted server reconciles before any request arrives), or else on its first scope."""
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is not None and not reactor.running:
        # Its start-up callbacks run before its asyncio loop does: start from the loop.
        reactor.callWhenRunning(lambda: reactor.callLater(0, start))

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if not _started:
            start()
        await application(scope, receive, send)

    return app
