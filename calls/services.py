"""Every change of a call's state goes through here.

Webhooks, the stream consumer, the agent session, the admin and the management commands call
these functions and nothing else writes calls. They are synchronous ORM code; async callers
wrap them in `channels.db.database_sync_to_async`.
"""

import logging
from datetime import datetime
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.utils import timezone

from agents.models import Agent

from . import security, twiml
from .models import (
    LIVE_CALLS_GROUP,
    STATUS_RANK,
    TERMINAL_STATUSES,
    Actor,
    Call,
    CallEvent,
    CallStatus,
    Direction,
    EndReason,
    MediaStream,
    StreamStatus,
)

logger = logging.getLogger(__name__)

_END_REASON_BY_STATUS = {
    CallStatus.COMPLETED: EndReason.CALLER_HANGUP,
    CallStatus.BUSY: EndReason.FAILED,
    CallStatus.FAILED: EndReason.FAILED,
    CallStatus.NO_ANSWER: EndReason.FAILED,
    CallStatus.CANCELED: EndReason.FAILED,
}


# --- the staff feed -------------------------------------------------------------------------


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


# --- the audit log --------------------------------------------------------------------------


def call_event_record(
    *,
    call: Call,
    kind: str,
    actor: str,
    user: Any = None,
    data: dict[str, Any] | None = None,
) -> CallEvent:
    event = CallEvent.objects.create(
        call=call, kind=kind, actor=actor, user=user if user and user.pk else None, data=data or {}
    )
    live_broadcast(
        "event",
        call_id=str(call.id),
        entry={
            "kind": kind,
            "actor": event.actor_label,
            "data": event.data,
            "at": event.created_at.isoformat(),
        },
    )
    return event


# --- webhooks -------------------------------------------------------------------------------


def call_answer(
    *,
    call_sid: str,
    account_sid: str,
    from_number: str,
    to_number: str,
    direction: str,
    status: str = CallStatus.RINGING,
) -> str:
    """Record the call Twilio is asking about and return the TwiML that answers it.

    Twilio retries a webhook it got no answer to, so this is idempotent per CallSid: the
    retry finds the same Call and gets a fresh stream token (the first one may never have
    reached Twilio).
    """
    with transaction.atomic():
        call = Call.objects.select_for_update().filter(sid=call_sid).first()
        created = call is None
        if created:
            is_outbound = direction.startswith("outbound")
            agent_number = from_number if is_outbound else to_number
            call = Call(
                sid=call_sid,
                account_sid=account_sid,
                direction=Direction.OUTBOUND if is_outbound else Direction.INBOUND,
                from_number=from_number,
                to_number=to_number,
                agent=Agent.objects.for_number(agent_number),
                status=status if status in STATUS_RANK else CallStatus.RINGING,
            )
        if call.agent_id is None:
            call.end_reason = EndReason.NO_AGENT
            call.save()
            if created:
                call_event_record(
                    call=call, kind="unrouted", actor=Actor.SYSTEM, data={"to": to_number}
                )
            logger.warning("Call %s to %s: no active agent answers it", call_sid, to_number)
            return twiml.unrouted()
        token, call.stream_nonce = security.stream_token_issue(call_sid)
        call.save()
        call_event_record(
            call=call,
            kind="answered" if created else "answer_retried",
            actor=Actor.TWILIO,
            data={"agent": call.agent.name},
        )
        call_broadcast(call)
    return twiml.connect_stream(token=token)


def _status_moves_forward(call: Call, status: str, sequence: int | None) -> bool:
    if call.status in TERMINAL_STATUSES or status not in STATUS_RANK:
        return False
    if sequence is not None and call.status_sequence is not None and sequence <= call.status_sequence:
        return False
    return STATUS_RANK[status] > STATUS_RANK[call.status]


def call_status_update(
    *,
    call_sid: str,
    status: str,
    duration_seconds: int | None = None,
    sequence: int | None = None,
    at: datetime | None = None,
) -> Call | None:
    """Apply one of Twilio's call status callbacks.

    They arrive in any order, so a status only moves forward and a finished call never
    returns to ringing. A late callback may still fill in the duration.
    """
    at = at or timezone.now()
    with transaction.atomic():
        call = Call.objects.select_for_update().filter(sid=call_sid).first()
        if call is None:
            logger.warning("Status %s for unknown call %s ignored", status, call_sid)
            return None
        changed = []
        if _status_moves_forward(call, status, sequence):
            call.status = status
            call.status_sequence = sequence
            changed.append("status")
            if status == CallStatus.IN_PROGRESS and call.answered_at is None:
                call.answered_at = at
            if status in TERMINAL_STATUSES:
                call.ended_at = call.ended_at or at
                call.end_reason = call.end_reason or _END_REASON_BY_STATUS[status]
        if duration_seconds is not None and call.duration_seconds is None:
            call.duration_seconds = duration_seconds
            changed.append("duration")
        if not changed:
            return call
        call.save()
        call_event_record(
            call=call,
            kind="status",
            actor=Actor.TWILIO,
            data={"status": status, "sequence": sequence, "duration_seconds": duration_seconds},
        )
        call_broadcast(call)
    return call


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


def dial_outcome_record(*, call_sid: str, dial_status: str, duration_seconds: int | None) -> str:
    """Twilio reports how a transfer's <Dial> ended; the call then hangs up."""
    call = Call.objects.filter(sid=call_sid).first()
    if call is not None:
        call_event_record(
            call=call,
            kind="transfer_ended",
            actor=Actor.TWILIO,
            data={"dial_status": dial_status, "duration_seconds": duration_seconds},
        )
    return twiml.hangup()


def connect_ended_record(*, call_sid: str) -> str:
    """Twilio ran <Connect>'s action: our stream closed and no transfer replaced the TwiML."""
    call = Call.objects.filter(sid=call_sid).first()
    if call is not None:
        call_event_record(call=call, kind="stream_closed", actor=Actor.TWILIO)
    return twiml.hangup()
