"""A lean base for a WebSocket consumer whose socket carries a message every few ms."""

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Coroutine
from typing import Any

from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

Pending = Coroutine[Any, Any, None] | None

# The channel-layer listener's backoff while the layer (Redis) is unreachable: short at first,
# so that control works again within a couple of seconds of Redis coming back.
LISTEN_RETRY_FIRST_S = 0.2
LISTEN_RETRY_MAX_S = 2.0
# How long a consumer that has ended waits for its listener to finish being cancelled. A
# cancelled channels_redis read can hang on its receive lock; waiting for it without a
# bound kept the consumer, and so a stopping server process, alive until it was killed.
LISTENER_STOP_S = 1.0


class StreamingConsumer(AsyncWebsocketConsumer):
    """AsyncWebsocketConsumer, minus a Task, an asyncio.wait and a thread-pool hop per message.

    Channels reads the socket and the channel layer through `await_many_dispatch`, which
    starts a new Task for every message it waits for, and its `dispatch` runs
    `aclose_old_connections()` (a thread-pool hop) before every handler. For a media stream
    that is 50 times a second per call. Here the socket is read in one loop and each message
    handed to `frame_received`, a plain method; control messages from the channel layer, a
    few per call, are read by a second task. `_handling` keeps the guarantee Channels gives,
    that one handler runs at a time.

    Subclasses do their ORM work through `database_sync_to_async`, which closes stale
    connections itself around each call. Staff sockets keep Channels' default consumers.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handling = asyncio.Lock()  # one message handled at a time, socket or channel
        self._groups: set[str] = set()  # joined again after the channel layer comes back

    @property
    def label(self) -> str:
        """Who this consumer serves, for log lines."""
        return type(self).__name__

    def server_stopping(self) -> bool:
        """The server cancelled this connection as it shuts down: True to go on reading.

        A subclass that returns True has begun ending the connection itself, and needs the
        socket read until its close arrives: the peer's messages (a media stream's mark
        echoes and clock) are what it waits on. The server cancels a second time if the
        close never comes (daphne's application_close_timeout); that one is raised.
        """
        return False

    def frame_received(self, data: str | bytes) -> Pending:
        """Handle one socket message at once; return what must still be awaited, if anything."""
        raise NotImplementedError

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        pending = self.frame_received(text_data if bytes_data is None else bytes_data)
        if pending is not None:
            await pending

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.channel_name = await self.channel_layer.new_channel()
        self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
        self.base_send = send
        listener = asyncio.create_task(self._listen(), name="stream-channel-listener")
        stopping = False
        try:
            while True:
                try:
                    await self._read(receive)
                except asyncio.CancelledError:
                    if stopping or not self.server_stopping():
                        raise
                    # Once only: the connection ends itself now, reading until it has.
                    stopping = True
                    task = asyncio.current_task()
                    if task is not None:
                        task.uncancel()
        except StopConsumer:
            pass
        finally:
            listener.cancel()
            done, _ = await asyncio.wait({listener}, timeout=LISTENER_STOP_S)
            if not done:
                logger.warning("%s: its channel-layer read did not stop; left behind", self.label)
            elif not listener.cancelled():
                with contextlib.suppress(StopConsumer):
                    listener.result()

    async def _read(self, receive: Any) -> None:
        """Read the socket until the consumer stops (StopConsumer)."""
        dispatch, handling, frame_received = self.dispatch, self._handling, self.frame_received
        while True:
            message = await receive()
            if message["type"] != "websocket.receive" or handling.locked():
                async with handling:
                    await dispatch(message)
                continue
            # The stream's own messages, nearly all of them audio: handled here, with no
            # coroutine per frame; only a few leave something to await.
            text = message.get("text")
            pending = frame_received(text if text is not None else message.get("bytes"))
            if pending is not None:
                async with handling:
                    await pending

    # --- the channel layer: groups and the listener --------------------------------------

    async def join_group(self, group: str) -> None:
        """Join `group` now if the channel layer answers, and again whenever it comes back.

        Group membership lives in Redis: a Redis restart forgets it, so the listener joins
        every group again once the layer answers after a failure. A failure here is logged
        and left to the listener, which meets the same outage on its next read.
        """
        self._groups.add(group)
        try:
            await self.channel_layer.group_add(group, self.channel_name)
        except Exception as error:
            logger.warning(
                "%s: could not join %s yet (%s); will retry", self.label, group, _brief(error)
            )

    async def leave_groups(self) -> None:
        """Leave every group joined; best effort (their membership expires in any case)."""
        groups, self._groups = self._groups, set()
        for group in groups:
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except Exception as error:
                logger.debug("%s: could not leave %s: %s", self.label, group, _brief(error))

    def handle_now(self, message: dict) -> bool:
        """Handle a channel message before waiting for the current handler; True if done.

        For the few messages that must not queue behind a long handler (an ack its sender is
        waiting for, which the current handler may be waiting for in turn).
        """
        return False

    async def _listen(self) -> None:
        """Read the channel layer for as long as the consumer lives, surviving its outages.

        A read that fails (Redis stopped, restarted, unreachable) is retried with a backoff
        from LISTEN_RETRY_FIRST_S doubling to LISTEN_RETRY_MAX_S; before reading again the
        consumer joins its groups again, since a restarted Redis has forgotten them.
        """
        delay = 0.0
        failed_at = 0.0
        while True:
            try:
                if delay:
                    for group in list(self._groups):
                        await self.channel_layer.group_add(group, self.channel_name)
                    logger.warning(
                        "%s: the channel layer answers again after %.1f s; groups joined again",
                        self.label,
                        time.monotonic() - failed_at,
                    )
                    delay = 0.0
                message = await self.channel_receive()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not delay:
                    failed_at = time.monotonic()
                    logger.warning(
                        "%s: channel layer read failed (%s); retrying", self.label, _brief(error)
                    )
                delay = min(LISTEN_RETRY_MAX_S, delay * 2 or LISTEN_RETRY_FIRST_S)
                await asyncio.sleep(delay)
                continue
            if self.handle_now(message):
                continue
            async with self._handling:
                try:
                    await self.dispatch(message)
                except Exception:
                    logger.exception("%s: control message %r failed", self.label, message)

    async def dispatch(self, message: dict) -> None:
        # No aclose_old_connections() per socket message (see the class docstring).
        if message["type"] == "websocket.receive":
            await self.websocket_receive(message)
        else:
            await super().dispatch(message)


def _brief(error: BaseException) -> str:
    return f"{type(error).__module__}.{type(error).__name__}: {error}"
