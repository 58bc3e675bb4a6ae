"""The staff dashboard's live feed: a snapshot of the live calls, then small deltas."""

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from calls import feed
from calls.models import LIVE_CALLS_GROUP
from calls.staff import staff_time_zone

# WebSocket close code for a policy violation: a socket we will not serve.
CLOSE_POLICY_VIOLATION = 1008


class LiveCallsConsumer(AsyncJsonWebsocketConsumer):
    """The staff dashboard's feed: small deltas about live calls, for staff who may view calls."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if not await database_sync_to_async(_may_watch)(user):
            await self.close(code=CLOSE_POLICY_VIOLATION)
            return
        # Times of day go out in the staff member's own zone, as their pages show them.
        self.zone = await database_sync_to_async(staff_time_zone)(user=user)
        await self.channel_layer.group_add(LIVE_CALLS_GROUP, self.channel_name)
        await self.accept()
        await self._send_snapshot()

    async def dispatch(self, message: dict) -> None:
        # Channels closes stale database connections before every handler, a thread-pool
        # hop each time; a broadcast touches no database, and there is one per call event.
        if message["type"] == "live.event":
            await self.live_event(message)
        else:
            await super().dispatch(message)

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(LIVE_CALLS_GROUP, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # The page asks for a fresh snapshot after reconnecting; nothing else is accepted.
        if isinstance(content, dict) and content.get("action") == "resync":
            await self._send_snapshot()

    async def live_event(self, message: dict) -> None:
        delta = {key: value for key, value in message.items() if key != "type"}
        await self.send_json(feed.for_viewer(delta, self.zone))

    async def _send_snapshot(self) -> None:
        snapshot = await database_sync_to_async(feed.snapshot)()
        await self.send_json(feed.for_viewer(snapshot, self.zone))


def _may_watch(user: Any) -> bool:
    return bool(
        user is not None
        and user.is_authenticated
        and user.is_active
        and user.is_staff
        and user.has_perm("calls.view_call")
    )
