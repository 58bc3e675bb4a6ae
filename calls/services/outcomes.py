"""A finished call's outcome, stored on the call, and its post-call analysis queued.

Called wherever a call's record ends (status callbacks, our own end records, the <Dial
action>, the reconciler); the derivation itself is `calls.outcomes.outcome_derive`.
"""

from datetime import datetime

from django.db.models import QuerySet
from django.utils import timezone

from ..models import TERMINAL_STATUSES, Call, CallEvent
from ..outcomes import OUTCOME_EVENT_KINDS, outcome_derive
from .analysis import analysis_enqueue
from .hang_ups import hang_up_in_flight


def call_outcome_update(*, call: Call, analyse: bool = True) -> bool:
    """Derive `call`'s outcome from its record and store it if it changed; queue its
    analysis the first time it gets one. Returns whether it changed.

    Not while our hang-up is in flight: its reason decides the outcome, and it derives it
    once recorded (call_end_record).
    """
    if hang_up_in_flight(call, timezone.now()):
        return False
    events = CallEvent.objects.filter(call_id=call.pk, kind__in=OUTCOME_EVENT_KINDS).order_by(
        "created_at", "id"
    )
    derived = outcome_derive(
        status=call.status,
        end_reason=call.end_reason,
        events=events.values_list("kind", "data"),
    )
    if derived is None:
        return False
    detail = derived.detail[: Call._meta.get_field("outcome_detail").max_length]
    if (call.outcome, call.outcome_detail) == (derived.outcome, detail):
        return False
    first = not call.outcome
    call.outcome, call.outcome_detail = derived.outcome, detail
    Call.objects.filter(pk=call.pk).update(outcome=call.outcome, outcome_detail=detail)
    if first and analyse:
        analysis_enqueue(call_id=call.pk)
    return True


def call_outcome_refresh(*, call_id: str) -> bool:
    """An event that bears on the outcome was written: derive it again if the call has ended.

    A session's events are queued, so one (the voicemail left, the limit reached) can land
    after Twilio's status callback has ended the call and given it an outcome.
    """
    call = Call.objects.filter(pk=call_id, status__in=TERMINAL_STATUSES).first()
    return call is not None and call_outcome_update(call=call)


def calls_outcome_backfill(*, calls: QuerySet[Call], since: datetime | None = None) -> int:
    """Derive the outcome of finished calls that have none (or re-derive it); returns how
    many changed. Analyses are not queued here: `analyze_calls` does that itself."""
    if since is not None:
        calls = calls.filter(created_at__gte=since)
    changed = 0
    for call in calls.iterator(chunk_size=500):
        changed += call_outcome_update(call=call, analyse=False)
    return changed
