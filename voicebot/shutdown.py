"""Hand live calls over before the server process exits (calls.drain).

daphne runs Twisted's reactor with signal handlers that stop it on SIGTERM and SIGINT.
Stopping fires the reactor's "before shutdown" triggers, and a trigger that returns a
Deferred holds the shutdown until it fires: that is where the drain runs. daphne's own
trigger, registered after this one, cancels every connection's application at the same
moment; the media stream consumer catches that cancellation while the process drains and
finishes its handover first (calls.consumers.media).

The drain starts by closing the listening sockets, so that new requests go to the other
processes (see `_stop_listening`).

Under another ASGI server (uvicorn) there is no reactor and nothing is registered: a
shutdown there drops live calls (see the README, "Deploys").
"""

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

    _stop_listening()
    return defer.Deferred.fromFuture(drain.drain_start(deadline_s=settings.DRAIN_DEADLINE_SECONDS))


def _stop_listening() -> None:
    """Refuse new connections from now on; those open, the calls' streams, carry on.

    A proxy in front (nginx, deploy/) then sends every new request to another process at
    once: the `<Connect action>` of each call handed over, and the new stream it opens. A
    draining process still listening would take them, hand the new streams straight back,
    and cut any request still in flight when it exits (a POST that nginx does not retry).
    """
    from twisted.internet import reactor, tcp

    for reader in reactor.getReaders():
        if isinstance(reader, tcp.Port):
            reader.stopListening()
