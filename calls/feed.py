"""What the staff's live feed sends, and nothing else does.

The live page's socket (/ws/calls/live) gets a snapshot when it connects and when it asks
({"action": "resync"}), then deltas, each a dict with an "event" key:

    snapshot    {"now", "time_zone_label", "targets",
                 "calls": [call summary + "transcript" + "events"]}
    call        {"call": call summary}
    transcript  {"call_id", "entry": transcript line}        a line, new or updated
    event       {"call_id", "entry": event}                  one entry of a call's log
    speaking    {"call_id", "speaker": "caller" | "agent" | ""}

Every shape carries the words the page shows (the `*_label` fields, from calls.labels), so
the page formats nothing itself. Times of day are the viewer's: each socket formats them in
its staff member's time zone as it sends (`for_viewer`), and the snapshot names the zone.
A call summary's `needs_attention` lists, in words, what about the call a person should
look at (the model failed, the caller could not reach a person, the caller keeps talking
over the agent); the events that cause one send the call's summary again.

Messages go through channels-redis, so they hold only strings, numbers, booleans, lists and
dicts. Broadcasts of stored changes are sent once the transaction that made them commits.
They are best effort: when the channel layer is down they are dropped (logged once per
outage) and the pages re-sync when they reconnect.
"""

import asyncio
import logging
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

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

# A caller who interrupts the agent this often within the window needs a person's look.
INTERRUPTIONS_FOR_ATTENTION = 3
INTERRUPTION_WINDOW = timedelta(seconds=60)
ATTENTION_REASONS = {
    "agent_error": "The agent's model failed",
    "transfer_unavailable": "The caller pressed the transfer key; nobody to transfer to",
    "transfer_failed": "A transfer failed",
    "hangup_failed": "Hanging up failed",
}
INTERRUPTIONS_REASON = (
    f"The caller keeps talking over the agent ({INTERRUPTIONS_FOR_ATTENTION}+ times in a minute)"
)
ATTENTION_KINDS = frozenset({*ATTENTION_REASONS, "barge_in"})


# --- shapes ---------------------------------------------------------------------------------


def needs_attention(events: Iterable[tuple[str, datetime]]) -> list[str]:
    """What about a call needs a person's look, in words, from its (kind, when) events."""
    reasons: list[str] = []
    interruptions: list[datetime] = []
    for kind, at in sorted(events, key=lambda event: event[1]):
        if kind == "barge_in":
            interruptions.append(at)
            recent = [t for t in interruptions if at - t <= INTERRUPTION_WINDOW]
            if len(recent) >= INTERRUPTIONS_FOR_ATTENTION and INTERRUPTIONS_REASON not in reasons:
                reasons.append(INTERRUPTIONS_REASON)
        elif kind in ATTENTION_REASONS and ATTENTION_REASONS[kind] not in reasons:
            reasons.append(ATTENTION_REASONS[kind])
    return reasons


def _attention_events(call: Call) -> list[tuple[str, datetime]]:
    return list(
        CallEvent.objects.filter(call=call, kind__in=ATTENTION_KINDS).values_list(
            "kind", "created_at"
        )
    )


def call_summary(call: Call, *, events: Iterable[CallEvent] | None = None) -> dict[str, Any]:
    """A small, msgpack-safe description of a call for the live feed.

    `events`: the call's events if they are at hand (else its attention events are read).
    """
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
        "needs_attention": needs_attention(
            _attention_events(call)
            if events is None
            else ((event.kind, event.created_at) for event in events)
        ),
    }


def transcript_summary(entry: TranscriptEntry) -> dict[str, Any]:
    return {
        "id": entry.pk,
        "speaker": entry.speaker,
        "speaker_label": labels.speaker_label(entry),
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
        "details": labels.event_details(
            event.data, kind=event.kind, value_max_chars=EVENT_VALUE_MAX_CHARS
        ),
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
                "mode": target.mode,  # cold or warm: staff see which before they transfer
            }
        )
    return {
        "event": "snapshot",
        "now": timezone.now().isoformat(),
        "targets": targets,
        "calls": [
            {
                **call_summary(call, events=call.events.all()),
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
    if event.kind in ATTENTION_KINDS:
        call = Call.objects.select_related("agent").filter(pk=event.call_id).first()
        if call is not None:
            call_broadcast(call)


# --- for one viewer -------------------------------------------------------------------------


def for_viewer(message: dict[str, Any], zone: ZoneInfo) -> dict[str, Any]:
    """`message` with its times of day in the viewer's time zone (`*_label` fields added)."""
    kind = message.get("event")
    if kind == "snapshot":
        calls = [_call_for_viewer(call, zone) for call in message["calls"]]
        return {**message, "time_zone_label": labels.time_zone_label(zone), "calls": calls}
    if kind == "call":
        return {**message, "call": _call_for_viewer(message["call"], zone)}
    if kind == "event":
        return {**message, "entry": _event_for_viewer(message["entry"], zone)}
    return message


def _call_for_viewer(call: dict[str, Any], zone: ZoneInfo) -> dict[str, Any]:
    started = labels.time_label(_parsed(call.get("created_at")), zone=zone)
    localized = {**call, "started_time": started}
    if "events" in call:
        localized["events"] = [_event_for_viewer(entry, zone) for entry in call["events"]]
    return localized


def _event_for_viewer(entry: dict[str, Any], zone: ZoneInfo) -> dict[str, Any]:
    return {**entry, "at_label": labels.time_label(_parsed(entry.get("at")), zone=zone)}


def _parsed(iso: str | None) -> datetime | None:
    return datetime.fromisoformat(iso) if iso else None


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
