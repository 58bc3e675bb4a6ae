"""The staff dashboard's live feed: a snapshot of the live calls, then small deltas."""

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from calls import services
from calls.models import LIVE_CALLS_GROUP

# WebSocket close code for a policy violation: a socket we will not serve.
CLOSE_POLICY_VIOLATION = 1008


class LiveCallsConsumer(AsyncJsonWebsocketConsumer):
    """The staff dashboard's feed: small deltas about live calls, for staff who may view calls."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if not await database_sync_to_async(_may_watch)(user):
            await self.close(code=CLOSE_POLICY_VIOLATION)
            return
        await self.channel_layer.group_add(LIVE_CALLS_GROUP, self.channel_name)
        await self.accept()
        await self.send_json({"event": "snapshot", **await database_sync_to_async(_snapshot)()})

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(LIVE_CALLS_GROUP, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # The page asks for a fresh snapshot after reconnecting; nothing else is accepted.
        if isinstance(content, dict) and content.get("action") == "resync":
            await self.send_json({"event": "snapshot", **await database_sync_to_async(_snapshot)()})

    async def live_event(self, message: dict) -> None:
        await self.send_json({key: value for key, value in message.items() if key != "type"})


def _may_watch(user: Any) -> bool:
    return bool(
        user is not None
        and user.is_authenticated
        and user.is_active
        and user.is_staff
        and user.has_perm("calls.view_call")
    )


# A snapshot carries the end of each call's transcript and log (the call's page has all of
# it); deltas add to them as they grow.
SNAPSHOT_TRANSCRIPT_LINES = 100
SNAPSHOT_RECENT_EVENTS = 6


def _snapshot() -> dict[str, Any]:
    """Every live call with its transcript and latest events, and what the page needs to act
    on them: the transfer targets of every agent, and the server's clock for durations."""
    from django.db.models import Prefetch
    from django.utils import timezone

    from agents.models import TransferTarget
    from calls.models import LIVE_STATUSES, Call, CallEvent

    calls = list(
        Call.objects.filter(status__in=LIVE_STATUSES, ended_at__isnull=True)
        .select_related("agent")
        .prefetch_related(
            "transcript",
            Prefetch("events", queryset=CallEvent.objects.select_related("user")),
        )
        .order_by("created_at")[:200]
    )
    # Every agent of a live call has an entry, so the page knows "none" from "not sent".
    targets: dict[str, list[dict[str, Any]]] = {
        str(call.agent_id): [] for call in calls if call.agent_id is not None
    }
    for target in TransferTarget.objects.order_by("agent_id", "-is_default", "name"):
        targets.setdefault(str(target.agent_id), []).append(
            {
                "name": target.name,
                "number": str(target.phone_number),
                "is_default": target.is_default,
            }
        )
    return {
        "now": timezone.now().isoformat(),
        "targets": targets,
        "calls": [
            {
                **services.call_summary(call),
                "transcript": [
                    services.transcript_summary(entry)
                    for entry in list(call.transcript.all())[-SNAPSHOT_TRANSCRIPT_LINES:]
                ],
                "events": [
                    _event_summary(event)
                    for event in list(call.events.all())[-SNAPSHOT_RECENT_EVENTS:]
                ],
            }
            for call in calls
        ],
    }


def _event_summary(event: Any) -> dict[str, Any]:
    # The shape services.call_event_record broadcasts for a new event.
    return {
        "kind": event.kind,
        "actor": event.actor_label,
        "data": event.data,
        "at": event.created_at.isoformat(),
    }
