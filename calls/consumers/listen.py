"""A staff member's ear (and, on take-over, voice) on one live call: /ws/calls/<uuid>/listen.

To the browser: binary messages of both sides' audio (callmedia.listen's records, ~10 a
second) and small JSON messages (`state`: who holds the call; `result`: the answer to a
take-over or hand-back). From the browser: JSON `{"action": "take_over" | "hand_back"}` and,
while this socket holds the call, binary microphone audio, 8 kHz mu-law in whole 20 ms
frames, checked for size and rate before it goes on to the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from callmedia.audio import BYTES_PER_MS, FRAME_BYTES
from calls import services
from calls.consumers.listening import LISTEN_KEEPALIVE_S
from calls.models import listen_group_name

logger = logging.getLogger(__name__)

CLOSE_POLICY_VIOLATION = 1008
VIEW_PERMISSION = "calls.view_call"
LISTEN_PERMISSION = "calls.listen_call"
TAKE_OVER_PERMISSION = "calls.take_over_call"

# Microphone audio: whole 20 ms frames, at most this many per message.
MIC_MAX_FRAMES = 10
# At most real time, with this much burst (a browser tab catching up after a stall).
MIC_BURST_MS = 500
# Messages refused (bad size, too fast, not holding the call) before the socket is closed.
MIC_MAX_REFUSED = 50


def _may(user: Any, permission: str) -> bool:
    return bool(
        user is not None
        and user.is_authenticated
        and user.is_active
        and user.is_staff
        and user.has_perm(VIEW_PERMISSION)
        and user.has_perm(permission)
    )


class MicRate:
    """A token bucket in bytes: real-time 8 kHz mu-law, with a little burst."""

    def __init__(self, now: float) -> None:
        self.capacity = MIC_BURST_MS * BYTES_PER_MS
        self.tokens = float(self.capacity)
        self.at = now

    def allow(self, nbytes: int, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * 1000 * BYTES_PER_MS)
        self.at = now
        if nbytes > self.tokens:
            return False
        self.tokens -= nbytes
        return True


def mic_problem(data: bytes) -> str:
    """Why a microphone message is refused, or "" if it is whole frames of a sane size."""
    if not data or len(data) % FRAME_BYTES:
        return f"{len(data)} bytes is not whole 20 ms frames of 8 kHz mu-law"
    if len(data) > MIC_MAX_FRAMES * FRAME_BYTES:
        return f"{len(data)} bytes is more than {MIC_MAX_FRAMES} frames"
    return ""


class ListenConsumer(AsyncWebsocketConsumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.call_id = ""
        self.user: Any = None
        self.holding = False
        self.started = 0.0
        self.refused = 0
        self.rate = MicRate(time.monotonic())
        self._keepalive: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self.user = self.scope.get("user")
        self.call_id = str(self.scope["url_route"]["kwargs"]["call_id"])
        if not await database_sync_to_async(_may)(self.user, LISTEN_PERMISSION):
            await self.close(code=CLOSE_POLICY_VIOLATION)
            return
        try:
            await database_sync_to_async(services.listen_begin)(
                call_id=self.call_id, user=self.user
            )
        except services.CallControlError as error:
            await self.accept()
            await self._send_json({"type": "ended", "error": str(error)})
            await self.close()
            return
        self.started = time.monotonic()
        await self.channel_layer.group_add(listen_group_name(self.call_id), self.channel_name)
        await self.accept()
        await self._announce("join")
        self._keepalive = asyncio.create_task(self._keep_alive(), name="listen-keepalive")

    async def disconnect(self, code: int) -> None:
        if not self.started:
            return
        if self._keepalive is not None:
            self._keepalive.cancel()
        if self.holding:
            with contextlib.suppress(services.CallControlError):
                await services.call_hand_back(
                    call_id=self.call_id, user=self.user, holder=self.channel_name
                )
        await self._announce("leave")
        with contextlib.suppress(Exception):
            await self.channel_layer.group_discard(
                listen_group_name(self.call_id), self.channel_name
            )
        await database_sync_to_async(services.listen_end)(
            call_id=self.call_id, user=self.user, seconds=time.monotonic() - self.started
        )

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if bytes_data is not None:
            await self._microphone(bytes_data)
            return
        try:
            action = json.loads(text_data or "").get("action")
        except (ValueError, AttributeError):
            action = None
        if action in ("take_over", "hand_back"):
            await self._steer(action)

    async def _steer(self, action: str) -> None:
        if not await database_sync_to_async(_may)(self.user, TAKE_OVER_PERMISSION):
            await self._result(action, "You do not have permission to take over calls.")
            return
        service = services.call_take_over if action == "take_over" else services.call_hand_back
        try:
            await service(call_id=self.call_id, user=self.user, holder=self.channel_name)
        except services.CallControlError as error:
            await self._result(action, str(error))
            return
        self.holding = action == "take_over"
        self.rate = MicRate(time.monotonic())
        await self._result(action, "")

    async def _microphone(self, data: bytes) -> None:
        problem = "" if self.holding else "audio from a socket that does not hold the call"
        problem = problem or mic_problem(data)
        if not problem and not self.rate.allow(len(data), time.monotonic()):
            problem = "audio faster than real time"
        if problem:
            self.refused += 1
            if self.refused == 1:
                logger.warning("Listen on call %s: refused audio: %s", self.call_id, problem)
            if self.refused >= MIC_MAX_REFUSED:
                await self.close(code=CLOSE_POLICY_VIOLATION)
            return
        await services.staff_audio_send(call_id=self.call_id, holder=self.channel_name, audio=data)

    # --- from the stream, through the listen group ------------------------------------------

    async def listen_audio(self, message: dict) -> None:
        await self.send(bytes_data=message["data"])

    async def listen_state(self, message: dict) -> None:
        held_by = message.get("held_by", "")
        if self.holding and not held_by:
            self.holding = False  # the stream gave the call back (our keepalives lapsed)
        await self._send_json({"type": "state", "held_by": held_by, "you": self.holding})

    async def listen_ended(self, message: dict) -> None:
        await self._send_json({"type": "ended", "error": ""})
        await self.close()

    # --- plumbing -------------------------------------------------------------------------

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(LISTEN_KEEPALIVE_S)
            await self._announce("keepalive")

    async def _announce(self, kind: str) -> None:
        try:
            await services.listen_announce(
                call_id=self.call_id, kind=kind, channel=self.channel_name
            )
        except Exception as error:  # Redis is down: the next keepalive tries again
            logger.debug("Listen on call %s: %s lost: %r", self.call_id, kind, error)

    async def _result(self, action: str, error: str) -> None:
        await self._send_json({"type": "result", "action": action, "error": error})

    async def _send_json(self, content: dict) -> None:
        await self.send(text_data=json.dumps(content))
