"""What the staff's live feed sends, and nothing else does.

The live page's socket (/ws/calls/live) gets a snapshot when it connects and when it asks
({"action": "resync"}), then deltas, each a dict with an "event" key:

    snapshot    {"now", "targets", "calls": [call summary + "transcript" + "events"]}
    call        {"call": call summary}
    transcript  {"call_id", "entry": transcript line}        a line, new or updated
    event       {"call_id", "entry": event}                  one entry of a call's log
    speaking    {"call_id", "speaker": "caller" | "agent" | ""}

Every shape carries the words the page shows (the `*_label` fields, from calls.labels), so
the page formats nothing itself. Messages go through channels-redis, so they hold only
strings, numbers, booleans, lists and dicts. Broadcasts of stored changes are sent once the
transaction that made them commits. They are best effort: when the channel layer is down
they are dropped (logged once per outage) and the pages re-sync when they reconnect.
"""

import asyncio
import logging
import time
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.db.models import Exists, OuterRef, Prefetch
from django.utils import timezone

from agents.models import TransferTarget

from . import labels
from .models import (
    LIVE_CALLS_GROUP,
    LIVE_STATUSES,
    Call,
    CallEvent,
    MediaStream,
    TranscriptEntry,
)

logger = logging.getLogger(__name__)

# A snapshot carries the end of each call's transcript and log (the call's page has all of
# it); deltas add to them as they grow.
SNAPSHOT_TRANSCRIPT_LINES = 100
SNAPSHOT_RECENT_EVENTS = 6
SNAPSHOT_MAX_CALLS = 200
# A value in an event's details, as a card has room for it.
EVENT_VALUE_MAX_CHARS = 80


# --- shapes ---------------------------------------------------------------------------------


def call_summary(call: Call) -> dict[str, Any]:
    """A small, msgpack-safe description of a call for the live feed."""
    # The page drops a call that is over, saying why.
    ended = not call.is_live or call.ended_at is not None
    return {
        "id": str(call.id),
        "sid": call.sid,
        "direction": call.direction,
        "direction_label": call.get_direction_display(),
        "from": call.from_number,
        "to": call.to_number,
        "caller_label": labels.caller_label(call),
        "agent": call.agent.name if call.agent_id else "",
        "agent_id": call.agent_id,
        "agent_label": labels.agent_label(call),
        "status": call.status,
        "status_label": call.get_status_display(),
        "created_at": call.created_at.isoformat() if call.created_at else None,
        "answered_at": call.answered_at.isoformat() if call.answered_at else None,
        "ended_at": call.ended_at.isoformat() if call.ended_at else None,
        "ended": ended,
        "ended_label": labels.ended_label(call) if ended else "",
        "end_reason": call.end_reason,
        "end_reason_label": call.get_end_reason_display(),
        "transferred_to": call.transferred_to,
        "transferred_label": labels.transferred_label(call),
    }


def transcript_summary(entry: TranscriptEntry) -> dict[str, Any]:
    return {
        "id": entry.pk,
        "speaker": entry.speaker,
        "speaker_label": entry.get_speaker_display(),
        "text": entry.text,
        "offset_ms": entry.offset_ms,
        "offset_label": labels.offset_label(entry.offset_ms),
        "interrupted": entry.interrupted,
        "heard_ms": entry.heard_ms,
        "interrupted_label": labels.interruption_label(entry),
    }


def event_summary(event: CallEvent) -> dict[str, Any]:
    return {
        "kind": event.kind,
        "kind_label": labels.event_label(event.kind),
        "actor": event.actor_label,
        "data": event.data,
        "details": labels.event_details(event.data, value_max_chars=EVENT_VALUE_MAX_CHARS),
        "at": event.created_at.isoformat(),
    }


# --- the snapshot ---------------------------------------------------------------------------


def snapshot() -> dict[str, Any]:
    """The live calls, newest first, with their transcript and latest events, and what the
    page needs to act on them: the transfer targets of every agent, and the server's clock
    for durations.

    A call whose stream a dead server process held is left out: nothing serves it, and the
    reconciler resumes or ends it within the minute (a resumed call comes back as a delta).
    """
    lost_stream = MediaStream.objects.lost().filter(call=OuterRef("pk"))
    calls = list(
        Call.objects.filter(status__in=LIVE_STATUSES, ended_at__isnull=True)
        .exclude(Exists(lost_stream))
        .select_related("agent")
        .prefetch_related(
            "transcript",
            Prefetch("events", queryset=CallEvent.objects.select_related("user")),
        )
        .order_by("-created_at")[:SNAPSHOT_MAX_CALLS]
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
        "event": "snapshot",
        "now": timezone.now().isoformat(),
        "targets": targets,
        "calls": [
            {
                **call_summary(call),
                "transcript": [
                    transcript_summary(entry)
                    for entry in list(call.transcript.all())[-SNAPSHOT_TRANSCRIPT_LINES:]
                ],
                "events": [
                    event_summary(event)
                    for event in list(call.events.all())[-SNAPSHOT_RECENT_EVENTS:]
                ],
            }
            for call in calls
        ],
    }


# --- broadcasts -----------------------------------------------------------------------------

# Broadcasts are best effort: the live page re-syncs from a snapshot when it reconnects, and a
# webhook must answer Twilio whether or not Redis does. A broadcast gives up after this...
BROADCAST_TIMEOUT_S = 1.0
# ...and after a failure the feed stops trying for this long, so that an unreachable channel
# layer does not cost every webhook a timeout per broadcast.
BROADCAST_PAUSE_AFTER_FAILURE_S = 1.0


class _Outage:
    """The channel layer's state as the feed last found it: logged once per outage."""

    def __init__(self) -> None:
        self.since: float | None = None  # monotonic time of the first failure
        self.retry_at = 0.0
        self.dropped = 0

    def skip(self) -> bool:
        if self.since is not None and time.monotonic() < self.retry_at:
            self.dropped += 1
            return True
        return False

    def failed(self, error: BaseException) -> None:
        now = time.monotonic()
        self.retry_at = now + BROADCAST_PAUSE_AFTER_FAILURE_S
        self.dropped += 1
        if self.since is None:
            self.since = now
            logger.warning(
                "Live feed: broadcasts are failing (%s: %s); dropping them until the channel "
                "layer answers again",
                type(error).__name__,
                error,
            )

    def succeeded(self) -> None:
        if self.since is not None:
            logger.warning(
                "Live feed: broadcasts work again after %.1f s; %d were dropped",
                time.monotonic() - self.since,
                self.dropped,
            )
            self.since, self.dropped = None, 0


_outage = _Outage()


async def _group_send(message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None or _outage.skip():
        return
    try:
        await asyncio.wait_for(layer.group_send(LIVE_CALLS_GROUP, message), BROADCAST_TIMEOUT_S)
    except Exception as error:  # Redis down or slow: the page re-syncs; the caller goes on
        _outage.failed(error)
    else:
        _outage.succeeded()


def live_broadcast(event: str, **payload: Any) -> None:
    """Send a delta to every staff dashboard, once the current transaction has committed.

    Never raises: a webhook that changed a call answers Twilio even when Redis is down.
    """
    message = {"type": "live.event", "event": event, **payload}
    transaction.on_commit(lambda: async_to_sync(_group_send)(message))


def call_broadcast(call: Call) -> None:
    live_broadcast("call", call=call_summary(call))


def transcript_broadcast(entry: TranscriptEntry) -> None:
    live_broadcast("transcript", call_id=str(entry.call_id), entry=transcript_summary(entry))


def event_broadcast(event: CallEvent) -> None:
    live_broadcast("event", call_id=str(event.call_id), entry=event_summary(event))


SPEAKERS_AUDIBLE = tuple(labels.SPEAKING_LABELS)


async def call_speaking_broadcast(*, call_id: str, speaker: str) -> None:
    """Tell the live dashboards who is audible on a call: "caller", "agent", or "" for nobody.

    Not stored: it changes several times a minute and only the live view shows it. Send it
    when it changes, from a task, never inline on the media path. The page has the words
    for it (labels.SPEAKING_LABELS) from the live view's config.
    """
    if speaker not in SPEAKERS_AUDIBLE:
        raise ValueError(f"speaker must be one of {SPEAKERS_AUDIBLE}, not {speaker!r}")
    message = {"type": "live.event", "event": "speaking", "call_id": str(call_id)}
    await _group_send({**message, "speaker": speaker})
