"""The way back to the agent: a new `<Connect><Stream>` for a call that is still up.

Three things put a live call on a new stream, each with its own conditions and event:
a stream a draining process handed over (the `<Connect action>`, services/handover.py), a
stream a dead process left (the reconciler's REST TwiML update, services/reconcile.py), and
a warm transfer nobody took (the `<Dial action>`, services/warm.py). All of them go through
`call_resume`: the stream Twilio opens with its TwiML carries a fresh single-use token for
the same CallSid, so it attaches to the same Call, and optionally a `resume` parameter saying
why, which the new agent session tells the model instead of greeting the caller again
(docs/twilio-rest.md#resuming-a-call-on-a-new-stream).
"""

import logging
from collections.abc import Callable
from typing import Any

from django.db import transaction

from .. import security, twiml
from ..feed import call_broadcast
from ..models import Actor, Call
from .transcripts import call_event_record

logger = logging.getLogger(__name__)

# The stream parameter that carries why a call came back to the agent.
RESUME_PARAMETER = "resume"
# Twilio carries custom parameters in the stream's `start`; keep them short.
RESUME_NOTE_MAX_CHARS = 400
# The event of a call put back on a new stream (the reconciler records its own).
RESUME_EVENT = "stream_resume"

# Runs under the call's lock: the caller's own conditions and changes. Returns more data
# for the event, or None to refuse the resume.
Prepare = Callable[[Call], dict[str, Any] | None]


def call_resume(
    *,
    call_id: Any,
    why: str,
    note: str = "",
    event_kind: str = RESUME_EVENT,
    actor: str = Actor.SYSTEM,
    data: dict[str, Any] | None = None,
    prepare: Prepare | None = None,
) -> str | None:
    """TwiML that puts a live call on a new stream; None if the call is not to be resumed.

    Refused when the call has ended or a hang-up was asked for, or when `prepare` says so.
    Otherwise a fresh stream token is issued (its nonce stored on the call), the event
    `event_kind` recorded with `data` (and what `prepare` returned), and the call broadcast.
    `note`, if any, travels as the stream's `resume` parameter; `why` goes to the log.
    """
    with transaction.atomic():
        call = Call.objects.select_for_update().filter(pk=call_id).first()
        if call is None or not call.is_live or call.hangup_requested_at is not None:
            return None
        extra = {} if prepare is None else prepare(call)
        if extra is None:
            return None
        token, call.stream_nonce = security.stream_token_issue(call.sid)
        call.save(update_fields=["stream_nonce"])
        call_event_record(call=call, kind=event_kind, actor=actor, data={**(data or {}), **extra})
        call_broadcast(call)
    logger.info("Call %s: resuming on a new stream (%s)", call.sid, why)
    parameters = {RESUME_PARAMETER: note[:RESUME_NOTE_MAX_CHARS]} if note else None
    return twiml.connect_stream(token=token, parameters=parameters)


def call_resume_twiml(*, call: Call, reason: str) -> str:
    """TwiML that puts the caller back with the agent after a warm transfer nobody took.

    `reason` is what the model is told when the new session starts (in place of the
    greeting). A call that has ended meanwhile gets `<Hangup/>`: nobody to resume.
    """
    document = call_resume(
        call_id=call.pk, why="the transfer was not taken", note=reason, data={"reason": reason}
    )
    return document or twiml.hangup()
