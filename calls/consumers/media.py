"""Twilio's bidirectional media stream, bridged to the call's AgentSession."""

import asyncio
import base64
import logging
from collections.abc import Awaitable
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from callmedia import protocol
from callmedia.audio import FRAME_BYTES
from callmedia.chunker import b64_join
from callmedia.listen import ListenTap
from callmedia.outbox import Outbox
from callmedia.playback import PlaybackTracker
from callmedia.tasks import TaskSet
from callmedia.throttle import LogThrottle
from calls import drain, process, security, services
from calls.consumers.base import Pending, StreamingConsumer
from calls.consumers.listening import ListenHub
from calls.models import call_group_name
from calls.session import AgentSession

logger = logging.getLogger(__name__)

# What strangers make us log (refusals, streams that never start) stays this many lines a
# minute per kind, then one summary line: a flood of refusals must not fill the disk.
STRANGER_LOG_LINES_PER_MINUTE = 10
_strangers = LogThrottle(logger, limit=STRANGER_LOG_LINES_PER_MINUTE, window_s=60.0)

# This process's sockets that are open but have not yet sent a valid `start`: anyone can
# open one, so they are capped (STREAM_UNAUTHENTICATED_MAX) and timed out
# (STREAM_START_TIMEOUT_SECONDS) before they use up the process's file descriptors.
_unauthenticated: set["MediaStreamConsumer"] = set()
# A drained stream (the call resumes on another process) closes normally: Twilio runs the
# <Connect action> whatever the code, and daphne (autobahn) sends only 1000 or 3000-4999.
CLOSE_HANDOVER = 1000
# While draining, how often a call is checked for a quiet moment to hand it over.
HANDOVER_POLL_S = 0.05
# ... and how long it waits for one: an agent's sentence rarely runs longer, and a mark
# Twilio never echoes must not hold the call (and the process) until the drain deadline.
HANDOVER_QUIET_WAIT_S = 5.0

_open_stream = database_sync_to_async(services.stream_open)
_close_stream = database_sync_to_async(services.stream_close)
_record_bad_message = database_sync_to_async(services.stream_bad_message_record)


class MediaStreamConsumer(StreamingConsumer):
    """One Twilio media stream: it reads Twilio's messages and is the session's "port".

    The port (calls.session.port.StreamPort) is how the session plays audio and learns what
    the caller heard: the consumer owns the stream clock (`now_ms`, Twilio's latest media
    timestamp) and the PlaybackTracker that turns mark echoes into heard milliseconds. Every
    outbound message is built by `callmedia.protocol` and queued in an outbox, so callers on
    the hot path never await and a `clear` can drop audio that has not left yet.

    A call's stream ends in one place, `end_stream`, whoever ends it: Twilio's `stop`, the
    socket closing, a hang-up from any process (`call.close`), or the session itself.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.call_id = ""
        self.call_sid = ""
        self.stream_sid: str | None = None
        self.group = ""
        self.session: AgentSession | None = None
        self.now_ms = 0
        self.counters = dict.fromkeys(services.STREAM_COUNTERS, 0)
        # Twilio ends the stream once a transfer's <Dial> is in: that `stop` is the transfer,
        # not the caller hanging up. Set and cleared by calls.services.call_transfer.
        self.transferring = False
        self._tracker = PlaybackTracker()
        self._outbox: Outbox[str] = Outbox(self._send_text, name="stream-writer")
        # Model audio that arrived together, between `hold` and `flush`: one media message.
        self._media_run: list[str] = []
        self._holding = False
        # Audio produced before Twilio's `start` named the stream; sent once it does.
        self._before_start: list[tuple[str, str, int] | None] = []
        self._waiters: list[asyncio.Future[bool]] = []
        self._tasks = TaskSet("Call ?")
        self._bad_reasons: set[str] = set()
        self._ended = False
        self._socket_closed = False
        self._start_deadline: asyncio.Task[None] | None = None
        self._handover: asyncio.Task[None] | None = None
        # Staff listening in: a tap exists only while someone listens (calls.consumers.listening).
        self.tap: ListenTap | None = None
        self._hub = ListenHub(self)

    @property
    def label(self) -> str:
        return f"Call {self.call_sid or '?'}"

    # --- the socket's life ------------------------------------------------------------------

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # However the socket ended (even cancelled by the server), it leaves nothing
            # behind: no place under the cap, no writer, no task.
            _unauthenticated.discard(self)
            await self._outbox.stop()
            await self._tasks.close()

    async def connect(self) -> None:
        signature = dict(self.scope["headers"]).get(b"x-twilio-signature")
        # Twilio's docs say the upgrade is signed over wss://host/path with no params; when
        # a signature is present it must be right. The stream token is checked either way.
        if signature is not None and not security.signature_is_valid(
            security.stream_url(), {}, signature.decode("latin-1")
        ):
            _strangers.log(
                logging.WARNING,
                "upgrades_with_a_wrong_signature",
                "Refused a media stream upgrade with a wrong signature",
            )
            await self.close()  # before accept: the upgrade is answered 403
            return
        if len(_unauthenticated) >= settings.STREAM_UNAUTHENTICATED_MAX:
            _strangers.log(
                logging.WARNING,
                "upgrades_over_the_limit",
                "Refused a media stream upgrade: %d sockets already wait for their start "
                "(STREAM_UNAUTHENTICATED_MAX)",
                len(_unauthenticated),
            )
            await self.close()
            return
        _unauthenticated.add(self)
        await self.accept()
        self._outbox.start()
        self._start_deadline = self._tasks.spawn(
            self._close_unless_started(settings.STREAM_START_TIMEOUT_SECONDS),
            "stream-start-deadline",
        )

    async def _close_unless_started(self, timeout_s: float) -> None:
        # Twilio sends `start` right after `connected`, within a second of the upgrade.
        await asyncio.sleep(timeout_s)
        async with self._handling:  # a `start` being checked finishes first
            if self.stream_sid is not None or self._ended:
                return
            _strangers.log(
                logging.WARNING,
                "streams_without_a_start",
                "Closed a media stream that sent no valid start within %s s",
                timeout_s,
            )
            await self.end_stream("no start", code=protocol.CLOSE_START_TIMEOUT)

    async def disconnect(self, code: int) -> None:
        self._socket_closed = True
        try:
            await self.end_stream("socket closed")
        finally:
            if self.stream_sid:
                process.stream_released(self.stream_sid)
            await self._hub.end()
            await self.leave_groups()
            await self._outbox.stop()
            await self._tasks.close()

    async def end_stream(self, reason: str = "closed by us", *, code: int = 1000) -> None:
        """End the call's stream, once: stop the session, record the stream, close the socket."""
        if not self._ended:
            self._ended = True
            drain.unregister(self)
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
                    handed_over=reason == drain.HANDOVER,
                )
                logger.info("Call %s: stream %s ended (%s)", self.call_sid, self.stream_sid, reason)
        if self._socket_closed:
            return  # the caller hung up, or an earlier end_stream closed it
        self._socket_closed = True
        try:
            await self.close(code=code)
        except Exception:
            # The server may find the peer already gone; there is nothing left to close.
            logger.debug("Call %s: socket already gone when closing", self.call_sid)

    # --- messages from Twilio ---------------------------------------------------------------

    def frame_received(self, data: str | bytes) -> Pending:
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
            if self.tap is not None:
                self.tap.caller(event.payload, event.timestamp_ms)
            if self.session is not None:
                self.session.caller_audio(event.payload)
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
                # The audio before the key reaches the model before the key does.
                self.session.flush_caller_audio()
                self._tasks.spawn(self.session.dtmf(event.digit), "stream-dtmf")
        elif type(event) is protocol.Stop:
            return self.end_stream("transferred" if self.transferring else "stop")
        return None

    async def _start(self, event: protocol.Start) -> None:
        if self.stream_sid is not None or self._ended:
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
        except security.StreamTokenError as error:
            # The parser has bounded both SIDs to short alphanumerics: safe to log.
            _strangers.log(
                logging.WARNING,
                "refused_streams",
                "Refused media stream %s for call %s: %s",
                event.stream_sid,
                event.call_sid,
                error,
            )
            await self.end_stream("refused", code=protocol.CLOSE_STREAM_REFUSED)
            return
        except Exception as error:
            _strangers.log(
                logging.ERROR,
                "failed_starts",
                "Could not record media stream %s for call %s: %r",
                event.stream_sid,
                event.call_sid,
                error,
            )
            await self.end_stream("start failed", code=protocol.CLOSE_START_FAILED)
            return
        _unauthenticated.discard(self)
        if self._start_deadline is not None:
            self._start_deadline.cancel()
        self.call_id, self.call_sid = opened.call_id, opened.call_sid
        self.stream_sid = event.stream_sid
        self._tasks.owner = self.label
        self.group = call_group_name(opened.call_id)
        await self.join_group(self.group)
        await process.stream_held(self.stream_sid)  # its liveness: one heartbeat per process
        self._flush_before_start()
        logger.info("Call %s: stream %s started", self.call_sid, self.stream_sid)
        if drain.draining():
            # This process is shutting down: the call goes on on another one.
            await self.end_stream(drain.HANDOVER, code=CLOSE_HANDOVER)
            return
        drain.register(self)
        self.session = AgentSession(
            self,
            call_id=opened.call_id,
            call_sid=opened.call_sid,
            agent_id=opened.agent_id,
            resumed_at_ms=opened.resumed_at_ms,
            # Back from a transfer nobody took: the model hears why, instead of a greeting.
            resume_note=event.custom_parameters.get(services.RESUME_PARAMETER, ""),
        )
        await self.session.start()
        # Off the media path: a REST request to Twilio, if the agent records its calls.
        recording = services.call_recording_start(call_id=opened.call_id, offset_ms=self.now_ms)
        self._tasks.spawn(recording, "stream-recording")

    # --- draining: the call moves to another process ---------------------------------------

    def hand_over(self) -> Awaitable[None]:
        """Close the stream at the call's next quiet moment, recorded as a handover.

        Twilio then requests our <Connect action>, which resumes the call on a new stream.
        Idempotent: the drain and the consumer's own cancellation await the same task.
        """
        return asyncio.shield(self._handover_task())

    def _handover_task(self) -> asyncio.Task[None]:
        if self._handover is None:
            self._handover = asyncio.ensure_future(self._hand_over())
        return self._handover

    async def _hand_over(self) -> None:
        loop = asyncio.get_running_loop()
        force_at = min(drain.force_at(), loop.time() + HANDOVER_QUIET_WAIT_S)
        while not self._ended and loop.time() < force_at:
            session = self.session
            if session is None or session.is_quiet():
                break
            await asyncio.sleep(HANDOVER_POLL_S)
        if not self._ended:
            if self.session is not None and not self.session.is_quiet():
                logger.warning("Call %s: handed over without a quiet moment", self.call_sid)
            await self.end_stream(drain.HANDOVER, code=CLOSE_HANDOVER)

    def server_stopping(self) -> bool:
        """daphne cancels every connection as it shuts down: while draining, hand over first.

        The socket is read on meanwhile: the quiet moment is known from Twilio's mark echoes
        and stream clock, and the handover's close ends the read loop as any close does.
        """
        if not drain.draining():
            return False
        self._handover_task()  # the drain awaits it (calls.drain)
        return True

    def _mark_echoed(self, name: str) -> None:
        self.counters["marks_received"] += 1
        self._tracker.mark_received(name, self.now_ms)
        if self._tracker.all_played:
            self._resolve_waiters(True)

    def _bad_message(self, reason: str, detail: str) -> None:
        self.counters["bad_messages"] += 1
        # Like Twilio's own 31951, log a kind of problem once per stream, then count it.
        if reason in self._bad_reasons:
            logger.debug("Call %s: bad stream message (%s): %s", self.call_sid, reason, detail)
            return
        self._bad_reasons.add(reason)
        if not self.call_id:
            # Before a valid `start`, the sender is a stranger: its junk is logged sparingly.
            _strangers.log(
                logging.WARNING,
                "bad_messages_before_start",
                "Bad media stream message before start (%s): %s",
                reason,
                detail,
            )
            return
        logger.warning("Call %s: bad stream message (%s): %s", self.call_sid, reason, detail)
        record = _record_bad_message(
            call_id=self.call_id,
            stream_sid=self.stream_sid or "",
            reason=reason,
            detail=detail,
        )
        self._tasks.spawn(record, "stream-bad-message")

    # --- the port: what the agent session plays and learns through ----------------------

    def send_audio(self, item_id: str, payload_b64: str, nbytes: int) -> None:
        if self.stream_sid is None:
            self._before_start.append((item_id, payload_b64, nbytes))
            return
        self._tracker.audio_sent(item_id, nbytes, self.now_ms)
        counters = self.counters
        counters["frames_out"] += 1
        counters["bytes_out"] += nbytes
        if self._holding:
            self._media_run.append(payload_b64)
        else:
            self._outbox.post(protocol.media_message(self.stream_sid, payload_b64))
        if self.tap is not None:
            self.tap.agent_b64(payload_b64, self.now_ms)

    def end_segment(self) -> None:
        if self.stream_sid is None:
            self._before_start.append(None)
            return
        name = self._tracker.close_segment()
        if name is not None:
            self._post_media_run()  # the mark follows the audio it closes
            self.counters["marks_sent"] += 1
            self._outbox.post(protocol.mark_message(self.stream_sid, name))

    def clear(self) -> dict[str, int]:
        """Barge-in: Twilio drops what it has buffered; returns ms heard per item cut off."""
        self._before_start.clear()
        if self.stream_sid is None:
            return {}
        # Audio still in our outbox never reached Twilio: drop it too.
        self._media_run.clear()
        self._outbox.clear()
        self._outbox.post(protocol.clear_message(self.stream_sid))
        self.counters["clears"] += 1
        if self.tap is not None:
            self.tap.clear(self.now_ms)
        heard = self._tracker.cleared(self.now_ms)
        self._resolve_waiters(False)
        return heard

    def is_audible(self) -> bool:
        return self._tracker.is_audible(self.now_ms)

    def heard_ms(self, item_id: str) -> int:
        return self._tracker.heard_ms(item_id, self.now_ms)

    def sent_ms(self, item_id: str) -> int:
        return self._tracker.sent_ms(item_id)

    async def wait_played(self, timeout_s: float) -> bool:
        """True once all audio sent so far has played; False on timeout or if cleared."""
        if self._tracker.all_played:
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

    def hold(self) -> None:
        """Keep what is posted from now in the outbox until `flush`: no writer wake-up, and
        the audio sent meanwhile leaves as one media message."""
        self._holding = True
        self._outbox.hold()

    def flush(self) -> Awaitable[None]:
        """Write the outbox in the caller's task (the session's, after model events)."""
        self._holding = False
        self._post_media_run()
        return self._outbox.flush()  # the Outbox's own coroutine: none more per model event

    def _post_media_run(self) -> None:
        run = self._media_run
        if run and self.stream_sid is not None:
            # Nearly always one payload, passed through as it came.
            payload = run[0] if len(run) == 1 else b64_join(run)
            run.clear()
            self._outbox.post(protocol.media_message(self.stream_sid, payload))

    def _flush_before_start(self) -> None:
        pending, self._before_start = self._before_start, []
        for entry in pending:
            if entry is None:
                self.end_segment()
            else:
                self.send_audio(*entry)

    def _send_text(self, text: str) -> Awaitable[None]:
        # Returns the server's own awaitable: no coroutine of ours per outbound frame.
        return self.base_send({"type": "websocket.send", "text": text})

    def _resolve_waiters(self, played: bool) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(played)

    # --- control messages from any process (channel layer, group call.<uuid>) -----------
    #
    # A message with a `reply_to` channel is a request: its sender (calls.services.control)
    # waits a couple of seconds for {"type": "call.reply", "error": ""} (or the words of why
    # not) and tells staff the stream did not answer if nothing comes. Each handler replies
    # once it has acted, except `call.close`, which replies as it starts ending the stream:
    # ending waits for the session's pending control actions, and the hang-up that sent the
    # close may be one of them.

    def handle_now(self, message: dict) -> bool:
        # A stream already ending answers at once, without queueing behind `end_stream`
        # (which may be waiting for the very action that sent this message).
        if not self._ended or not message.get("reply_to"):
            return False
        error = "" if message.get("type") == "call.close" else "The call's stream has ended."
        self._tasks.spawn(self._reply(message, error=error), "stream-control-reply")
        return True

    async def _reply(self, message: dict, *, error: str = "") -> None:
        reply_to = message.get("reply_to")
        if not reply_to:
            return
        try:
            await self.channel_layer.send(reply_to, {"type": "call.reply", "error": error})
        except Exception as failure:  # the layer is down: the sender hears nothing and says so
            logger.warning("Call %s: a control reply was lost: %r", self.call_sid, failure)

    async def call_clear(self, message: dict) -> None:
        if self.session is not None:
            await self.session.interrupt()
        else:
            self.clear()
        await self._reply(message)

    async def call_close(self, message: dict) -> None:
        await self._reply(message)
        await self.end_stream()

    async def call_play(self, message: dict) -> None:
        ulaw = base64.b64decode(message["payload"])
        await self.play_ulaw(ulaw, item_id=f"play-{message.get('label', 'clip')}")
        await self._reply(message)

    async def call_say(self, message: dict) -> None:
        if self.session is None or not await self.session.say(message["text"]):
            await self._reply(message, error="The agent cannot speak now: no model is connected.")
            return
        await self._reply(message)

    async def call_amd(self, message: dict) -> None:
        if self.session is not None:
            self.session.amd_result(message["answered_by"])

    async def call_transferring(self, message: dict) -> None:
        self.transferring = True
        await self._reply(message)

    async def call_transfer_failed(self, message: dict) -> None:
        self.transferring = False

    # --- staff listening in and taking over (calls.consumers.listen, any process) ---------

    async def listen_join(self, message: dict) -> None:
        if self.stream_sid is not None and not self._ended:
            self._hub.join(message["channel"])
            await self._hub.state()

    async def listen_keepalive(self, message: dict) -> None:
        if self.stream_sid is not None and not self._ended:
            self._hub.join(message["channel"])

    async def listen_leave(self, message: dict) -> None:
        self._hub.leave(message["channel"])
        if message["channel"] == self._hub.holder:
            await self._hand_back(reason="left")

    async def call_take_over(self, message: dict) -> None:
        hub = self._hub
        if self.session is None:
            await self._reply(message, error="The call has no agent session to take over.")
            return
        if hub.holder and hub.holder != message["holder"]:
            await self._reply(message, error=f"{hub.holder_name} is already talking to the caller.")
            return
        if not hub.holder:
            hub.holder, hub.holder_name = message["holder"], message.get("user", "staff")
            self.session.take_over(hub.holder_name)
        await self._reply(message)
        await hub.state()

    async def call_hand_back(self, message: dict) -> None:
        if self._hub.holder and self._hub.holder != message["holder"]:
            await self._reply(message, error=f"{self._hub.holder_name} holds the call, not you.")
            return
        await self._hand_back(reason="handed back")
        await self._reply(message)

    async def call_staff_audio(self, message: dict) -> None:
        """The holder's microphone, already checked by their socket: to the caller as frames."""
        if message.get("holder") != self._hub.holder or not self._hub.holder:
            return
        if self.stream_sid is None or self._ended:
            return
        audio = message["audio"]
        for start in range(0, len(audio) - len(audio) % FRAME_BYTES, FRAME_BYTES):
            frame = audio[start : start + FRAME_BYTES]
            self.counters["frames_out"] += 1
            self.counters["bytes_out"] += FRAME_BYTES
            self._outbox.post(
                protocol.media_message(self.stream_sid, base64.b64encode(frame).decode("ascii"))
            )
            if self.tap is not None:
                self.tap.agent(frame, self.now_ms)

    def holder_lost(self, channel: str) -> None:
        """The holder's keepalives stopped: give the call back to the agent."""
        if channel == self._hub.holder:
            self._tasks.spawn(self._hand_back(reason="lost"), "stream-hand-back")

    async def _hand_back(self, *, reason: str) -> None:
        hub = self._hub
        if not hub.holder:
            return
        name = hub.holder_name
        hub.holder = hub.holder_name = ""
        if self.session is not None:
            self.session.hand_back(name, reason=reason)
        await hub.state()
