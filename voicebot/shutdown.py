"""Hand live calls over before the server process exits (calls.drain).

daphne runs Twisted's reactor with signal handlers that stop it on SIGTERM and SIGINT.
Stopping fires the reactor's "before shutdown" triggers, and a trigger that returns a
Deferred holds the shutdown until it fires: that is where the drain runs. daphne's own
trigger, registered after this one, cancels every connection's application at the same
moment; the media stream consumer catches that cancellation while the process drains and
finishes its handover first (calls.consumers.media).

Under another ASGI server (uvicorn) there is no reactor and nothing is registered: a
shutdown there drops live calls (see the README, "Deploys").
"""

import asyncio
import logging
import sys

from django.conf import settings

from calls import drain

logger = logging.getLogger(__name__)


def install() -> bool:
    """Register the drain with Twisted's reactor if this process runs one; True if it did."""
    if "twisted.internet.reactor" not in sys.modules:
        return False  # importing it here would install a reactor nobody runs
    from twisted.internet import reactor

    reactor.addSystemEventTrigger("before", "shutdown", _drain)
    return True


def _drain():
    from twisted.internet import defer

    coroutine = drain.drain_process(deadline_s=settings.DRAIN_DEADLINE_SECONDS)
    return defer.Deferred.fromFuture(asyncio.ensure_future(coroutine))
