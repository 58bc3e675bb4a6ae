"""Whether this process can serve calls: its database and its channel layer answer.

Each check is bounded: a database or a Redis that hangs is reported as down within the
timeout, and the probe that asked gets its answer.
"""

import asyncio
import threading
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connection

# A group nobody joins: sending to it is one round trip to the channel layer, and no message.
PROBE_GROUP = "healthz"

# A database check still running from an earlier probe (a hung database): not started again,
# so that probes every few seconds do not pile up threads waiting on it.
_database_check_running = threading.Event()


def _database_ping() -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        connection.close()  # the probe's thread is any of the pool's: leave no connection
        _database_check_running.clear()


async def _check_database(timeout_s: float) -> str:
    if _database_check_running.is_set():
        return "an earlier check is still waiting for the database"
    _database_check_running.set()
    # Not on the thread the views share: a hung database must not hold up the requests.
    await asyncio.wait_for(sync_to_async(_database_ping, thread_sensitive=False)(), timeout_s)
    return ""


async def _check_channel_layer(timeout_s: float) -> str:
    layer = get_channel_layer()
    if layer is None:
        return "no channel layer is configured"
    await asyncio.wait_for(layer.group_send(PROBE_GROUP, {"type": "health.probe"}), timeout_s)
    return ""


async def _outcome(check: Any, timeout_s: float) -> str:
    """ "ok", or why not, in words."""
    try:
        problem = await check(timeout_s)
    except TimeoutError:
        return f"down: no answer within {timeout_s:g} s"
    except Exception as error:
        return f"down: {type(error).__name__}: {error}"
    return f"down: {problem}" if problem else "ok"


async def health_report(*, timeout_s: float) -> dict[str, Any]:
    """{"ok": bool, "checks": {"database": "ok" | "down: why", "channel_layer": …}}."""
    database, channel_layer = await asyncio.gather(
        _outcome(_check_database, timeout_s), _outcome(_check_channel_layer, timeout_s)
    )
    checks = {"database": database, "channel_layer": channel_layer}
    return {"ok": all(value == "ok" for value in checks.values()), "checks": checks}
