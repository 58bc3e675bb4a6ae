"""Ghost calls: records that say a call is live while nothing serves it, set right.

A server process that dies mid-call (SIGKILL, a crash, a lost machine) leaves its calls
`in-progress` with a stream `started` that no one holds; a call answered but never
streamed stays `ringing`, an outbound call never answered stays `queued`. The reconciler
finds them (a lost stream, or no stream and no news for a grace period), asks Twilio for
the call's status, and either closes the record with Twilio's truth or, when Twilio says
the caller is still there, resumes the call on a new stream: a REST TwiML update with a new
`<Connect><Stream>` and a fresh single-use token for the same CallSid, so the new stream
attaches to the same Call record.

One reconciler works at a time (`reconcile_lease_claim`), and a call is worked by one at a
time even so (`call_reconcile_claim`, a conditional UPDATE): both hold on SQLite and
PostgreSQL alike.
"""

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from .. import telephony
from ..feed import call_broadcast
from ..models import (
    LIVE_STATUSES,
    STATUS_RANK,
    TERMINAL_STATUSES,
    Actor,
    Call,
    CallEvent,
    CallStatus,
    EndReason,
    MediaStream,
    ReconcilerLease,
    StreamStatus,
)
from .control import CallControlError, call_hangup
from .hang_ups import hang_up_in_flight
from .liveness import processes_prune
from .outcomes import call_outcome_update
from .resume import call_resume
from .transcripts import call_event_record
from .webhooks import call_status_update

logger = logging.getLogger(__name__)

LEASE_ID = 1
# Calls looked at in one pass (oldest first); the rest wait for the next pass.
PASS_MAX_CALLS = 500
# Twilio requests in flight at once during a pass.
PASS_CONCURRENCY = 8
# A transferred call is with a person and has no stream of ours: Twilio is asked about it
# again only this often, until it ends.
TRANSFERRED_RECHECK_SECONDS = 300.0
# New streams asked for without one connecting, before the call is hung up instead.
MAX_RESUMES = 3
# The stream's record when its process died holding it.
LOST_STREAM_ERROR = "server process lost"
# Twilio's statuses of a call that has not ended.
TWILIO_LIVE_STATUSES = frozenset({"queued", "initiated", "ringing", "in-progress"})


class Outcome(StrEnum):
    SKIPPED = "skipped"  # another reconciler has it, it ended meanwhile, or it streams again
    RESUMED = "resumed"
    ENDED = "ended"
    STILL_LIVE = "still_live"  # Twilio says it is ringing, queued, or with a person
    DEFERRED = "deferred"  # Twilio could not be asked, or refused the resume: next pass
    HUNG_UP = "hung_up"  # resumed too often with no stream: hung up
    FAILED = "failed"


def _claim_seconds() -> float:
    # One GET and one update, each bounded by the REST timeout, and some room.
    return 2 * settings.TWILIO_HTTP_TIMEOUT_SECONDS + settings.RECONCILE_INTERVAL_SECONDS


def lease_seconds() -> float:
    """How long a reconciler's lease lasts; it renews it every pass."""
    return 2 * settings.RECONCILE_INTERVAL_SECONDS


# --- who works ------------------------------------------------------------------------------


def reconcile_lease_claim(*, holder: str, seconds: float) -> bool:
    """Take (or renew) the one reconciler lease for `seconds`; False if another holds it."""
    now = timezone.now()
    if not ReconcilerLease.objects.filter(pk=LEASE_ID).exists():
        try:
            with transaction.atomic():
                ReconcilerLease.objects.create(pk=LEASE_ID, holder="", expires_at=now)
        except IntegrityError:
            pass  # another reconciler created it first
    taken = (
        ReconcilerLease.objects.filter(pk=LEASE_ID)
        .filter(Q(expires_at__lte=now) | Q(holder=holder))
        .update(holder=holder, expires_at=now + timedelta(seconds=seconds))
    )
    return bool(taken)


def reconcile_lease_release(*, holder: str) -> None:
    ReconcilerLease.objects.filter(pk=LEASE_ID, holder=holder).update(expires_at=timezone.now())


def call_reconcile_claim(*, call_id: str, seconds: float) -> Call | None:
    """Claim a live call for one reconciler for `seconds`; None if another has it."""
    now = timezone.now()
    claimed = (
        Call.objects.filter(pk=call_id, status__in=LIVE_STATUSES, ended_at__isnull=True)
        .filter(Q(reconcile_after__isnull=True) | Q(reconcile_after__lte=now))
        .update(reconcile_after=now + timedelta(seconds=seconds))
    )
    return Call.objects.filter(pk=call_id).first() if claimed else None


def call_reconcile_defer(*, call_id: str, seconds: float) -> None:
    """Look at the call again in `seconds` at the earliest."""
    later = timezone.now() + timedelta(seconds=seconds)
    Call.objects.filter(pk=call_id).update(reconcile_after=later)


# --- what to look at ------------------------------------------------------------------------


def reconcile_candidates(*, now: datetime | None = None, limit: int = PASS_MAX_CALLS) -> list[str]:
    """Live calls nothing serves: a lost stream, or no stream and no news for the grace period.

    "No news" is no stream stopped and no event logged within the grace period, so a call
    being answered, handed to a new stream or just resumed is left alone meanwhile.
    """
    now = now or timezone.now()
    quiet_before = now - timedelta(seconds=settings.RECONCILE_UNANSWERED_GRACE_SECONDS)
    lost = MediaStream.objects.lost(now).filter(call=OuterRef("pk"))
    streaming = MediaStream.objects.filter(call=OuterRef("pk")).filter(
        Q(status=StreamStatus.STARTED) | Q(stopped_at__gte=quiet_before)
    )
    news = CallEvent.objects.filter(call=OuterRef("pk"), created_at__gte=quiet_before)
    calls = (
        Call.objects.filter(status__in=LIVE_STATUSES, ended_at__isnull=True)
        .filter(Q(reconcile_after__isnull=True) | Q(reconcile_after__lte=now))
        .filter(
            Exists(lost) | (Q(created_at__lt=quiet_before) & ~Exists(streaming) & ~Exists(news))
        )
        .order_by("created_at")
    )
    return [str(pk) for pk in calls.values_list("pk", flat=True)[:limit]]


@dataclass(frozen=True)
class CallState:
    """What our records say about a claimed call."""

    sid: str
    status: str
    live_stream: bool  # a stream is held by a living process: nothing to do
    transferred: bool
    hangup_requested: bool
    resumes: int  # new streams asked for since the last one connected


def _call_state(call_id: str) -> CallState | None:
    call = Call.objects.filter(pk=call_id).first()
    if call is None:
        return None
    now = timezone.now()
    started = MediaStream.objects.filter(call=call, status=StreamStatus.STARTED)
    connected = (
        CallEvent.objects.filter(call=call, kind="stream_connected")
        .order_by("-created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    resumes = CallEvent.objects.filter(call=call, kind="resume_requested")
    if connected is not None:
        resumes = resumes.filter(created_at__gt=connected)
    return CallState(
        sid=call.sid,
        status=call.status,
        live_stream=started.exclude(pk__in=started.lost(now).values("pk")).exists(),
        transferred=bool(call.transferred_to) or call.end_reason == EndReason.TRANSFERRED,
        hangup_requested=call.hangup_requested_at is not None,
        resumes=resumes.count(),
    )


# --- closing a call with Twilio's truth -----------------------------------------------------


def _streams_lost_close(call: Call, now: datetime) -> list[str]:
    """Close the call's streams a dead process left started."""
    streams = MediaStream.objects.filter(call=call).lost(now)
    sids = list(streams.values_list("sid", flat=True))
    MediaStream.objects.filter(sid__in=sids).update(
        status=StreamStatus.ERROR, stopped_at=now, last_error=LOST_STREAM_ERROR
    )
    return sids


def call_reconciled_end(
    *,
    call_id: str,
    twilio_call: telephony.TwilioCall | None,
    actor: str,
    user: Any = None,
    kind: str = "reconciled",
) -> Call | None:
    """Close a live call's record as Twilio says it ended (None: Twilio does not know it).

    The status and duration are Twilio's; the end reason says what we know: the call ended
    while the server was down (never "caller hung up", which nobody saw), or Twilio does
    not know the call. A reason already recorded (a transfer, a staff hang-up) stays.
    """
    now = timezone.now()
    with transaction.atomic():
        call = Call.objects.select_for_update().filter(pk=call_id).first()
        if call is None or not call.is_live:
            return call
        if twilio_call is None:
            status, reason = CallStatus.COMPLETED, EndReason.UNKNOWN_TO_TWILIO
        else:
            status = twilio_call.status if twilio_call.status in TERMINAL_STATUSES else "failed"
            reason = EndReason.SERVER_LOST if status == CallStatus.COMPLETED else EndReason.FAILED
            if twilio_call.duration_seconds is not None:
                call.duration_seconds = twilio_call.duration_seconds
        call.status = status
        call.ended_at = call.ended_at or (twilio_call and twilio_call.end_time) or now
        if not hang_up_in_flight(call, now):  # else Twilio's "completed" may be that hang-up
            call.end_reason = call.end_reason or reason
        call.save()
        # Every stream of an ended call is over, whoever held it.
        MediaStream.objects.filter(call=call, status=StreamStatus.STARTED).update(
            status=StreamStatus.ERROR, stopped_at=now, last_error=LOST_STREAM_ERROR
        )
        call_event_record(
            call=call,
            kind=kind,
            actor=actor,
            user=user,
            data={
                "twilio_status": twilio_call.status if twilio_call else "unknown to Twilio",
                "reason": call.end_reason,
                "duration_seconds": call.duration_seconds,
            },
        )
        call_outcome_update(call=call)
        call_broadcast(call)
    return call


# --- resuming a call on a new stream --------------------------------------------------------


def call_resume_prepare(*, call_id: str) -> tuple[str, str] | None:
    """A new `<Connect><Stream>` for a live call whose stream is gone: (CallSid, TwiML).

    The token is fresh and single-use, for the same CallSid, so the stream Twilio opens
    with it attaches to this Call record (`call_resume`). Streams a dead process left
    started are closed, and a call not yet answered in our records is now in progress.
    """
    now = timezone.now()
    resumed: list[Call] = []

    def prepare(call: Call) -> dict[str, Any]:
        if STATUS_RANK.get(call.status, 0) < STATUS_RANK[CallStatus.IN_PROGRESS]:
            call.status, call.answered_at = CallStatus.IN_PROGRESS, call.answered_at or now
            call.save(update_fields=["status", "answered_at"])
        resumed.append(call)
        return {"lost_streams": _streams_lost_close(call, now)}

    document = call_resume(
        call_id=call_id,
        why="its server process was lost",
        event_kind="resume_requested",
        prepare=prepare,
    )
    return None if document is None else (resumed[0].sid, document)


def _resume_failed_record(call_id: str, error: str) -> None:
    call = Call.objects.filter(pk=call_id).first()
    if call is not None:
        call_event_record(
            call=call, kind="resume_failed", actor=Actor.SYSTEM, data={"error": error}
        )


_claim = database_sync_to_async(call_reconcile_claim)
_defer = database_sync_to_async(call_reconcile_defer)
_state = database_sync_to_async(_call_state)
_end = database_sync_to_async(call_reconciled_end)
_resume_prepare = database_sync_to_async(call_resume_prepare)
_resume_failed = database_sync_to_async(_resume_failed_record)
_status_update = database_sync_to_async(call_status_update)


async def call_reconcile(*, call_id: str) -> Outcome:
    """Ask Twilio about one call nothing serves, and resume it or close it."""
    if await _claim(call_id=call_id, seconds=_claim_seconds()) is None:
        return Outcome.SKIPPED
    state = await _state(call_id)
    if state is None or state.live_stream:
        return Outcome.SKIPPED
    interval = settings.RECONCILE_INTERVAL_SECONDS
    try:
        twilio_call = await telephony.call_fetch(state.sid)
    except telephony.TelephonyError as error:
        logger.warning("Reconciler: could not ask Twilio about call %s: %s", state.sid, error)
        await _defer(call_id=call_id, seconds=interval)
        return Outcome.DEFERRED
    if twilio_call is None or twilio_call.status not in TWILIO_LIVE_STATUSES:
        await _end(call_id=call_id, twilio_call=twilio_call, actor=Actor.SYSTEM)
        logger.info(
            "Reconciler: call %s ended (Twilio: %s)",
            state.sid,
            twilio_call.status if twilio_call else "unknown",
        )
        return Outcome.ENDED
    if twilio_call.status == CallStatus.IN_PROGRESS and not (
        state.transferred or state.hangup_requested
    ):
        return await _resume(call_id, state)
    # Still queued or ringing, or with a person after a transfer: bring our status up to
    # Twilio's and look again later.
    if STATUS_RANK.get(twilio_call.status, 0) > STATUS_RANK.get(state.status, 0):
        await _status_update(call_sid=state.sid, status=twilio_call.status)
    later = TRANSFERRED_RECHECK_SECONDS if state.transferred else interval
    await _defer(call_id=call_id, seconds=later)
    return Outcome.STILL_LIVE


async def _resume(call_id: str, state: CallState) -> Outcome:
    if state.resumes >= MAX_RESUMES:
        logger.warning("Reconciler: call %s never streamed again; hanging up", state.sid)
        try:
            await call_hangup(call_id=call_id, actor=Actor.SYSTEM, reason=EndReason.SERVER_LOST)
        except CallControlError as error:
            logger.warning("Reconciler: hang-up of call %s failed: %s", state.sid, error)
            await _defer(call_id=call_id, seconds=settings.RECONCILE_INTERVAL_SECONDS)
            return Outcome.DEFERRED
        return Outcome.HUNG_UP
    prepared = await _resume_prepare(call_id=call_id)
    if prepared is None:
        return Outcome.SKIPPED
    call_sid, document = prepared
    try:
        await telephony.call_update_twiml(call_sid, document)
    except telephony.TelephonyError as error:
        logger.warning("Reconciler: resuming call %s failed: %s", call_sid, error)
        await _resume_failed(call_id, str(error))
        await _defer(call_id=call_id, seconds=settings.RECONCILE_INTERVAL_SECONDS)
        return Outcome.DEFERRED
    logger.info("Reconciler: call %s resumed on a new stream", call_sid)
    # The new stream connects within seconds; until then the call is left alone.
    await _defer(call_id=call_id, seconds=settings.RECONCILE_UNANSWERED_GRACE_SECONDS)
    return Outcome.RESUMED


async def calls_reconcile(*, holder: str) -> Counter[str] | None:
    """One pass: take the lease (None if another reconciler holds it), then work every call
    nothing serves, a few at a time. Returns how many calls had each outcome."""
    claim = database_sync_to_async(reconcile_lease_claim)
    if not await claim(holder=holder, seconds=lease_seconds()):
        return None
    call_ids = await database_sync_to_async(reconcile_candidates)()
    slots = asyncio.Semaphore(PASS_CONCURRENCY)

    async def one(call_id: str) -> Outcome:
        async with slots:
            try:
                return await call_reconcile(call_id=call_id)
            except Exception:
                logger.exception("Reconciler: call %s could not be reconciled", call_id)
                return Outcome.FAILED

    outcomes = Counter(str(outcome) for outcome in await asyncio.gather(*map(one, call_ids)))
    await database_sync_to_async(processes_prune)()
    return outcomes


# --- staff: "Mark ended" --------------------------------------------------------------------


def _mark_refused_record(call_id: str, user: Any, twilio_status: str) -> None:
    call = Call.objects.filter(pk=call_id).first()
    if call is not None:
        call_event_record(
            call=call,
            kind="mark_ended_refused",
            actor=Actor.STAFF,
            user=user,
            data={"twilio_status": twilio_status},
        )


def _live_call_sid(call_id: str) -> str:
    call = Call.objects.filter(pk=call_id).first()
    if call is None:
        raise CallControlError("No such call.")
    if not call.is_live:
        raise CallControlError(f"The call has already ended ({call.get_status_display()}).")
    return call.sid


async def call_mark_ended(*, call_id: str, user: Any) -> str:
    """Staff close a call that looks live, once Twilio confirms it is over.

    Twilio is asked first: if it says the call is still live, nothing changes and staff are
    told so (and the refusal is logged). Returns what happened, in words for staff.
    """
    call_sid = await database_sync_to_async(_live_call_sid)(str(call_id))
    try:
        twilio_call = await telephony.call_fetch(call_sid)
    except telephony.TelephonyError as error:
        raise CallControlError(f"Could not ask Twilio about the call: {error}") from error
    if twilio_call is not None and twilio_call.status in TWILIO_LIVE_STATUSES:
        await database_sync_to_async(_mark_refused_record)(str(call_id), user, twilio_call.status)
        raise CallControlError(
            f"Twilio says this call is still {twilio_call.status}; it was not marked ended. "
            "Hang up to end it."
        )
    call = await _end(
        call_id=str(call_id),
        twilio_call=twilio_call,
        actor=Actor.STAFF,
        user=user,
        kind="marked_ended",
    )
    if twilio_call is None:
        return "Marked ended: Twilio does not know this call."
    duration = (
        "" if call is None or call.duration_seconds is None else f", {call.duration_seconds} s"
    )
    return f"Marked ended: Twilio says it ended ({twilio_call.status}{duration})."
