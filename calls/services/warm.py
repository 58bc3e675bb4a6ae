"""Warm transfers: the person called hears who is coming, and accepts with a key.

The flow (docs/twilio-rest.md#warm-transfer): `call_transfer` replaces the call's TwiML with
`twiml.dial_warm`; once the person answers, Twilio requests the whisper
(`warm_whisper_twiml`) for their leg, then its Gather's answer (`warm_whisper_answer`); when
their leg ends, the `<Dial action>` (`warm_dial_result`) says how. Unless they pressed 1 and
were bridged, the caller goes back to the agent on a new stream and the model is told why:
a transfer never drops the caller (calls.services.dial_outcomes).
"""

import logging

from django.db import transaction

from .. import twiml
from ..feed import call_broadcast
from ..models import Actor, Call, EndReason, Speaker
from .dial_outcomes import dial_not_taken_twiml, latest_transfer
from .transcripts import call_event_record
from .webhooks import call_end_record

logger = logging.getLogger(__name__)

# What the whisper quotes of the reason and of the caller's last words: a sentence, not a
# speech (and the document stays well within Twilio's limits).
WHISPER_QUOTE_MAX_CHARS = 300

def _clip(text: str) -> str:
    text = " ".join(text.split())
    if len(text) <= WHISPER_QUOTE_MAX_CHARS:
        return text
    return text[: WHISPER_QUOTE_MAX_CHARS - 1].rstrip() + "…"


def warm_whisper_announcement(call: Call) -> str:
    """Who is calling, why they are being put through, and what they last said."""
    transfer = latest_transfer(call)
    data = transfer.data if transfer is not None else {}
    agent = call.agent.name if call.agent_id else "the voice agent"
    caller = call.from_number if call.direction == "inbound" else call.to_number
    parts = [f"Transfer from {agent}: a caller from {caller or 'an unknown number'}."]
    reason = _clip(str(data.get("reason", "")))
    if reason:
        parts.append(f"Reason: {reason}.")
    last = call.transcript.filter(speaker=Speaker.CALLER).order_by("-offset_ms", "-id").first()
    if last is not None:
        parts.append(f"They last said: {_clip(last.text)}")
    return " ".join(parts)


def warm_whisper_twiml(*, call_id: str) -> str:
    """The whisper for the person called: the announcement in a Gather for their key."""
    call = Call.objects.select_related("agent").filter(pk=call_id).first()
    if call is None or not call.is_live:
        return twiml.hangup()  # the caller is gone: nobody to put through
    call_event_record(call=call, kind="transfer_answered", actor=Actor.TWILIO)
    return twiml.whisper(call_id=str(call.pk), announcement=warm_whisper_announcement(call))


def warm_whisper_answer(*, call_id: str, digits: str) -> str:
    """The person's key: 1 bridges the caller to them; anything else hangs up their leg."""
    with transaction.atomic():
        call = Call.objects.select_for_update().filter(pk=call_id).first()
        if call is None or not call.is_live:
            return twiml.hangup()
        if digits != twiml.WHISPER_ACCEPT_DIGIT:
            call_event_record(
                call=call, kind="transfer_declined", actor=Actor.TWILIO, data={"digits": digits}
            )
            return twiml.hangup()
        transfer = latest_transfer(call)
        data = transfer.data if transfer is not None else {}
        call.transferred_to = str(data.get("number", ""))[:32]
        call.transfer_target = (
            call.agent.transfer_targets.filter(name=data.get("target", "")).first()
            if call.agent_id
            else None
        )
        call.end_reason = EndReason.TRANSFERRED
        call.save(update_fields=["transferred_to", "transfer_target", "end_reason"])
        call_event_record(call=call, kind="transfer_accepted", actor=Actor.TWILIO, data=data)
        call_broadcast(call)
    return twiml.whisper_accepted()


def _accepted_since_transfer(call: Call) -> bool:
    transfer = latest_transfer(call)
    accepted = call.events.filter(kind="transfer_accepted")
    if transfer is not None:
        accepted = accepted.filter(pk__gt=transfer.pk)
    return accepted.exists()


def warm_dial_result(*, call_id: str, dial_status: str, duration_seconds: int | None) -> str:
    """The warm `<Dial>` is over: end the call if the person took it, else back to the agent.

    Twilio reports a leg that answered and then hung up at the whisper as `completed` like a
    real conversation; only our own record of the key pressed tells them apart.
    """
    call = Call.objects.select_related("agent").filter(pk=call_id).first()
    if call is None:
        return twiml.hangup()
    data = {"dial_status": dial_status, "duration_seconds": duration_seconds}
    if dial_status in ("completed", "answered") and _accepted_since_transfer(call):
        call_event_record(call=call, kind="transfer_ended", actor=Actor.TWILIO, data=data)
        call_end_record(call_id=call.pk, reason=EndReason.TRANSFERRED, actor=Actor.TWILIO)
        return twiml.hangup()
    return dial_not_taken_twiml(call=call, dial_status=dial_status, data=data)
