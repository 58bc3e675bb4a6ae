"""A call handed from one server process to another: the old stream closed by a draining
process, and the new `<Connect><Stream>` Twilio gets from our `<Connect action>`.

The drain records the handover before it closes the socket; the action, served by whichever
process Twilio reaches, finds it and answers with a fresh stream token for the same call
(`call_resume`). Once per handed-over stream, and only for a call still live that nobody is
hanging up: a call that really ended gets `<Hangup/>` as before.
"""

import os
import socket
from typing import Any

from ..models import Actor, Call, CallEvent
from .resume import RESUME_EVENT, call_resume
from .transcripts import call_event_record

HANDOVER_EVENT = "stream_handover"


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


def _handed_over_stream(call: Call) -> dict[str, Any] | None:
    """The call's last stream, if it was handed over and not resumed yet."""
    last = call.streams.order_by("-started_at", "-id").first()
    if last is None:
        return None
    events = CallEvent.objects.filter(call=call, data__stream_sid=last.sid)
    if not events.filter(kind=HANDOVER_EVENT).exists():
        return None
    if events.filter(kind=RESUME_EVENT).exists():
        return None  # a token was already issued for it; a retried action gets none
    return {"stream_sid": last.sid}


def stream_resume_twiml(*, call_sid: str) -> str | None:
    """A new `<Connect><Stream>` if the call's last stream was handed over; None otherwise."""
    call_id = Call.objects.filter(sid=call_sid).values_list("pk", flat=True).first()
    if call_id is None:
        return None
    return call_resume(
        call_id=call_id,
        why="its last stream was handed over",
        actor=Actor.TWILIO,
        prepare=_handed_over_stream,
    )
