"""Staff users and calls for the staff console's tests."""

import asyncio
import contextlib
import secrets

from channels.layers import get_channel_layer
from django.contrib.auth.models import Permission, User

from agents.models import Agent
from calls.models import Call, CallStatus, Direction, MediaStream

from .twilio_helpers import ACCOUNT_SID, new_call_sid

ACTION_PERMISSIONS = ["hangup_call", "clear_audio", "transfer_call", "say_on_call", "place_call"]
PASSWORD = "a-long-test-password"


def make_staff(username: str, *codenames: str) -> User:
    """An active staff user holding exactly the given `calls` permissions."""
    user = User.objects.create_user(username, password=PASSWORD, is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="calls", codename__in=codenames)
    )
    return user


def make_call(agent: Agent | None, *, status: str = CallStatus.IN_PROGRESS, **fields) -> Call:
    values = {
        "sid": new_call_sid(),
        "account_sid": ACCOUNT_SID,
        "direction": Direction.INBOUND,
        "from_number": "+14155550123",
        "to_number": "+14155550100",
        "agent": agent,
        "status": status,
        **fields,
    }
    return Call.objects.create(**values)


class StreamHolder:
    """Stands in for the consumer holding a call's stream, in this process's channel layer.

    The call gets an open MediaStream record; the holder joins the call's group, keeps every
    control message it is sent (`received`) and replies to requests as the media consumer
    does, having acted. Use as `async with StreamHolder(call) as holder:`.
    """

    def __init__(self, call: Call) -> None:
        self.call = call
        self.received: list[dict] = []
        self._task: asyncio.Task | None = None

    def without_reply_to(self) -> list[dict]:
        return [{k: v for k, v in m.items() if k != "reply_to"} for m in self.received]

    async def __aenter__(self) -> "StreamHolder":
        await MediaStream.objects.acreate(call=self.call, sid="MZ" + secrets.token_hex(16))
        self.layer = get_channel_layer()
        self.channel = await self.layer.new_channel()
        await self.layer.group_add(self.call.group_name, self.channel)
        self._task = asyncio.create_task(self._serve())
        return self

    async def _serve(self) -> None:
        while True:
            message = await self.layer.receive(self.channel)
            self.received.append(message)
            if message.get("reply_to"):
                await self.layer.send(message["reply_to"], {"type": "call.reply", "error": ""})

    async def __aexit__(self, *exc_info: object) -> None:
        self._task.cancel()
        # A channels_redis read that is cancelled can hang on a pending future (as the
        # media consumer knows, calls/consumers/base.py): wait a moment, then leave it.
        done, _ = await asyncio.wait({self._task}, timeout=1)
        if done:
            with contextlib.suppress(asyncio.CancelledError):
                self._task.result()
        await self.layer.group_discard(self.call.group_name, self.channel)
