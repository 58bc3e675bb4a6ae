"""Every change of a call's state goes through here.

Webhooks, the stream consumer, the agent session, the admin and the management commands call
these functions and nothing else writes calls. They are synchronous ORM code; async callers
wrap them in `channels.db.database_sync_to_async`.
"""

import asyncio
import base64
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import phonenumbers
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from agents.models import Agent, TransferTarget
from callmedia import audio

from . import security, telephony, twiml
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
    TranscriptEntry,
    call_group_name,
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
    if (
        sequence is not None
        and call.status_sequence is not None
        and sequence <= call.status_sequence
    ):
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


def call_end_record(*, call_id: str, reason: str, actor: str) -> Call | None:
    """We know the call is over (hung up through REST, the caller left, the dial ended).

    Twilio's status callback says so too, but only where the number has one configured;
    this keeps the live view right without it. The callback may still fill the duration.
    """
    with transaction.atomic():
        call = Call.objects.select_for_update().filter(pk=call_id).first()
        if call is None or not call.is_live:
            return call
        call.status = CallStatus.COMPLETED
        call.ended_at = timezone.now()
        call.end_reason = call.end_reason or reason
        call.save(update_fields=["status", "ended_at", "end_reason"])
        call_event_record(call=call, kind="ended", actor=actor, data={"reason": call.end_reason})
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
        call_end_record(call_id=call.pk, reason=EndReason.TRANSFERRED, actor=Actor.TWILIO)
    return twiml.hangup()


def connect_ended_record(*, call_sid: str) -> str:
    """Twilio ran <Connect>'s action: our stream closed and no transfer replaced the TwiML."""
    call = Call.objects.filter(sid=call_sid).first()
    if call is not None:
        call_event_record(call=call, kind="stream_closed", actor=Actor.TWILIO)
        call_end_record(call_id=call.pk, reason=EndReason.AGENT_ENDED, actor=Actor.TWILIO)
    return twiml.hangup()


# --- the media stream -----------------------------------------------------------------------


@dataclass(frozen=True)
class StreamOpened:
    call_id: str
    call_sid: str
    agent_id: int | None


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
        nonce = security.stream_token_nonce(token, call_sid)
        consumed = (
            Call.objects.filter(pk=call.pk, stream_nonce=nonce)
            .exclude(stream_nonce="")
            .update(stream_nonce="")
        )
        if not consumed:
            raise security.StreamTokenError("stream token already used or replaced")
    except security.StreamTokenError as error:
        logger.warning("Stream %s for call %s refused: %s", stream_sid, call_sid, error)
        if call is not None:
            call_event_record(
                call=call,
                kind="stream_refused",
                actor=Actor.SYSTEM,
                data={"stream_sid": stream_sid, "reason": str(error)},
            )
        raise
    now = timezone.now()
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
    return StreamOpened(call_id=str(call.id), call_sid=call.sid, agent_id=call.agent_id)


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
    *, stream_sid: str, counters: dict[str, int], last_error: str = "", caller_left: bool = False
) -> None:
    """Write a stream's counters once, when it ends (never per frame).

    `caller_left`: Twilio stopped the stream with no transfer under way, so the call is over.
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


# --- transcripts ----------------------------------------------------------------------------


def transcript_add(
    *,
    call_id: str,
    speaker: str,
    text: str,
    offset_ms: int,
    item_id: str = "",
    interrupted: bool = False,
    heard_ms: int | None = None,
) -> TranscriptEntry:
    entry = TranscriptEntry.objects.create(
        call_id=call_id,
        speaker=speaker,
        text=text,
        offset_ms=max(0, offset_ms),
        item_id=item_id,
        interrupted=interrupted,
        heard_ms=heard_ms,
    )
    live_broadcast("transcript", call_id=str(call_id), entry=transcript_summary(entry))
    return entry


def transcript_interrupt(*, call_id: str, item_id: str, heard_ms: int) -> int:
    """Mark an agent line the caller cut off, with how much of it they heard."""
    entries = list(TranscriptEntry.objects.filter(call_id=call_id, item_id=item_id))
    for entry in entries:
        entry.interrupted, entry.heard_ms = True, heard_ms
        entry.save(update_fields=["interrupted", "heard_ms"])
        live_broadcast("transcript", call_id=str(call_id), entry=transcript_summary(entry))
    return len(entries)


def transcript_summary(entry: TranscriptEntry) -> dict[str, Any]:
    return {
        "id": entry.pk,
        "speaker": entry.speaker,
        "text": entry.text,
        "offset_ms": entry.offset_ms,
        "interrupted": entry.interrupted,
        "heard_ms": entry.heard_ms,
    }


# --- call control: one idempotent path per action, whoever triggers it ---------------------


class CallControlError(Exception):
    """An action could not be carried out; `str()` says why, in words fit for staff."""


async def call_send(call_id: str, message: dict[str, Any]) -> None:
    """Deliver a control message to the consumer holding the call's stream, in any process.

    Messages must be msgpack-safe for channels-redis: strings, numbers, lists and dicts only.
    """
    layer = get_channel_layer()
    if layer is not None:
        await layer.group_send(call_group_name(call_id), message)


def _live_call(call_id: str) -> Call:
    call = Call.objects.select_related("agent").filter(pk=call_id).first()
    if call is None:
        raise CallControlError("No such call.")
    if not call.is_live:
        raise CallControlError(f"The call has already ended ({call.get_status_display()}).")
    return call


@database_sync_to_async
def _hangup_claim(call_id: str, reason: str, actor: str, user: Any) -> Call | None:
    with transaction.atomic():
        call = Call.objects.select_for_update().filter(pk=call_id).first()
        if call is None:
            raise CallControlError("No such call.")
        if call.hangup_requested_at is not None or not call.is_live:
            call_event_record(
                call=call,
                kind="hangup_skipped",
                actor=actor,
                user=user,
                data={"reason": reason, "why": "already ended or being hung up"},
            )
            return None
        call.hangup_requested_at = timezone.now()
        call.end_reason = call.end_reason or reason
        call.save(update_fields=["hangup_requested_at", "end_reason"])
        call_event_record(call=call, kind="hangup", actor=actor, user=user, data={"reason": reason})
        return call


@database_sync_to_async
def _hangup_release(call_id: str, actor: str, user: Any, error: str) -> None:
    with transaction.atomic():
        call = Call.objects.select_for_update().get(pk=call_id)
        call.hangup_requested_at = None
        call.save(update_fields=["hangup_requested_at"])
        call_event_record(
            call=call, kind="hangup_failed", actor=actor, user=user, data={"error": error}
        )


async def call_hangup(*, call_id: str, actor: str, reason: str, user: Any = None) -> bool:
    """Hang up through Twilio's REST API, exactly once, then close the stream.

    Returns False when someone else already hung up or the call had ended; Twilio's 20404
    (the caller got there first) counts as success.
    """
    call = await _hangup_claim(str(call_id), reason, actor, user)
    if call is None:
        return False
    try:
        await telephony.call_complete(call.sid)
    except telephony.TelephonyError as error:
        await _hangup_release(str(call_id), actor, user, str(error))
        raise CallControlError(f"Hang-up failed: {error}") from error
    await database_sync_to_async(call_end_record)(call_id=str(call_id), reason=reason, actor=actor)
    await call_send(str(call_id), {"type": "call.close", "reason": reason})
    return True


@database_sync_to_async
def _action_record(call_id: str, kind: str, actor: str, user: Any, data: dict) -> Call:
    call = _live_call(call_id)
    call_event_record(call=call, kind=kind, actor=actor, user=user, data=data)
    return call


async def call_clear_audio(*, call_id: str, actor: str, user: Any = None) -> None:
    """Barge-in: drop the audio Twilio has buffered for the caller, at once."""
    await _action_record(str(call_id), "clear", actor, user, {})
    await call_send(str(call_id), {"type": "call.clear", "actor": actor})


async def call_play_audio(
    *, call_id: str, wav: bytes, actor: str, user: Any = None, label: str = "announcement"
) -> None:
    """Play a WAV (any rate, width or channels) into a live call, closed with one mark.

    Converted here, off the event loop, to the headerless 8 kHz mu-law Twilio plays: a
    file header sent as audio would play as a click.
    """
    try:
        ulaw = await asyncio.to_thread(audio.wav_to_ulaw, wav)
    except audio.AudioError as error:
        raise CallControlError(f"Cannot play that file: {error}") from error
    duration_ms = audio.duration_ms(ulaw)
    await _action_record(str(call_id), "play", actor, user, {"label": label, "ms": duration_ms})
    payload = base64.b64encode(ulaw).decode("ascii")
    await call_send(str(call_id), {"type": "call.play", "payload": payload, "label": label})


async def call_say(*, call_id: str, text: str, actor: str, user: Any = None) -> None:
    """Have the agent speak `text` on a live call."""
    text = text.strip()
    if not text:
        raise CallControlError("Type something for the agent to say.")
    await _action_record(str(call_id), "say", actor, user, {"text": text})
    await call_send(str(call_id), {"type": "call.say", "text": text})


@database_sync_to_async
def _transfer_prepare(call_id: str, target_name: str | None, actor: str, user: Any) -> tuple:
    call = _live_call(call_id)
    targets = TransferTarget.objects.filter(agent_id=call.agent_id)
    target = (
        targets.filter(name=target_name).first()
        if target_name
        else targets.filter(is_default=True).first()
    )
    if target is None:
        wanted = f"“{target_name}”" if target_name else "a default transfer target"
        call_event_record(
            call=call,
            kind="transfer_failed",
            actor=actor,
            user=user,
            data={"target": target_name or "", "error": "unknown target"},
        )
        raise CallControlError(f"This call's agent has no {wanted}.")
    return call, target


@database_sync_to_async
def _transfer_finish(
    call: Call, target: TransferTarget, actor: str, user: Any, reason: str, error: str = ""
) -> None:
    data = {"target": target.name, "number": str(target.phone_number), "reason": reason}
    if error:
        call_event_record(
            call=call, kind="transfer_failed", actor=actor, user=user, data={**data, "error": error}
        )
        return
    with transaction.atomic():
        Call.objects.filter(pk=call.pk).update(
            transfer_target=target,
            transferred_to=str(target.phone_number),
            end_reason=EndReason.TRANSFERRED,
        )
        call.refresh_from_db()
        call_event_record(call=call, kind="transfer", actor=actor, user=user, data=data)
        call_broadcast(call)


async def call_transfer(
    *,
    call_id: str,
    actor: str,
    target_name: str | None = None,
    user: Any = None,
    reason: str = "",
) -> TransferTarget:
    """Hand the caller to a person: replace the call's TwiML with a <Dial>.

    Twilio then ends the stream itself; the consumer is told first, so the `stop` that follows
    is read as a transfer, not a hang-up. `target_name=None` means the agent's default target.
    """
    call, target = await _transfer_prepare(str(call_id), target_name, actor, user)
    await call_send(str(call_id), {"type": "call.transferring", "target": target.name})
    try:
        await telephony.call_update_twiml(call.sid, twiml.dial(str(target.phone_number)))
    except telephony.TelephonyError as error:
        await _transfer_finish(call, target, actor, user, reason, error=str(error))
        await call_send(str(call_id), {"type": "call.transfer_failed", "error": str(error)})
        raise CallControlError(f"Transfer to {target.name} failed: {error}") from error
    await _transfer_finish(call, target, actor, user, reason)
    return target


@database_sync_to_async
def _outbound_record(sid: str, agent: Agent, to_number: str, user: Any) -> Call:
    with transaction.atomic():
        # Twilio may already have asked for the call's TwiML and so created the record.
        call, _ = Call.objects.update_or_create(
            sid=sid,
            defaults={
                "account_sid": settings.TWILIO_ACCOUNT_SID,
                "direction": Direction.OUTBOUND,
                "from_number": str(agent.phone_number),
                "to_number": to_number,
                "agent": agent,
            },
        )
        call_event_record(
            call=call,
            kind="outbound_placed",
            actor=Actor.STAFF if user else Actor.SYSTEM,
            user=user,
            data={"to": to_number, "agent": agent.name},
        )
        call_broadcast(call)
    return call


def e164(number: str) -> str:
    """`number` in E.164, or CallControlError saying what is wrong with it."""
    try:
        parsed = phonenumbers.parse(number.strip(), None)
    except phonenumbers.NumberParseException:
        raise CallControlError(
            f"“{number}” is not a phone number; use E.164, e.g. +14155550100."
        ) from None
    if not phonenumbers.is_valid_number(parsed):
        raise CallControlError(f"“{number}” is not a valid phone number.")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


async def call_place_outbound(*, agent: Agent, to_number: str, user: Any = None) -> Call:
    """Have `agent` call `to_number`. Twilio fetches our answer webhook once it picks up."""
    to_number = e164(to_number)
    if not agent.is_active:
        raise CallControlError(f"{agent.name} is not active.")
    if not agent.phone_number:
        raise CallControlError(f"{agent.name} has no phone number to call from.")
    try:
        sid = await telephony.call_create(
            to=to_number,
            from_=str(agent.phone_number),
            url=security.public_url("/twilio/voice/incoming"),
            status_callback=security.public_url("/twilio/voice/status"),
        )
    except telephony.TelephonyError as error:
        raise CallControlError(f"Twilio did not place the call: {error}") from error
    return await _outbound_record(sid, agent, to_number, user)


# --- the staff feed: who is audible now ----------------------------------------------------

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
