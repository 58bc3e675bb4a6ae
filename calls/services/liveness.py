"""Which server process holds which media stream, and that it is still alive.

A process records itself when it takes its first stream, then writes one heartbeat per
period for all the streams it holds (never per frame, never per stream). A stream whose
process stops writing is lost (`MediaStream.objects.lost()`); the reconciler takes it from
there.
"""

import uuid
from datetime import timedelta

from django.db.models import Exists, OuterRef
from django.utils import timezone

from ..models import MediaStream, ServerProcess, StreamStatus

# Rows of processes long gone, holding no stream, are removed after this.
PROCESS_ROW_KEEP = timedelta(days=1)


def stream_process_attach(*, stream_sid: str, process_id: uuid.UUID, host: str, pid: int) -> None:
    """Record that this process holds `stream_sid`, and that it is alive now."""
    now = timezone.now()
    seen = ServerProcess.objects.filter(pk=process_id).update(last_seen=now, stopped_at=None)
    if not seen:
        ServerProcess.objects.update_or_create(
            pk=process_id, defaults={"host": host[:255], "pid": pid, "last_seen": now}
        )
    MediaStream.objects.filter(sid=stream_sid).update(process_id=process_id)


def process_heartbeat(*, process_id: uuid.UUID) -> bool:
    """The process holding streams is alive: one UPDATE. False if its row is gone."""
    return bool(ServerProcess.objects.filter(pk=process_id).update(last_seen=timezone.now()))


def process_stopped(*, process_id: uuid.UUID) -> None:
    """The process is exiting: whatever it still holds is lost at once, not after a delay."""
    ServerProcess.objects.filter(pk=process_id).update(stopped_at=timezone.now())


def processes_prune() -> int:
    """Forget processes silent for a day that hold no started stream."""
    before = timezone.now() - PROCESS_ROW_KEEP
    holding = MediaStream.objects.filter(process=OuterRef("pk"), status=StreamStatus.STARTED)
    deleted, _ = (
        ServerProcess.objects.filter(last_seen__lt=before).exclude(Exists(holding)).delete()
    )
    return deleted
