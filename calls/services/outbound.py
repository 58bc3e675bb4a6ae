"""Placing a call: an agent rings a number."""

from typing import Any

import phonenumbers
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import transaction

from agents.models import Agent, AnsweringMachine

from .. import security, telephony
from ..feed import call_broadcast
from ..models import Actor, Call, Direction
from .control import CallControlError
from .transcripts import call_event_record

# What Twilio is asked to detect for each agent setting (docs/twilio-rest.md#answering-
# machine-detection): to hang up on a machine, knowing it is one is enough (`Enable`
# decides soonest, with `machine_start`); to leave a message, wait for the greeting's end.
MACHINE_DETECTION = {
    AnsweringMachine.DETECT: "Enable",
    AnsweringMachine.VOICEMAIL: "DetectMessageEnd",
}


@database_sync_to_async
def _outbound_record(
    sid: str,
    agent: Agent,
    to_number: str,
    user: Any,
    machine_detection: str,
    variables: dict[str, str],
    source: dict[str, Any],
) -> Call:
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
                "machine_detection": machine_detection,
                "prompt_variables": variables,
            },
        )
        call_event_record(
            call=call,
            kind="outbound_placed",
            actor=Actor.STAFF if user else Actor.SYSTEM,
            user=user,
            data={"to": to_number, "agent": agent.name, **source},
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


async def call_place_outbound(
    *,
    agent: Agent,
    to_number: str,
    user: Any = None,
    variables: dict[str, str] | None = None,
    source: dict[str, Any] | None = None,
) -> Call:
    """Have `agent` call `to_number`. Twilio fetches our answer webhook once it picks up.

    `variables` fill the agent's {placeholders} on this call; `source` (e.g. the campaign
    and contact) is added to the `outbound_placed` event.
    """
    to_number = e164(to_number)
    if not agent.is_active:
        raise CallControlError(f"{agent.name} is not active.")
    if not agent.phone_number:
        raise CallControlError(f"{agent.name} has no phone number to call from.")
    machine_detection = MACHINE_DETECTION.get(agent.answering_machine, "")
    try:
        sid = await telephony.call_create(
            to=to_number,
            from_=str(agent.phone_number),
            url=security.public_url("/twilio/voice/incoming"),
            status_callback=security.public_url("/twilio/voice/status"),
            machine_detection=machine_detection,
            amd_callback=security.public_url("/twilio/voice/amd") if machine_detection else "",
        )
    except telephony.TelephonyError as error:
        raise CallControlError(f"Twilio did not place the call: {error}") from error
    return await _outbound_record(
        sid, agent, to_number, user, machine_detection, dict(variables or {}), dict(source or {})
    )
