"""A call handed from one server process to another: the old stream closed by a draining
process, and the new `<Connect><Stream>` Twilio gets from our `<Connect action>`.

The drain records the handover before it closes the socket; the action, served by whichever
process Twilio reaches, finds it and answers with a fresh stream token for the same call.
Once per handed-over stream, and only for a call still live that nobody is hanging up: a
call that really ended gets `<Hangup/>` as before.
"""

import logging
import os
import socket

from django.db import transaction

from .. import security
from ..models import Actor, Call, CallEvent
from .transcripts import call_event_record

logger = logging.getLogger(__name__)

HANDOVER_EVENT = "stream_handover"
RESUME_EVENT = "stream_resume"


def stream_handover_record(*, call_id: str, stream_sid: str) -> None:
    """This process is shutting down and closes the stream so that the call moves on."""
    call = Call.objects.filter(pk=call_id).first()
    if call is not None:
        call_event_record(
            call=call,
            kind=HANDOVER_EVENT,
            actor=Actor.SYSTEM,
            data={"stream_sid": stream_sid, "process": f"{socket.gethostname()}:{os.getpid()}"},
        )


def stream_resume_token(*, call_sid: str) -> str | None:
    """A fresh stream token if the call's last stream was handed over; None otherwise."""
    with transaction.atomic():
        call = Call.objects.select_for_update().filter(sid=call_sid).first()
        if call is None or not call.is_live or call.hangup_requested_at is not None:
            return None
        last = call.streams.order_by("-started_at", "-id").first()
        if last is None:
            return None
        events = CallEvent.objects.filter(call=call, data__stream_sid=last.sid)
        if not events.filter(kind=HANDOVER_EVENT).exists():
            return None
        if events.filter(kind=RESUME_EVENT).exists():
            return None  # a token was already issued for it; a retried action gets none
        token, call.stream_nonce = security.stream_token_issue(call_sid)
        call.save(update_fields=["stream_nonce"])
        call_event_record(
            call=call, kind=RESUME_EVENT, actor=Actor.TWILIO, data={"stream_sid": last.sid}
        )
    logger.info("Call %s: resuming on a new stream after %s was handed over", call_sid, last.sid)
    return token
