"""The media consumer's side of staff listening in and taking over.

Listeners (calls.consumers.listen, in any process) announce themselves to the call's group
(`listen.join`, a `listen.keepalive` every LISTEN_KEEPALIVE_S, `listen.leave`). While at least
one is known, the consumer holds a ListenTap and this hub sends what it gathers to the
`listen.<call uuid>` group every BATCH_MS; when the last one leaves, or stops sending
keepalives (its process died), the tap is dropped and the media path is back to one
attribute check per frame.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from callmedia.listen import BATCH_MS, ListenTap
from calls.models import listen_group_name

if TYPE_CHECKING:
    from calls.consumers.media import MediaStreamConsumer

logger = logging.getLogger(__name__)

# A listener says it is still there this often; one silent for LISTEN_EXPIRY_S is gone.
LISTEN_KEEPALIVE_S = 5.0
LISTEN_EXPIRY_S = 3 * LISTEN_KEEPALIVE_S


class ListenHub:
    def __init__(self, consumer: MediaStreamConsumer) -> None:
        self.consumer = consumer
        self.listeners: dict[str, float] = {}  # listener channel -> when it expires
        self.holder = ""  # the listener channel of the staff member holding the call
        self.holder_name = ""
        self._timer: asyncio.TimerHandle | None = None
        self._sending: asyncio.Task[None] | None = None

    @property
    def group(self) -> str:
        return listen_group_name(self.consumer.call_id)

    def join(self, channel: str) -> None:
        self.listeners[channel] = time.monotonic() + LISTEN_EXPIRY_S
        if self.consumer.tap is None:
            self.consumer.tap = ListenTap(self.consumer.now_ms)
            self._schedule()
            logger.info("Call %s: listening on", self.consumer.call_sid)

    def leave(self, channel: str) -> None:
        self.listeners.pop(channel, None)
        if not self.listeners:
            self._off()

    async def end(self) -> None:
        """The stream ended: the tap goes, and the listeners are told."""
        had_listeners = bool(self.listeners)
        self.listeners.clear()
        self._off()
        if had_listeners:
            try:
                await self.consumer.channel_layer.group_send(self.group, {"type": "listen.ended"})
            except Exception as error:
                logger.debug("Call %s: listen end lost: %r", self.consumer.call_sid, error)

    def expired(self) -> list[str]:
        """Forget listeners whose keepalives stopped; return their channels."""
        now = time.monotonic()
        gone = [channel for channel, until in self.listeners.items() if until < now]
        for channel in gone:
            del self.listeners[channel]
        return gone

    def _off(self) -> None:
        if self.consumer.tap is not None:
            self.consumer.tap = None
            logger.info("Call %s: nobody listens; tap off", self.consumer.call_sid)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(BATCH_MS / 1000, self._tick)

    def _tick(self) -> None:
        self._timer = None
        gone = self.expired()
        if gone and self.holder in gone:
            # The holder's page or process went away without handing back.
            self.consumer.holder_lost(self.holder)
        tap = self.consumer.tap
        if tap is None:
            return
        if not self.listeners:
            self._off()
            return
        self._schedule()
        if self._sending is not None and not self._sending.done():
            return  # the layer is slow: keep gathering, send it all next time
        data = tap.take()
        if data:
            self._sending = asyncio.ensure_future(self._send(data))

    async def _send(self, data: bytes) -> None:
        try:
            await self.consumer.channel_layer.group_send(
                self.group, {"type": "listen.audio", "data": data}
            )
        except Exception as error:  # Redis is down: listeners hear a gap
            logger.debug("Call %s: listen batch lost: %r", self.consumer.call_sid, error)

    async def state(self) -> None:
        """Tell the listeners who holds the call now (after a take-over or hand-back)."""
        try:
            await self.consumer.channel_layer.group_send(
                self.group, {"type": "listen.state", "held_by": self.holder_name}
            )
        except Exception as error:
            logger.debug("Call %s: listen state lost: %r", self.consumer.call_sid, error)
