"""How a transfer's `<Dial>` ended, and the caller put back with the agent when nobody took it.

Twilio requests the `<Dial action>` once the person's leg is over, with DialCallStatus
(docs/twilio-rest.md#dial-outcomes). A cold transfer that was answered ends the call; one
that was busy, unanswered or failed puts the caller back with the agent on a new stream,
like a warm transfer the person did not accept: a transfer never drops the caller.
"""

import logging
from typing import Any

from .. import twiml
from ..models import Actor, Call, CallEvent, EndReason
from .outcomes import call_outcome_update
from .resume import call_resume_twiml
from .transcripts import call_event_record
from .webhooks import call_end_record

logger = logging.getLogger(__name__)

# Why the person did not take the call, by DialCallStatus, as the model is told it.
NOT_TAKEN = {
    "busy": "the line was busy",
    "no-answer": "nobody answered",
    "failed": "the call could not be placed",
    "canceled": "the call was cancelled",
    "completed": "they did not accept the call",
    "answered": "they did not accept the call",
}
# The statuses of a `<Dial>` whose person never answered, with the caller still there
# (`canceled` is the caller hanging up while it rang: nobody to bring back).
UNANSWERED = frozenset({"busy", "no-answer", "failed"})


def latest_transfer(call: Call) -> CallEvent | None:
    return call.events.filter(kind="transfer").order_by("-created_at", "-id").first()


def dial_not_taken_twiml(*, call: Call, dial_status: str, data: dict[str, Any]) -> str:
    """Nobody took the transfer: the caller goes back to the agent, and the model hears why."""
    transfer = latest_transfer(call)
    target = str(transfer.data.get("target", "")) if transfer is not None else ""
    why = NOT_TAKEN.get(dial_status, f"the dial ended with “{dial_status or 'no status'}”")
    call_event_record(
        call=call, kind="transfer_returned", actor=Actor.TWILIO, data={**data, "why": why}
    )
    logger.info("Call %s: transfer to %s not taken (%s)", call.sid, target, why)
    # A cold transfer marked the call as the person's when it was put through: it is not.
    Call.objects.filter(pk=call.pk, end_reason=EndReason.TRANSFERRED).update(
        end_reason="", transferred_to="", transfer_target=None
    )
    note = (
        f"The transfer to {target or 'a person'} did not go through: {why}. The caller is "
        "back on the line with you: tell them, and offer to help or to try again later."
    )
    return call_resume_twiml(call=call, reason=note)


def dial_outcome_record(*, call_sid: str, dial_status: str, duration_seconds: int | None) -> str:
    """A cold transfer's `<Dial>` is over: the call ends if the person answered, else the
    caller is back with the agent (a call already over just gets its outcome)."""
    call = Call.objects.filter(sid=call_sid).first()
    if call is None:
        return twiml.hangup()
    data = {"dial_status": dial_status, "duration_seconds": duration_seconds}
    if dial_status in UNANSWERED and call.is_live:
        return dial_not_taken_twiml(call=call, dial_status=dial_status, data=data)
    call_event_record(call=call, kind="transfer_ended", actor=Actor.TWILIO, data=data)
    ended = call_end_record(call_id=call.pk, reason=EndReason.TRANSFERRED, actor=Actor.TWILIO)
    if ended is not None:
        # Ended already (a status callback came first): the dial's result still counts.
        call_outcome_update(call=ended)
    return twiml.hangup()
