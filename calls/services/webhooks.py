"""What Twilio's webhooks tell us about a call: answering it, its status callbacks, and how
its <Connect> or <Dial> ended."""

import logging
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from agents.models import Agent

from .. import security, twiml
from ..feed import call_broadcast
from ..models import (
    STATUS_RANK,
    TERMINAL_STATUSES,
    Actor,
    Call,
    CallStatus,
    Direction,
    EndReason,
    MediaStream,
    StreamStatus,
)
from .handover import stream_resume_twiml
from .hang_ups import hang_up_in_flight
from .outcomes import call_outcome_update
from .transcripts import call_event_record

logger = logging.getLogger(__name__)

_END_REASON_BY_STATUS = {
    CallStatus.COMPLETED: EndReason.CALLER_HANGUP,
    CallStatus.BUSY: EndReason.FAILED,
    CallStatus.FAILED: EndReason.FAILED,
    CallStatus.NO_ANSWER: EndReason.FAILED,
    CallStatus.CANCELED: EndReason.FAILED,
}


def call_end_reason_by_status(status: str) -> str:
    """Why a call ended, as far as its final status says."""
    return _END_REASON_BY_STATUS.get(status, EndReason.CALLER_HANGUP)


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
    reached Twilio). A call that has ended gets <Hangup/> and no token: the request is a
    replay, and a stream would reopen the finished call.
    """
    with transaction.atomic():
        call, created = _call_locked_or_created(
            call_sid=call_sid,
            account_sid=account_sid,
            from_number=from_number,
            to_number=to_number,
            direction=direction,
            status=status,
        )
        if not created and not call.is_live:
            call_event_record(
                call=call, kind="answer_refused", actor=Actor.TWILIO, data={"status": call.status}
            )
            logger.warning("Call %s has ended (%s): answered <Hangup/>", call_sid, call.status)
            return twiml.hangup()
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


def _call_locked_or_created(
    *,
    call_sid: str,
    account_sid: str,
    from_number: str,
    to_number: str,
    direction: str,
    status: str,
) -> tuple[Call, bool]:
    """The call's row, locked until the transaction ends; or a new one. True if new.

    A call we place is recorded by the process that placed it once Twilio has given its
    sid, and Twilio may ask for its TwiML meanwhile, at any process: the two inserts of the
    same sid race. The loser (on PostgreSQL, after waiting for the winner's commit) takes
    the winner's row, as if it had found it first.
    """
    call = Call.objects.select_for_update().filter(sid=call_sid).first()
    if call is not None:
        return call, False
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
    try:
        with transaction.atomic():  # a savepoint: losing the race leaves ours usable
            call.save(force_insert=True)
    except IntegrityError:
        found = Call.objects.select_for_update().filter(sid=call_sid).first()
        if found is None:
            raise  # not the sid's uniqueness
        return found, False
    return call, True


def _end_reason(call: Call, status: str) -> str:
    """Why a call Twilio says has ended did end, as far as we know.

    If a dead process still held its stream, the caller was hearing silence: the call
    ended while the server was down, whoever hung up. Those streams are closed here.
    """
    lost = MediaStream.objects.filter(call=call).lost()
    if not lost.exists():
        return _END_REASON_BY_STATUS[status]
    MediaStream.objects.filter(pk__in=list(lost.values_list("pk", flat=True))).update(
        status=StreamStatus.ERROR, stopped_at=timezone.now(), last_error="server process lost"
    )
    return EndReason.SERVER_LOST


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
                reason = _end_reason(call, status)  # also closes streams a dead process held
                # While our hang-up is with Twilio, its "completed" is that hang-up: the
                # reason is the hang-up's to write, once it has taken effect (or failed).
                if not hang_up_in_flight(call, at):
                    call.end_reason = call.end_reason or reason
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
        call_outcome_update(call=call)
        call_broadcast(call)
    return call


def call_end_record(
    *, call_id: str, reason: str, actor: str, hung_up: bool = False
) -> Call | None:
    """We know the call is over (hung up through REST, the caller left, the dial ended).

    Twilio's status callback says so too, but only where the number has one configured;
    this keeps the live view right without it. The callback may still fill the duration.

    `hung_up`: our REST hang-up has taken effect, and `reason` is its reason. Any other
    ending seen while that hang-up was with Twilio (its own `stop`, its status callback)
    leaves the reason to it.
    """
    with transaction.atomic():
        call = Call.objects.select_for_update().filter(pk=call_id).first()
        if call is None:
            return call
        if not call.is_live:
            if hung_up and not call.end_reason:
                # Twilio's "completed" for this hang-up came first, without a reason: the
                # outcome it gave was provisional.
                call.end_reason = reason
                call.save(update_fields=["end_reason"])
                call_outcome_update(call=call)
                call_broadcast(call)
            return call
        call.status = CallStatus.COMPLETED
        call.ended_at = timezone.now()
        if hung_up or not hang_up_in_flight(call, call.ended_at):
            call.end_reason = call.end_reason or reason
        call.save(update_fields=["status", "ended_at", "end_reason"])
        call_event_record(call=call, kind="ended", actor=actor, data={"reason": call.end_reason})
        call_outcome_update(call=call)
        call_broadcast(call)
    return call


def connect_ended_record(*, call_sid: str) -> str:
    """Twilio ran <Connect>'s action: our stream closed and no transfer replaced the TwiML.

    A stream a draining process handed over resumes on a new stream; any other ends the call.
    """
    resumed = stream_resume_twiml(call_sid=call_sid)
    if resumed is not None:
        return resumed
    call = Call.objects.filter(sid=call_sid).first()
    if call is not None:
        call_event_record(call=call, kind="stream_closed", actor=Actor.TWILIO)
        call_end_record(call_id=call.pk, reason=EndReason.AGENT_ENDED, actor=Actor.TWILIO)
    return twiml.hangup()
