"""Call control: one idempotent path per action (hang up, clear, play, say, transfer),
whoever triggers it, delivered to the call's stream consumer through the channel layer.

Actions are requests, not fire and forget: the message to the call's group carries a reply
channel, the consumer holding the stream (in whichever process) acts and replies, and the
action waits CALL_CONTROL_REPLY_SECONDS for that reply. Clear, say and play succeed only
when the stream confirms. For hang-up and transfer the REST call to Twilio is what counts:
it is made whatever the stream says, and a stream that did not confirm is reported beside
the success (Twilio ends the stream itself once the call is hung up or dialled elsewhere).
Every unanswered request is in the call's event log as `stream_unanswered`.
"""

import asyncio
import base64
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from agents.models import TransferMode, TransferTarget
from callmedia import audio

from .. import telephony, twiml
from ..feed import call_broadcast
from ..models import Call, CallEvent, EndReason, MediaStream, StreamStatus, call_group_name
from .outcomes import call_outcome_update
from .transcripts import call_event_record
from .webhooks import call_end_reason_by_status, call_end_record

logger = logging.getLogger(__name__)

STREAM_UNANSWERED = "The call's stream did not answer; it may have ended."
STREAM_UNREACHABLE = (
    "The call's stream could not be reached: the channel layer (Redis) is not answering. "
    "Try again in a moment."
)


class CallControlError(Exception):
    """An action could not be carried out; `str()` says why, in words fit for staff."""

    status = 409  # the HTTP status a view answers with: the call's state forbids it


class StreamUnanswered(CallControlError):
    """The process holding the call's stream did not confirm the action in time."""

    status = 504


class StreamUnreachable(CallControlError):
    """The channel layer (Redis) failed, so the call's stream could not be asked."""

    status = 503


@dataclass(frozen=True)
class ControlOutcome:
    """What a hang-up or transfer did.

    `done`: Twilio did it (False for a hang-up someone else got to first). `stream_note`:
    why the call's stream did not confirm, in words for staff; empty when it confirmed or
    there was no live stream to tell.
    """

    done: bool
    stream_note: str = ""
    target: TransferTarget | None = None


async def call_send(call_id: str, message: dict[str, Any]) -> None:
    """Deliver a control message to the consumer holding the call's stream; no reply.

    Messages must be msgpack-safe for channels-redis: strings, numbers, lists and dicts only.
    """
    layer = get_channel_layer()
    if layer is not None:
        await layer.group_send(call_group_name(call_id), message)


async def call_request(call_id: str, message: dict[str, Any]) -> None:
    """Deliver a control message to the call's stream and wait until it says it acted.

    The consumer answers on a fresh channel of our own (`reply_to`) with
    {"type": "call.reply", "error": ""} or the words of why it could not. Raises
    StreamUnanswered after CALL_CONTROL_REPLY_SECONDS with no reply, StreamUnreachable when
    the channel layer fails, and CallControlError with the stream's words when it refused.
    """
    layer = get_channel_layer()
    if layer is None:
        raise StreamUnreachable(STREAM_UNREACHABLE)
    sent = False
    try:
        async with asyncio.timeout(settings.CALL_CONTROL_REPLY_SECONDS):
            reply_to = await layer.new_channel()
            await layer.group_send(call_group_name(call_id), {**message, "reply_to": reply_to})
            sent = True
            reply = await layer.receive(reply_to)
    except TimeoutError as error:
        if not sent:
            raise StreamUnreachable(STREAM_UNREACHABLE) from error
        raise StreamUnanswered(STREAM_UNANSWERED) from error
    except Exception as error:  # channels-redis and redis-py errors: Redis is down or failing
        logger.warning("Call control for %s: channel layer failed: %r", call_id, error)
        raise StreamUnreachable(STREAM_UNREACHABLE) from error
    if reply.get("error"):
        raise CallControlError(str(reply["error"]))


def _stream_is_live(call_id: str) -> bool:
    """Whether a media stream of the call is open, by our records: something to ask."""
    return MediaStream.objects.filter(call_id=call_id, status=StreamStatus.STARTED).exists()


@database_sync_to_async
def _unanswered_record(call_id: str, action: str, actor: str, user: Any, error: str) -> None:
    call = Call.objects.filter(pk=call_id).first()
    if call is not None:
        data = {"action": action, "error": error}
        call_event_record(call=call, kind="stream_unanswered", actor=actor, user=user, data=data)


async def _ask_stream(
    call_id: str, message: dict[str, Any], action: str, actor: str, user: Any
) -> None:
    """`call_request`, with a failure written to the call's event log before it is raised."""
    try:
        await call_request(call_id, message)
    except (StreamUnanswered, StreamUnreachable) as error:
        await _unanswered_record(call_id, action, actor, user, str(error))
        raise


async def _tell_stream(
    call_id: str, message: dict[str, Any], action: str, actor: str, user: Any
) -> str:
    """Best effort on top of a REST action: "" if the stream confirmed or there is none,
    else the words to show beside the action's success."""
    if not await database_sync_to_async(_stream_is_live)(call_id):
        return ""
    try:
        await _ask_stream(call_id, message, action, actor, user)
    except CallControlError as error:
        return str(error)
    return ""


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
        # The end reason waits until Twilio has done it: a hang-up that fails must not
        # leave its reason on a call that later ends some other way.
        call.hangup_requested_at = timezone.now()
        call.save(update_fields=["hangup_requested_at"])
        call_event_record(call=call, kind="hangup", actor=actor, user=user, data={"reason": reason})
        return call


@database_sync_to_async
def _hangup_release(call_id: str, actor: str, user: Any, error: str) -> None:
    with transaction.atomic():
        call = Call.objects.select_for_update().get(pk=call_id)
        call.hangup_requested_at = None
        # The call may have ended meanwhile (the caller left); its reason was held back
        # for this hang-up, which did not happen: give it the reason it ended with.
        ended_meanwhile = not call.is_live and not call.end_reason
        if ended_meanwhile:
            call.end_reason = call_end_reason_by_status(call.status)
        call.save(update_fields=["hangup_requested_at", "end_reason"])
        call_event_record(
            call=call, kind="hangup_failed", actor=actor, user=user, data={"error": error}
        )
        if ended_meanwhile:
            call_outcome_update(call=call)  # it waited for this hang-up (hang_ups.py)


async def call_hangup(*, call_id: str, actor: str, reason: str, user: Any = None) -> ControlOutcome:
    """Hang up through Twilio's REST API, exactly once, then close the stream.

    `done` is False when someone else already hung up or the call had ended; Twilio's 20404
    (the caller got there first) counts as success. The hang-up is Twilio's: the stream's
    close is asked for on top, and a stream that does not confirm only adds a `stream_note`
    (Twilio closes the stream of a call it has completed).
    """
    call = await _hangup_claim(str(call_id), reason, actor, user)
    if call is None:
        return ControlOutcome(done=False)
    try:
        await telephony.call_complete(call.sid)
    except telephony.TelephonyError as error:
        await _hangup_release(str(call_id), actor, user, str(error))
        raise CallControlError(f"Hang-up failed: {error}") from error
    await database_sync_to_async(call_end_record)(
        call_id=str(call_id), reason=reason, actor=actor, hung_up=True
    )
    note = await _tell_stream(
        str(call_id), {"type": "call.close", "reason": reason}, "hangup", actor, user
    )
    return ControlOutcome(done=True, stream_note=note)


@database_sync_to_async
def _action_record(call_id: str, kind: str, actor: str, user: Any, data: dict) -> Call:
    call = _live_call(call_id)
    if not _stream_is_live(call_id):
        raise CallControlError(NO_STREAM[kind])
    call_event_record(call=call, kind=kind, actor=actor, user=user, data=data)
    return call


# Refusals of an action that needs the call's media stream, when it has none open.
NO_STREAM = {
    "clear": "This call has no live audio stream, so there is no audio to clear.",
    "play": "This call has no live audio stream to play into.",
    "say": "This call has no live audio stream, so the agent cannot speak on it.",
}


async def call_clear_audio(*, call_id: str, actor: str, user: Any = None) -> None:
    """Barge-in: drop the audio Twilio has buffered for the caller, at once.

    Returns once the stream confirmed; raises CallControlError (with its words) otherwise.
    """
    await _action_record(str(call_id), "clear", actor, user, {})
    await _ask_stream(str(call_id), {"type": "call.clear", "actor": actor}, "clear", actor, user)


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
    message = {"type": "call.play", "payload": payload, "label": label}
    await _ask_stream(str(call_id), message, "play", actor, user)


async def call_say(*, call_id: str, text: str, actor: str, user: Any = None) -> None:
    """Have the agent speak `text` on a live call, once the stream confirms it will."""
    text = text.strip()
    if not text:
        raise CallControlError("Type something for the agent to say.")
    await _action_record(str(call_id), "say", actor, user, {"text": text})
    await _ask_stream(str(call_id), {"type": "call.say", "text": text}, "say", actor, user)


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
    call: Call,
    target: TransferTarget,
    actor: str,
    user: Any,
    reason: str,
    error: str = "",
    mode: str = TransferMode.COLD,
    started: datetime | None = None,
) -> None:
    data = {
        "target": target.name,
        "number": str(target.phone_number),
        "reason": reason,
        "mode": mode,
    }
    if error:
        call_event_record(
            call=call, kind="transfer_failed", actor=actor, user=user, data={**data, "error": error}
        )
        return
    if mode == TransferMode.WARM:
        # The call is the person's only once they accept (calls.services.warm).
        call_event_record(call=call, kind="transfer", actor=actor, user=user, data=data)
        return
    with transaction.atomic():
        Call.objects.select_for_update().filter(pk=call.pk).first()
        # The dial can be over before this is written (a failed number answers at once):
        # a caller already back with the agent is not the person's.
        returned = CallEvent.objects.filter(
            call_id=call.pk, kind="transfer_returned", created_at__gte=started
        ).exists()
        if not returned:
            Call.objects.filter(pk=call.pk).update(
                transfer_target=target,
                transferred_to=str(target.phone_number),
                end_reason=EndReason.TRANSFERRED,
            )
        call.refresh_from_db()
        # Dated when it was asked of Twilio: before the return, if the dial came back first.
        call_event_record(call=call, kind="transfer", actor=actor, user=user, data=data, at=started)
        call_broadcast(call)


async def call_transfer(
    *,
    call_id: str,
    actor: str,
    target_name: str | None = None,
    user: Any = None,
    reason: str = "",
    mode: str | None = None,
) -> ControlOutcome:
    """Hand the caller to a person: replace the call's TwiML with a <Dial>.

    Twilio then ends the stream itself; the consumer is told first, so the `stop` that follows
    is read as a transfer, not a hang-up. `target_name=None` means the agent's default target;
    `mode` (cold or warm) defaults to the target's. A warm transfer announces the caller to
    the person, who accepts with a key or sends the caller back to the agent
    (calls.services.warm). The transfer is Twilio's: it goes ahead when the stream does not
    confirm, which only adds a `stream_note`.
    """
    call, target = await _transfer_prepare(str(call_id), target_name, actor, user)
    mode = mode or target.mode
    number = str(target.phone_number)
    document = (
        twiml.dial_warm(number, call_id=str(call.pk))
        if mode == TransferMode.WARM
        else twiml.dial(number)
    )
    started = timezone.now()
    message = {"type": "call.transferring", "target": target.name}
    note = await _tell_stream(str(call_id), message, "transfer", actor, user)
    try:
        await telephony.call_update_twiml(call.sid, document)
    except telephony.TelephonyError as error:
        await _transfer_finish(call, target, actor, user, reason, error=str(error), mode=mode)
        try:
            await call_send(str(call_id), {"type": "call.transfer_failed", "error": str(error)})
        except Exception as failure:  # the layer is down; the stream keeps `transferring`
            logger.warning("Call %s: could not tell the stream: %r", call.sid, failure)
        raise CallControlError(f"Transfer to {target.name} failed: {error}") from error
    await _transfer_finish(call, target, actor, user, reason, mode=mode, started=started)
    return ControlOutcome(done=True, stream_note=note, target=target)
