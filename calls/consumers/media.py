"""WebSocket consumers: Twilio's media stream, and the staff's live feed."""

import asyncio
import base64
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Coroutine
from typing import Any

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer
from channels.layers import get_channel_layer

from callmedia import protocol
from callmedia.audio import FRAME_BYTES
from callmedia.playback import PlaybackTracker
from calls.session import AgentSession

from . import security, services
from .models import LIVE_CALLS_GROUP, call_group_name

logger = logging.getLogger(__name__)

# WebSocket close code for a policy violation: a stream we will not serve.
CLOSE_POLICY_VIOLATION = 1008

_open_stream = database_sync_to_async(services.stream_open)
_close_stream = database_sync_to_async(services.stream_close)
_record_bad_message = database_sync_to_async(services.stream_bad_message_record)


class MediaStreamConsumer(AsyncWebsocketConsumer):
    """One Twilio bidirectional media stream, bridged to the call's AgentSession.

    This is also the "port" the session talks through: `send_audio`, `end_segment`,
    `clear`, `wait_played`, `play_ulaw`, `close_stream`, `hold` and `flush`. Every outbound
    message is built by `media.protocol` and queued in an outbox, so callers on the hot path
    never await and a `clear` can drop audio that has not left yet. The session writes what
    a model event queued itself (`hold`, then `flush`); anything else wakes a writer task.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.call_id = ""
        self.call_sid = ""
        self.stream_sid: str | None = None
        self.group = ""
        self.session: AgentSession | None = None
        self.tracker = PlaybackTracker()
        self.now_ms = 0
        self.counters = dict.fromkeys(services.STREAM_COUNTERS, 0)
        self._outbox: deque[str] = deque()
        self._outbox_ready = asyncio.Event()
        self._writer: asyncio.Task | None = None
        self._holding = False  # between the session's hold() and flush()
        self._draining = False  # the writer task or a flush is writing the outbox
        self._handling = asyncio.Lock()  # one message handled at a time, socket or channel
        # Audio produced before Twilio's `start` named the stream; sent once it does.
        self._before_start: list[tuple[str, str, int] | None] = []
        self._waiters: list[asyncio.Future] = []
        self._tasks: set[asyncio.Task] = set()
        self._bad_reasons: set[str] = set()
        self._transferring = False
        self._ended = False
        self._socket_closed = False

    # --- channels plumbing ----------------------------------------------------------------

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """AsyncConsumer.__call__, minus a Task and an asyncio.wait per message.

        Channels reads the socket and the channel layer through `await_many_dispatch`, which
        starts a new Task for every message it waits for: 50 times a second per call here.
        The socket is read in this loop instead; control messages from the channel layer,
        a few per call, are read by a second task. `_handling` keeps the guarantee Channels
        gives, that one handler runs at a time.
        """
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.channel_name = await self.channel_layer.new_channel()
        self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
        self.base_send = send
        listener = asyncio.create_task(self._listen(), name="stream-channel-listener")
        dispatch, handling, handle_frame = self.dispatch, self._handling, self._handle_frame
        try:
            while True:
                message = await receive()
                if message["type"] != "websocket.receive" or handling.locked():
                    async with handling:
                        await dispatch(message)
                    continue
                # Twilio's messages, nearly all of them audio: handled here, with no
                # coroutine per frame; only start and stop leave something to await.
                text = message.get("text")
                pending = handle_frame(text if text is not None else message.get("bytes"))
                if pending is not None:
                    async with handling:
                        await pending
        except StopConsumer:
            pass
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopConsumer):
                await listener

    async def _listen(self) -> None:
        while True:
            message = await self.channel_receive()
            async with self._handling:
                try:
                    await self.dispatch(message)
                except Exception:
                    logger.exception("Call %s: control message %r failed", self.call_sid, message)

    async def dispatch(self, message: dict) -> None:
        # Channels closes stale DB connections before every handler: a thread-pool hop per
        # audio frame (performance.md). Media frames never touch the ORM, and the ORM work
        # this consumer does goes through database_sync_to_async, which cleans up itself.
        if message["type"] == "websocket.receive":
            await self.websocket_receive(message)
        else:
            await super().dispatch(message)

    async def connect(self) -> None:
        signature = dict(self.scope["headers"]).get(b"x-twilio-signature")
        # Twilio's docs say the upgrade is signed over wss://host/path with no params; when
        # a signature is present it must be right. The stream token is checked either way.
        if signature is not None and not security.signature_is_valid(
            security.stream_url(), {}, signature.decode("latin-1")
        ):
            logger.warning("Refused a media stream upgrade with a wrong signature")
            await self.close()
            return
        await self.accept()
        self._writer = asyncio.create_task(self._write_outbox())

    async def disconnect(self, code: int) -> None:
        self._socket_closed = True
        try:
            await self._end("socket closed")
        finally:
            if self.group:
                await self.channel_layer.group_discard(self.group, self.channel_name)
            pending = [task for task in (self._writer, *self._tasks) if task is not None]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # --- messages from Twilio ---------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        pending = self._handle_frame(text_data if bytes_data is None else bytes_data)
        if pending is not None:
            await pending

    def _handle_frame(self, data: str | bytes) -> Coroutine[Any, Any, None] | None:
        """Handle one message from Twilio at once; return what must still be awaited.

        Only `start` and `stop` wait (on the database and the session); media, marks, keys
        and bad messages are handled before this returns.
        """
        try:
            event = protocol.parse(data)
        except protocol.ProtocolError as error:
            self._bad_message(error.reason, str(error))
            return None
        if type(event) is protocol.Media:
            if event.stream_sid != self.stream_sid:
                self._bad_message("wrong_stream", f"media for stream {event.stream_sid!r}")
                return None
            counters = self.counters
            counters["frames_in"] += 1
            counters["bytes_in"] += FRAME_BYTES
            self.now_ms = event.timestamp_ms
            if self.session is not None:
                self.session.caller_audio(event.payload, event.timestamp_ms)
            return None
        if type(event) is protocol.Start:
            return self._start(event)
        if type(event) is protocol.Connected:
            return None
        if event.stream_sid != self.stream_sid:
            self._bad_message("wrong_stream", f"{type(event).__name__} for {event.stream_sid!r}")
        elif type(event) is protocol.Mark:
            self._mark_echoed(event.name)
        elif type(event) is protocol.Dtmf:
            self.counters["dtmf_digits"] += 1
            if self.session is not None:
                self._spawn(self.session.dtmf(event.digit))
        elif type(event) is protocol.Stop:
            return self._stop()
        return None

    async def _stop(self) -> None:
        await self._end("transferred" if self._transferring else "stop")
        await self.close_stream()

    async def _start(self, event: protocol.Start) -> None:
        if self.stream_sid is not None:
            self._bad_message("duplicate_start", f"second start for {event.stream_sid}")
            return
        try:
            opened = await _open_stream(
                call_sid=event.call_sid,
                stream_sid=event.stream_sid,
                token=event.custom_parameters.get(security.STREAM_TOKEN_PARAMETER),
                custom_parameters=event.custom_parameters,
                media_format=event.media_format,
                tracks=list(event.tracks),
            )
        except security.StreamTokenError:
            await self.close(code=CLOSE_POLICY_VIOLATION)
            return
        self.call_id, self.call_sid = opened.call_id, opened.call_sid
        self.stream_sid = event.stream_sid
        self.group = call_group_name(opened.call_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        self._flush_before_start()
        logger.info("Call %s: stream %s started", self.call_sid, self.stream_sid)
        self.session = AgentSession(
            self, call_id=opened.call_id, call_sid=opened.call_sid, agent_id=opened.agent_id
        )
        await self.session.start()

    def _mark_echoed(self, name: str) -> None:
        self.counters["marks_received"] += 1
        self.tracker.mark_received(name, self.now_ms)
        if self.tracker.all_played:
            self._resolve_waiters(True)

    def _bad_message(self, reason: str, detail: str) -> None:
        self.counters["bad_messages"] += 1
        # Like Twilio's own 31951, log a kind of problem once per stream, then count it.
        if reason in self._bad_reasons:
            logger.debug("Call %s: bad stream message (%s): %s", self.call_sid, reason, detail)
            return
        self._bad_reasons.add(reason)
        logger.warning("Call %s: bad stream message (%s): %s", self.call_sid or "?", reason, detail)
        if self.call_id:
            self._spawn(
                _record_bad_message(
                    call_id=self.call_id,
                    stream_sid=self.stream_sid or "",
                    reason=reason,
                    detail=detail,
                )
            )

    async def _end(self, reason: str) -> None:
        if self._ended:
            return
        self._ended = True
        self._resolve_waiters(False)
        if self.session is not None:
            try:
                await self.session.stop(reason)
            except Exception:
                logger.exception("Call %s: agent session failed to stop cleanly", self.call_sid)
        if self.stream_sid and self.call_id:
            await _close_stream(
                stream_sid=self.stream_sid,
                counters=dict(self.counters),
                caller_left=reason == "stop",
            )
            logger.info("Call %s: stream %s ended (%s)", self.call_sid, self.stream_sid, reason)

    # --- the port: what the agent session sends through ---------------------------------

    def send_audio(self, item_id: str, payload_b64: str, nbytes: int) -> None:
        if self.stream_sid is None:
            self._before_start.append((item_id, payload_b64, nbytes))
            return
        self.tracker.audio_sent(item_id, nbytes, self.now_ms)
        counters = self.counters
        counters["frames_out"] += 1
        counters["bytes_out"] += nbytes
        self._post(protocol.media_message(self.stream_sid, payload_b64))

    def end_segment(self) -> None:
        if self.stream_sid is None:
            self._before_start.append(None)
            return
        name = self.tracker.close_segment()
        if name is not None:
            self.counters["marks_sent"] += 1
            self._post(protocol.mark_message(self.stream_sid, name))

    def clear(self) -> dict[str, int]:
        """Barge-in: Twilio drops what it has buffered; returns ms heard per item cut off."""
        self._before_start.clear()
        if self.stream_sid is None:
            return {}
        # Audio still in our outbox never reached Twilio: drop it too.
        self._outbox.clear()
        self._post(protocol.clear_message(self.stream_sid))
        self.counters["clears"] += 1
        heard = self.tracker.cleared(self.now_ms)
        self._resolve_waiters(False)
        return heard

    async def wait_played(self, timeout_s: float) -> bool:
        """True once all audio sent so far has played; False on timeout or if cleared."""
        if self.tracker.all_played:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            return False
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def play_ulaw(self, ulaw: bytes, item_id: str) -> None:
        """Send a whole clip (headerless 8 kHz mu-law) as 20 ms frames closed by one mark."""
        self.end_segment()
        for start in range(0, len(ulaw), FRAME_BYTES):
            frame = ulaw[start : start + FRAME_BYTES]
            self.send_audio(item_id, base64.b64encode(frame).decode("ascii"), len(frame))
        self.end_segment()

    async def close_stream(self, code: int = 1000) -> None:
        await self._end("closed by us")
        if self._socket_closed:
            return  # the caller hung up, or a hang-up's call.close got here first
        self._socket_closed = True
        try:
            await self.close(code=code)
        except Exception:
            # The server may find the peer already gone; there is nothing left to close.
            logger.debug("Call %s: socket already gone when closing", self.call_sid)

    def hold(self) -> None:
        """Keep what is posted from now in the outbox until `flush`: no writer wake-up."""
        self._holding = True

    async def flush(self) -> None:
        """Write the outbox in the caller's task (the session's, after each model event)."""
        self._holding = False
        if self._outbox:
            await self._drain()

    def _post(self, text: str) -> None:
        self._outbox.append(text)
        if not self._holding:
            self._outbox_ready.set()

    def _flush_before_start(self) -> None:
        pending, self._before_start = self._before_start, []
        for entry in pending:
            if entry is None:
                self.end_segment()
            else:
                self.send_audio(*entry)

    async def _write_outbox(self) -> None:
        ready = self._outbox_ready
        while True:
            await ready.wait()
            ready.clear()
            await self._drain()

    async def _drain(self) -> None:
        if self._draining:
            return  # the writer task or a flush is at it, and loops until the outbox is empty
        self._draining = True
        outbox, send = self._outbox, self.base_send
        try:
            while outbox:
                await send({"type": "websocket.send", "text": outbox.popleft()})
        except Exception:
            # The peer went away mid-write (servers raise their own disconnect errors);
            # the disconnect handler ends the call.
            outbox.clear()
            logger.debug("Call %s: stream gone while writing", self.call_sid)
        finally:
            self._draining = False

    def _resolve_waiters(self, played: bool) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(played)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "Call %s: background task failed", self.call_sid, exc_info=task.exception()
            )

    # --- control messages from any process (channel layer, group call.<uuid>) -----------

    async def call_clear(self, message: dict) -> None:
        if self.session is not None:
            await self.session.interrupt()
        else:
            self.clear()

    async def call_close(self, message: dict) -> None:
        await self.close_stream()

    async def call_play(self, message: dict) -> None:
        ulaw = base64.b64decode(message["payload"])
        await self.play_ulaw(ulaw, item_id=f"play-{message.get('label', 'clip')}")

    async def call_say(self, message: dict) -> None:
        if self.session is not None:
            await self.session.say(message["text"])

    async def call_transferring(self, message: dict) -> None:
        # Twilio ends the stream once the <Dial> TwiML is in: that `stop` is the transfer.
        self._transferring = True

    async def call_transfer_failed(self, message: dict) -> None:
        self._transferring = False


class LiveCallsConsumer(AsyncJsonWebsocketConsumer):
    """The staff dashboard's feed: small deltas about live calls, for staff who may view calls."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if not await database_sync_to_async(_may_watch)(user):
            await self.close(code=CLOSE_POLICY_VIOLATION)
            return
        await self.channel_layer.group_add(LIVE_CALLS_GROUP, self.channel_name)
        await self.accept()
        await self.send_json({"event": "snapshot", **await database_sync_to_async(_snapshot)()})

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(LIVE_CALLS_GROUP, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # The page asks for a fresh snapshot after reconnecting; nothing else is accepted.
        if isinstance(content, dict) and content.get("action") == "resync":
            await self.send_json({"event": "snapshot", **await database_sync_to_async(_snapshot)()})

    async def live_event(self, message: dict) -> None:
        await self.send_json({key: value for key, value in message.items() if key != "type"})


def _may_watch(user: Any) -> bool:
    return bool(
        user is not None
        and user.is_authenticated
        and user.is_active
        and user.is_staff
        and user.has_perm("calls.view_call")
    )


# A snapshot carries the end of each call's transcript and log (the call's page has all of
# it); deltas add to them as they grow.
SNAPSHOT_TRANSCRIPT_LINES = 100
SNAPSHOT_RECENT_EVENTS = 6


def _snapshot() -> dict[str, Any]:
    """Every live call with its transcript and latest events, and what the page needs to act
    on them: the transfer targets of every agent, and the server's clock for durations."""
    from django.db.models import Prefetch
    from django.utils import timezone

    from agents.models import TransferTarget

    from .models import LIVE_STATUSES, Call, CallEvent

    calls = list(
        Call.objects.filter(status__in=LIVE_STATUSES, ended_at__isnull=True)
        .select_related("agent")
        .prefetch_related(
            "transcript",
            Prefetch("events", queryset=CallEvent.objects.select_related("user")),
        )
        .order_by("created_at")[:200]
    )
    # Every agent of a live call has an entry, so the page knows "none" from "not sent".
    targets: dict[str, list[dict[str, Any]]] = {
        str(call.agent_id): [] for call in calls if call.agent_id is not None
    }
    for target in TransferTarget.objects.order_by("agent_id", "-is_default", "name"):
        targets.setdefault(str(target.agent_id), []).append(
            {
                "name": target.name,
                "number": str(target.phone_number),
                "is_default": target.is_default,
            }
        )
    return {
        "now": timezone.now().isoformat(),
        "targets": targets,
        "calls": [
            {
                **services.call_summary(call),
                "transcript": [
                    services.transcript_summary(entry)
                    for entry in list(call.transcript.all())[-SNAPSHOT_TRANSCRIPT_LINES:]
                ],
                "events": [
                    _event_summary(event)
                    for event in list(call.events.all())[-SNAPSHOT_RECENT_EVENTS:]
                ],
            }
            for call in calls
        ],
    }


def _event_summary(event: Any) -> dict[str, Any]:
    # The shape services.call_event_record broadcasts for a new event.
    return {
        "kind": event.kind,
        "actor": event.actor_label,
        "data": event.data,
        "at": event.created_at.isoformat(),
    }
