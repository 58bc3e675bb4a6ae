"""A lean base for a WebSocket consumer whose socket carries a message every few ms."""

import asyncio
import contextlib
import functools
import logging
from collections.abc import Coroutine
from typing import Any

from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

Pending = Coroutine[Any, Any, None] | None


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

    @property
    def label(self) -> str:
        """Who this consumer serves, for log lines."""
        return type(self).__name__

    async def server_stopping(self) -> bool:
        """The server cancelled this connection as it shuts down; True if handled (not raised)."""
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
        dispatch, handling, frame_received = self.dispatch, self._handling, self.frame_received
        try:
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
        except StopConsumer:
            pass
        except asyncio.CancelledError:
            if not await self.server_stopping():
                raise
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopConsumer):
                await listener

    async def _listen(self) -> None:
        while True:
            message = await self.channel_receive()
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
