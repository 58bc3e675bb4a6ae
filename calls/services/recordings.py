"""Call recordings: started when the stream starts (if the agent records its calls), kept up
to date by Twilio's status callbacks, and deleted after RECORDING_RETENTION_DAYS.

The audio stays at Twilio; we keep the Recording's SID, status, length and where it starts
on the transcript's clock, and staff play it through the project (calls/recording_views.py).
"""

import logging
from dataclasses import dataclass
from datetime import timedelta

from channels.db import database_sync_to_async
from django.db import transaction
from django.utils import timezone

from .. import security, telephony
from ..models import Actor, Call, Recording, RecordingStatus
from .transcripts import call_event_record

logger = logging.getLogger(__name__)

STATUS_CALLBACK_PATH = "/twilio/recording/status"


def _recording_wanted(call_id: str) -> Call | None:
    """The call, if its agent records calls and it has no recording yet (a resumed stream
    does not start another: the first one records the whole call)."""
    call = Call.objects.select_related("agent").filter(pk=call_id).first()
    if call is None or call.agent is None or not call.agent.record_calls or not call.is_live:
        return None
    if Recording.objects.filter(call=call).exists():
        return None
    return call


def _recording_started(call_id: str, sid: str, offset_ms: int) -> None:
    call = Call.objects.get(pk=call_id)
    with transaction.atomic():
        Recording.objects.get_or_create(
            sid=sid, defaults={"call": call, "offset_ms": offset_ms, "channels": 2}
        )
        call_event_record(
            call=call,
            kind="recording_started",
            actor=Actor.SYSTEM,
            data={"recording_sid": sid, "offset_ms": offset_ms},
        )


def _recording_failed(call_id: str, error: str) -> None:
    call = Call.objects.get(pk=call_id)
    call_event_record(call=call, kind="recording_failed", actor=Actor.SYSTEM, data={"error": error})


async def call_recording_start(*, call_id: str, offset_ms: int) -> str | None:
    """Start recording the call at Twilio if its agent wants it; the RecordingSid, or None.

    Run as a task once the stream has started, off the media path. `offset_ms` is where the
    stream's clock (the transcript's) was when we asked: the recording's position 0.
    """
    call = await database_sync_to_async(_recording_wanted)(call_id)
    if call is None:
        return None
    callback = security.public_url(STATUS_CALLBACK_PATH)
    try:
        sid = await telephony.recording_start(call.sid, status_callback=callback)
    except telephony.TelephonyError as error:
        logger.warning("Call %s: recording not started: %s", call.sid, error)
        await database_sync_to_async(_recording_failed)(call_id, str(error))
        return None
    await database_sync_to_async(_recording_started)(call_id, sid, offset_ms)
    logger.info("Call %s: recording %s started", call.sid, sid)
    return sid


def recording_status_record(
    *,
    call_sid: str,
    recording_sid: str,
    status: str,
    duration_seconds: int | None,
    channels: int | None,
    media_url: str,
) -> Recording | None:
    """Apply Twilio's recording status callback: in-progress, completed, absent or failed."""
    call = Call.objects.filter(sid=call_sid).first()
    if call is None:
        logger.warning("Recording %s for unknown call %s ignored", recording_sid, call_sid)
        return None
    with transaction.atomic():
        recording, _ = Recording.objects.select_for_update().get_or_create(
            sid=recording_sid, defaults={"call": call}
        )
        if recording.status != RecordingStatus.DELETED:
            recording.status = status
        if duration_seconds is not None and status != RecordingStatus.IN_PROGRESS:
            recording.duration_seconds = duration_seconds
        if channels:
            recording.channels = channels
        recording.media_url = media_url or recording.media_url
        recording.save()
        call_event_record(
            call=call,
            kind=f"recording_{status.replace('-', '_')}",
            actor=Actor.TWILIO,
            data={"recording_sid": recording_sid, "duration_seconds": duration_seconds},
        )
    return recording


@dataclass(frozen=True)
class PurgeResult:
    deleted: int  # at Twilio (or already gone there) and here
    failed: list[str]  # why some could not be deleted at Twilio; kept to try again


def _expired(days: int) -> list[tuple[int, str]]:
    cutoff = timezone.now() - timedelta(days=days)
    return list(Recording.objects.filter(created_at__lt=cutoff).values_list("pk", "sid"))


def _forget(pk: int, gone_at_twilio: bool) -> None:
    recording = Recording.objects.select_related("call").filter(pk=pk).first()
    if recording is None:
        return
    with transaction.atomic():
        call_event_record(
            call=recording.call,
            kind="recording_deleted",
            actor=Actor.SYSTEM,
            data={"recording_sid": recording.sid, "was_at_twilio": gone_at_twilio},
        )
        recording.delete()


async def recordings_purge(*, older_than_days: int) -> PurgeResult:
    """Delete recordings older than `older_than_days`, at Twilio first, then here.

    A recording Twilio no longer has (404) is forgotten too. One Twilio refuses or cannot
    be reached for is kept, so the next run tries again.
    """
    deleted, failed = 0, []
    for pk, sid in await database_sync_to_async(_expired)(older_than_days):
        try:
            was_there = await telephony.recording_delete(sid)
        except telephony.TelephonyError as error:
            failed.append(f"{sid}: {error}")
            continue
        await database_sync_to_async(_forget)(pk, was_there)
        deleted += 1
    return PurgeResult(deleted=deleted, failed=failed)
