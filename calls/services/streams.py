"""A call's media streams: opening one (checking its token), Twilio's stream status
callbacks, and the counters written once when a stream closes."""

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from .. import security
from ..feed import call_broadcast
from ..models import (
    STATUS_RANK,
    Actor,
    Call,
    CallStatus,
    EndReason,
    MediaStream,
    StreamStatus,
)
from .handover import stream_handover_record
from .transcripts import call_event_record
from .webhooks import call_end_record

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamOpened:
    call_id: str
    call_sid: str
    agent_id: int | None
    # Set when the call had a stream before this one (it was handed over): ms since the
    # call's first stream started, so the new stream's lines follow the old ones.
    resumed_at_ms: int | None = None


def stream_open(
    *,
    call_sid: str,
    stream_sid: str,
    token: str | None,
    custom_parameters: dict[str, str],
    media_format: dict[str, Any],
    tracks: list[str],
) -> StreamOpened:
    """Authenticate a stream's `start` and record it. Raises StreamTokenError if refused.

    The nonce is consumed by a conditional UPDATE, so of two sockets presenting the same
    token only one wins, whichever process each is in.
    """
    call = Call.objects.filter(sid=call_sid).first()
    try:
        if call is None:
            raise security.StreamTokenError("stream for an unknown call")
        if not call.is_live:
            raise security.StreamTokenError("the call has ended")
        nonce = security.stream_token_nonce(token, call_sid)
        consumed = (
            Call.objects.filter(pk=call.pk, stream_nonce=nonce)
            .exclude(stream_nonce="")
            .update(stream_nonce="")
        )
        if not consumed:
            raise security.StreamTokenError("stream token already used or replaced")
    except security.StreamTokenError as error:
        # The consumer logs the refusal (rate-limited: anyone can send a `start`).
        if call is not None:
            call_event_record(
                call=call,
                kind="stream_refused",
                actor=Actor.SYSTEM,
                data={"stream_sid": stream_sid, "reason": str(error)},
            )
        raise
    now = timezone.now()
    first = MediaStream.objects.filter(call=call).exclude(sid=stream_sid).order_by("started_at")
    first_started = first.values_list("started_at", flat=True).first()
    resumed_at_ms = (
        max(0, int((now - first_started).total_seconds() * 1000)) if first_started else None
    )
    parameters = {
        k: v for k, v in custom_parameters.items() if k != security.STREAM_TOKEN_PARAMETER
    }
    with transaction.atomic():
        MediaStream.objects.update_or_create(
            sid=stream_sid,
            defaults={
                "call": call,
                "status": StreamStatus.STARTED,
                "started_at": now,
                "custom_parameters": parameters,
                "media_format": media_format,
                "tracks": tracks,
            },
        )
        call_event_record(
            call=call, kind="stream_connected", actor=Actor.TWILIO, data={"stream_sid": stream_sid}
        )
        # Twilio runs our TwiML only once the call is answered, whether or not the number
        # has a status callback to tell us so.
        if STATUS_RANK.get(call.status, 0) < STATUS_RANK[CallStatus.IN_PROGRESS]:
            call.status, call.answered_at = CallStatus.IN_PROGRESS, call.answered_at or now
            call.save(update_fields=["status", "answered_at"])
            call_broadcast(call)
    return StreamOpened(
        call_id=str(call.id),
        call_sid=call.sid,
        agent_id=call.agent_id,
        resumed_at_ms=resumed_at_ms,
    )


STREAM_COUNTERS = (
    "frames_in",
    "frames_out",
    "bytes_in",
    "bytes_out",
    "marks_sent",
    "marks_received",
    "clears",
    "dtmf_digits",
    "bad_messages",
)


def stream_close(
    *,
    stream_sid: str,
    counters: dict[str, int],
    last_error: str = "",
    caller_left: bool = False,
    handed_over: bool = False,
) -> None:
    """Write a stream's counters once, when it ends (never per frame).

    `caller_left`: Twilio stopped the stream with no transfer under way, so the call is over.
    `handed_over`: a draining process closes it so the call resumes on a new stream.
    """
    values = {name: counters.get(name, 0) for name in STREAM_COUNTERS}
    updates: dict[str, Any] = {**values, "stopped_at": timezone.now()}
    if last_error:
        updates["last_error"] = last_error
    MediaStream.objects.filter(sid=stream_sid).update(**updates)
    MediaStream.objects.filter(sid=stream_sid, status=StreamStatus.STARTED).update(
        status=StreamStatus.STOPPED
    )
    stream = MediaStream.objects.filter(sid=stream_sid).only("call_id").first()
    if caller_left and stream is not None:
        call_end_record(call_id=stream.call_id, reason=EndReason.CALLER_HANGUP, actor=Actor.CALLER)
    if handed_over and stream is not None:
        stream_handover_record(call_id=stream.call_id, stream_sid=stream_sid)


def stream_status_record(
    *, call_sid: str, stream_sid: str, event: str, error: str = "", at: datetime | None = None
) -> MediaStream | None:
    """Apply Twilio's stream status callback: stream-started, stream-stopped, stream-error."""
    at = at or timezone.now()
    call = Call.objects.filter(sid=call_sid).first()
    if call is None:
        logger.warning("Stream event %s for unknown call %s ignored", event, call_sid)
        return None
    with transaction.atomic():
        stream, _ = MediaStream.objects.select_for_update().get_or_create(
            sid=stream_sid, defaults={"call": call, "started_at": at}
        )
        if event == "stream-stopped":
            stream.status = StreamStatus.STOPPED
            stream.stopped_at = stream.stopped_at or at
        elif event == "stream-error":
            stream.status = StreamStatus.ERROR
            stream.last_error = error
        stream.save()
        call_event_record(
            call=call,
            kind=event,
            actor=Actor.TWILIO,
            data={"stream_sid": stream_sid, **({"error": error} if error else {})},
        )
    return stream


def stream_bad_message_record(*, call_id: str, stream_sid: str, reason: str, detail: str) -> None:
    """The first bad message of a kind on a stream goes to the call's log (Twilio logs once too)."""
    call = Call.objects.filter(pk=call_id).first()
    if call is not None:
        call_event_record(
            call=call,
            kind="stream_bad_message",
            actor=Actor.TWILIO,
            data={"stream_sid": stream_sid, "reason": reason, "detail": detail[:200]},
        )
