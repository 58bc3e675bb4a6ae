"""The session's transcript and event log, written off the hot path.

Writes are queued without waiting and done by one writer task, in order, each burst in one
thread hop; nothing is written per audio frame. At the end of the call what is queued is
written before the session stops.
"""

import functools
import logging
from collections.abc import Callable
from typing import Any

from channels.db import database_sync_to_async
from django.db import IntegrityError, transaction

from callmedia.outbox import Outbox
from calls import services
from calls.models import Actor, Call, CallEvent, Speaker
from calls.outcomes import OUTCOME_EVENT_KINDS

logger = logging.getLogger(__name__)

# How long the end of a call waits for queued writes.
CLOSE_TIMEOUT_S = 10.0

Write = tuple[Callable[..., Any], dict[str, Any]]


def _event_record(*, call_id: str, kind: str, actor: str, data: dict[str, Any]) -> None:
    # The call's id is all an event needs: no query to load the call first.
    # What the session does for staff (cutting the agent off on Clear) is theirs: the log
    # names the same person for the click and for what it did.
    user = _staff_clear_user(call_id) if actor == Actor.STAFF else None
    try:
        with transaction.atomic():
            services.call_event_record(
                call=Call(pk=call_id), kind=kind, actor=actor, user=user, data=data
            )
            if kind in OUTCOME_EVENT_KINDS:
                services.call_outcome_refresh(call_id=call_id)
    except IntegrityError:
        logger.info("Call %s: not recording %s, the call was deleted", call_id, kind)


def _staff_clear_user(call_id: str) -> Any:
    event = (
        CallEvent.objects.filter(call_id=call_id, kind="clear", user__isnull=False)
        .select_related("user")
        .order_by("-created_at", "-id")
        .first()
    )
    return event.user if event is not None else None


def _staff_say_user(call_id: str, text: str) -> Any:
    """The staff member who asked for `text` on the call: the latest "say" of it."""
    event = (
        CallEvent.objects.filter(call_id=call_id, kind="say", data__text=text)
        .select_related("user")
        .order_by("-created_at", "-id")
        .first()
    )
    return event.user if event is not None else None


def _staff_say_record(*, call_id: str, text: str) -> None:
    # Logged as it starts playing, for whoever typed it (the click was logged as "say").
    user = _staff_say_user(call_id, text)
    services.call_event_record(
        call=Call(pk=call_id),
        kind="staff_say_spoken",
        actor=Actor.AGENT,
        user=user,
        data={"text": text},
    )


def _agent_line_record(*, staff_say: str, **line: Any) -> None:
    user = _staff_say_user(line["call_id"], staff_say) if staff_say else None
    said_for = (user.get_username() if user is not None else "staff") if staff_say else ""
    services.transcript_add(**line, said_for=said_for)


def _write_batch(call_sid: str, batch: list[Write]) -> None:
    for function, kwargs in batch:
        try:
            function(**kwargs)
        except Exception:
            logger.exception("Call %s: %s failed", call_sid, function.__name__)


class Recorder:
    def __init__(self, *, call_id: str, call_sid: str, offset_base_ms: int = 0) -> None:
        self.call_id = call_id
        self.call_sid = call_sid
        # Lines are timed from the start of the call; a stream's clock starts at its own
        # start, which for a call resumed on a new stream is this much later.
        self.offset_base_ms = offset_base_ms
        write = functools.partial(database_sync_to_async(_write_batch), call_sid)
        self._outbox: Outbox[Write] = Outbox(write, name=f"agent-db-{call_sid}", batch=True)

    def start(self) -> None:
        self._outbox.start()

    async def close(self) -> None:
        """Write what is queued (for at most CLOSE_TIMEOUT_S); later writes are dropped."""
        if not await self._outbox.close(CLOSE_TIMEOUT_S):
            logger.error("Call %s: transcript writes still pending at stop", self.call_sid)

    def call_offset_ms(self, stream_ms: int) -> int:
        return self.offset_base_ms + stream_ms

    def event(self, kind: str, actor: str, data: dict[str, Any]) -> None:
        self._write(_event_record, call_id=self.call_id, kind=kind, actor=actor, data=data)

    def caller_line(self, *, item_id: str, text: str, offset_ms: int) -> None:
        self._write(
            services.transcript_add,
            call_id=self.call_id,
            speaker=Speaker.CALLER,
            text=text,
            offset_ms=self.offset_base_ms + offset_ms,
            item_id=item_id,
        )

    def staff_say_spoken(self, *, text: str) -> None:
        self._write(_staff_say_record, call_id=self.call_id, text=text)

    def agent_line(
        self,
        *,
        item_id: str,
        text: str,
        offset_ms: int,
        heard_ms: int | None,
        staff_say: str = "",
    ) -> None:
        """`heard_ms`: set if the caller heard only that much of it; `staff_say`: the
        sentence staff typed, if the line is one."""
        self._write(
            _agent_line_record,
            staff_say=staff_say,
            call_id=self.call_id,
            speaker=Speaker.AGENT,
            text=text,
            offset_ms=self.offset_base_ms + offset_ms,
            item_id=item_id,
            interrupted=heard_ms is not None,
            heard_ms=heard_ms,
        )

    def staff_line(self, *, text: str, offset_ms: int) -> None:
        """A staff member took the call over or handed it back."""
        self._write(
            services.transcript_add,
            call_id=self.call_id,
            speaker=Speaker.STAFF,
            text=text,
            offset_ms=offset_ms,
        )

    def agent_line_cut(self, *, item_id: str, heard_ms: int) -> None:
        """An agent line already written was cut off after `heard_ms`."""
        self._write(
            services.transcript_interrupt, call_id=self.call_id, item_id=item_id, heard_ms=heard_ms
        )

    def _write(self, function: Callable[..., Any], **kwargs: Any) -> None:
        self._outbox.post((function, kwargs))
