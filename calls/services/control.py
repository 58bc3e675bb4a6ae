"""Call control: one idempotent path per action (hang up, clear, play, say, transfer),
whoever triggers it, delivered to the call's stream consumer through the channel layer."""

import asyncio
import base64
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import transaction
from django.utils import timezone

from agents.models import TransferTarget
from callmedia import audio

from .. import telephony, twiml
from ..feed import call_broadcast
from ..models import Call, EndReason, call_group_name
from .transcripts import call_event_record
from .webhooks import call_end_reason_by_status, call_end_record


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
        if not call.is_live and not call.end_reason:
            call.end_reason = call_end_reason_by_status(call.status)
        call.save(update_fields=["hangup_requested_at", "end_reason"])
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
    await database_sync_to_async(call_end_record)(
        call_id=str(call_id), reason=reason, actor=actor, hung_up=True
    )
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
