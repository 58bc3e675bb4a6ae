"""The way back to the agent: a new `<Connect><Stream>` for a call that is still up.

Used where Twilio asks us what the call does next and the answer is "back to the agent":
a warm transfer nobody took (the `<Dial action>`). The stream Twilio opens with it carries a
fresh single-use token for the same CallSid, so it attaches to the same Call, and a
`resume` parameter saying why, which the new agent session tells the model instead of
greeting the caller again (docs/twilio-rest.md#resuming-a-call-on-a-new-stream).
"""

from django.db import transaction

from .. import security, twiml
from ..feed import call_broadcast
from ..models import Actor, Call
from .transcripts import call_event_record

# The stream parameter that carries why a call came back to the agent.
RESUME_PARAMETER = "resume"
# Twilio carries custom parameters in the stream's `start`; keep them short.
RESUME_NOTE_MAX_CHARS = 400


def call_resume_twiml(*, call: Call, reason: str) -> str:
    """TwiML that puts the caller back with the agent on a new stream of the same call.

    `reason` is what the model is told when the new session starts (in place of the
    greeting). A call that has ended meanwhile gets `<Hangup/>`: nobody to resume.
    """
    with transaction.atomic():
        locked = Call.objects.select_for_update().filter(pk=call.pk).first()
        if locked is None or not locked.is_live:
            return twiml.hangup()
        token, locked.stream_nonce = security.stream_token_issue(locked.sid)
        locked.save(update_fields=["stream_nonce"])
        call_event_record(
            call=locked, kind="stream_resume", actor=Actor.SYSTEM, data={"reason": reason}
        )
        call_broadcast(locked)
    note = reason[:RESUME_NOTE_MAX_CHARS]
    return twiml.connect_stream(token=token, parameters={RESUME_PARAMETER: note})
