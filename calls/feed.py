"""What the staff's live feed sends."""

from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from .models import LIVE_CALLS_GROUP, Call, TranscriptEntry


def call_summary(call: Call) -> dict[str, Any]:
    """A small, msgpack-safe description of a call for the live feed."""
    return {
        "id": str(call.id),
        "sid": call.sid,
        "direction": call.direction,
        "from": call.from_number,
        "to": call.to_number,
        "agent": call.agent.name if call.agent_id else "",
        "agent_id": call.agent_id,
        "status": call.status,
        "created_at": call.created_at.isoformat() if call.created_at else None,
        "answered_at": call.answered_at.isoformat() if call.answered_at else None,
        "ended_at": call.ended_at.isoformat() if call.ended_at else None,
        "end_reason": call.end_reason,
        "transferred_to": call.transferred_to,
    }


def live_broadcast(event: str, **payload: Any) -> None:
    """Send a delta to every staff dashboard, once the current transaction has committed."""
    message = {"type": "live.event", "event": event, **payload}

    def send() -> None:
        layer = get_channel_layer()
        if layer is not None:
            async_to_sync(layer.group_send)(LIVE_CALLS_GROUP, message)

    transaction.on_commit(send)


def call_broadcast(call: Call) -> None:
    live_broadcast("call", call=call_summary(call))


def transcript_summary(entry: TranscriptEntry) -> dict[str, Any]:
    return {
        "id": entry.pk,
        "speaker": entry.speaker,
        "text": entry.text,
        "offset_ms": entry.offset_ms,
        "interrupted": entry.interrupted,
        "heard_ms": entry.heard_ms,
    }


SPEAKERS_AUDIBLE = ("caller", "agent", "")


async def call_speaking_broadcast(*, call_id: str, speaker: str) -> None:
    """Tell the live dashboards who is audible on a call: "caller", "agent", or "" for nobody.

    Not stored: it changes several times a minute and only the live view shows it. Send it
    when it changes, from a task, never inline on the media path.
    """
    if speaker not in SPEAKERS_AUDIBLE:
        raise ValueError(f"speaker must be one of {SPEAKERS_AUDIBLE}, not {speaker!r}")
    layer = get_channel_layer()
    if layer is not None:
        message = {"type": "live.event", "event": "speaking", "call_id": str(call_id)}
        await layer.group_send(LIVE_CALLS_GROUP, {**message, "speaker": speaker})
