"""What is written about a call as it goes: its transcript, and its log of events."""

from datetime import datetime
from typing import Any

from agents.history import AGENT, CALLER, Turn

from ..feed import event_broadcast, transcript_broadcast
from ..models import Call, CallEvent, Speaker, TranscriptEntry


def call_event_record(
    *,
    call: Call,
    kind: str,
    actor: str,
    user: Any = None,
    data: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> CallEvent:
    """Log `kind` on the call, now or, with `at`, when it happened (the log is in time order,
    and some things are written only after what they set off)."""
    event = CallEvent.objects.create(
        call=call, kind=kind, actor=actor, user=user if user and user.pk else None, data=data or {}
    )
    if at is not None:
        CallEvent.objects.filter(pk=event.pk).update(created_at=at)
        event.created_at = at
    event_broadcast(event)
    return event


def transcript_add(
    *,
    call_id: str,
    speaker: str,
    text: str,
    offset_ms: int,
    item_id: str = "",
    interrupted: bool = False,
    heard_ms: int | None = None,
    said_for: str = "",
) -> TranscriptEntry:
    """`said_for`: the staff member an agent line was spoken for (a sentence they typed)."""
    entry = TranscriptEntry.objects.create(
        said_for=said_for,
        call_id=call_id,
        speaker=speaker,
        text=text,
        offset_ms=max(0, offset_ms),
        item_id=item_id,
        interrupted=interrupted,
        heard_ms=heard_ms,
    )
    transcript_broadcast(entry)
    return entry


def transcript_interrupt(*, call_id: str, item_id: str, heard_ms: int) -> int:
    """Mark an agent line the caller cut off, with how much of it they heard."""
    entries = list(TranscriptEntry.objects.filter(call_id=call_id, item_id=item_id))
    for entry in entries:
        entry.interrupted, entry.heard_ms = True, heard_ms
        entry.save(update_fields=["interrupted", "heard_ms"])
        transcript_broadcast(entry)
    return len(entries)


def transcript_history(*, call_id: str) -> list[Turn]:
    """The call's conversation so far, for a model session that starts mid-call."""
    speakers = {Speaker.CALLER: CALLER, Speaker.AGENT: AGENT}
    entries = TranscriptEntry.objects.filter(call_id=call_id, speaker__in=speakers)
    return [
        Turn(
            speakers[entry.speaker],
            entry.text,
            entry.offset_ms,
            entry.heard_ms if entry.interrupted else None,
            entry.item_id,
        )
        for entry in entries.order_by("offset_ms", "id")
    ]
