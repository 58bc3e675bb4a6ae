"""Whether our own hang-up of a call is still on its way.

Our REST hang-up records its reason (staff hung up, a voicemail left) once Twilio has done
it. Twilio's status callback, the stream's stop and the reconciler can all see the call end
first. While the hang-up is in flight they leave the reason to it, and the outcome waits for
it; for HANG_UP_RECORD_WAIT_S at most, as the process hanging up may die in between.
"""

from datetime import datetime, timedelta

from django.db.models import Q

from ..models import Call

HANG_UP_RECORD_WAIT_S = 30


def hang_up_in_flight(call: Call, now: datetime) -> bool:
    """Our hang-up of `call` is with Twilio and has not yet recorded why it hung up."""
    return (
        not call.end_reason
        and call.hangup_requested_at is not None
        and now - call.hangup_requested_at < timedelta(seconds=HANG_UP_RECORD_WAIT_S)
    )


def hang_ups_in_flight(now: datetime, *, through: str = "") -> Q:
    """`hang_up_in_flight` as a filter, on calls or (`through="call__"`) on what has one."""
    return Q(
        **{
            f"{through}end_reason": "",
            f"{through}hangup_requested_at__gt": now - timedelta(seconds=HANG_UP_RECORD_WAIT_S),
        }
    )
