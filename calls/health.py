"""Whether this process can serve calls: its database and its channel layer answer.

Each check is bounded: a database or a Redis that hangs is reported as down within the
timeout, and the probe that asked gets its answer.
"""

import asyncio
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connection

# A group nobody joins: sending to it is one round trip to the channel layer, and no message.
PROBE_GROUP = "healthz"

# The database ping in flight on this process, if any. Probes that arrive meanwhile (nginx,
# a deploy script and a monitor may ask at once) wait for that same ping instead of starting
# another: a hung database then holds one thread, not one per probe, and a probe is never
# told "down" only because another probe asked first.
_ping: asyncio.Future[None] | None = None


def _database_ping() -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        connection.close()  # the probe's thread is any of the pool's: leave no connection


def _ping_in_flight() -> asyncio.Future[None]:
    global _ping
    if _ping is None or _ping.done() or _ping.get_loop() is not asyncio.get_running_loop():
        # Not on the thread the views share: a hung database must not hold up the requests.
        _ping = asyncio.ensure_future(sync_to_async(_database_ping, thread_sensitive=False)())
        # Every probe that waited may have timed out: the outcome is still collected.
        _ping.add_done_callback(lambda done: done.cancelled() or done.exception())
    return _ping


async def _check_database(timeout_s: float) -> str:
    # Shielded: a probe that gives up does not cancel the ping the others wait for.
    await asyncio.wait_for(asyncio.shield(_ping_in_flight()), timeout_s)
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
