"""Twilio's side of a bidirectional Media Stream, emulated on a WebSocket client.

``TwilioStreamClient`` connects to our server the way Twilio does after ``<Connect><Stream>``:
it sends ``connected`` and ``start``, then one 20 ms frame of caller audio every 20 ms on a
real-time clock, and it plays the audio our server sends back in real time, echoing marks
when the audio before them has played and honouring ``clear`` as Twilio does. Every server
message is validated as strictly as Twilio would (errors 31950/31951), so tests fail where
production would. ``Playback`` is the pure model of Twilio's outbound audio buffer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from callmedia.audio import BYTES_PER_MS, FRAME_BYTES, FRAME_MS, silence
from callmedia.outbox import Outbox
from callmedia.tasks import TaskSet

from .wire import (
    connected_message,
    dtmf_message,
    inbound_media_message,
    mark_echo_message,
    start_message,
    stop_message,
    validate_outbound,
)

PLAYBACK_BYTES_PER_S = BYTES_PER_MS * 1000
# Twilio drops outbound audio past 10 minutes of buffer (error 31931).
MAX_BUFFERED_BYTES = 10 * 60 * PLAYBACK_BYTES_PER_S
DTMF_DIGITS = frozenset("0123456789*#")
STOP_TIMEOUT_S = 5.0
# The client's background tasks, by name (the writer is its outbox's).
RECEIVER, SENDER, PLAYER = "twilio-receiver", "twilio-sender", "twilio-player"

EventCallback = Callable[[str, dict[str, Any]], object]
AudioTap = Callable[[str, float, bytes], object]


@dataclass(frozen=True)
class MarkEcho:
    name: str
    played: bool  # False when echoed because a clear dropped the audio before it
    heard_bytes: int  # bytes of the audio between the previous mark and this one that played


@dataclass(frozen=True)
class _PendingMark:
    name: str
    segment_start: int  # playback positions, in bytes since the stream started
    segment_end: int


class Playback:
    """Twilio's outbound audio buffer, played at 8 bytes/ms against an explicit clock.

    Times are seconds on any monotonic clock. Positions count bytes played since the stream
    started; audio dropped by a clear never gets a position. Call ``advance(now)`` whenever
    the clock moves; the methods that change the buffer advance it first.
    """

    def __init__(self, on_played: Callable[[float, bytes], object] | None = None) -> None:
        """`on_played(at, audio)`: each stretch of audio as it plays, with its start time."""
        self.on_played = on_played
        self.played = bytearray()
        self._buffer = bytearray()
        self._playhead_time = 0.0  # when the first buffered byte starts to play
        self._segment_start = 0
        self._pending: deque[_PendingMark] = deque()

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    @property
    def pending_marks(self) -> list[str]:
        return [mark.name for mark in self._pending]

    def advance(self, now: float) -> list[MarkEcho]:
        """Play what is due by ``now``; return the marks whose audio has now played."""
        if self._buffer:
            # The epsilon absorbs float error, so a byte due exactly at ``now`` plays.
            due = int((now - self._playhead_time) * PLAYBACK_BYTES_PER_S + 1e-6)
            count = min(len(self._buffer), max(0, due))
            if count and self.on_played is not None:
                self.on_played(self._playhead_time, bytes(self._buffer[:count]))
            self.played += self._buffer[:count]
            del self._buffer[:count]
            self._playhead_time += count / PLAYBACK_BYTES_PER_S
        return self._echo_played()

    def add_audio(self, now: float, audio: bytes) -> list[MarkEcho]:
        echoes = self.advance(now)
        if not self._buffer:
            # Playback (re)starts when audio arrives after an underrun, not back in time.
            self._playhead_time = now
        self._buffer += audio
        return echoes

    def add_mark(self, now: float, name: str) -> list[MarkEcho]:
        echoes = self.advance(now)
        end = len(self.played) + len(self._buffer)
        self._pending.append(_PendingMark(name, self._segment_start, end))
        self._segment_start = end
        return echoes + self._echo_played()

    def clear(self, now: float) -> tuple[int, list[MarkEcho]]:
        """Drop the buffer; return the bytes dropped and the echoes, pending marks included."""
        echoes = self.advance(now)
        dropped = len(self._buffer)
        self._buffer.clear()
        position = len(self.played)
        while self._pending:
            mark = self._pending.popleft()
            length = mark.segment_end - mark.segment_start
            heard = min(max(0, position - mark.segment_start), length)
            echoes.append(MarkEcho(mark.name, played=False, heard_bytes=heard))
        self._segment_start = position
        return dropped, echoes

    def next_mark_due(self) -> float | None:
        """When the oldest pending mark's audio will have played, if any mark is pending."""
        if not self._pending:
            return None
        remaining = self._pending[0].segment_end - len(self.played)
        return self._playhead_time + remaining / PLAYBACK_BYTES_PER_S

    def _echo_played(self) -> list[MarkEcho]:
        echoes = []
        while self._pending and self._pending[0].segment_end <= len(self.played):
            mark = self._pending.popleft()
            heard = mark.segment_end - mark.segment_start
            echoes.append(MarkEcho(mark.name, played=True, heard_bytes=heard))
        return echoes


class TwilioStreamClient:
    """Twilio's media stream towards our server's WebSocket, for one call.

    Usable as ``async with TwilioStreamClient(...) as twilio:`` (start, then ``aclose``).
    ``on_event(kind, detail)`` is called for a live log with kind one of: ``sent`` (every
    message but media frames), ``received`` (every valid server message), ``error``,
    ``mark_echo``, ``clear``, ``closed``.

    Errors inside the background tasks are stored and re-raised by ``wait_for``,
    ``wait_closed``, ``stop`` and ``aclose``.
    """

    def __init__(
        self,
        url: str,
        *,
        call_sid: str,
        account_sid: str,
        custom_parameters: dict[str, str],
        stream_sid: str | None = None,
        headers: dict[str, str] | None = None,
        caller_audio: bytes | None = None,
        on_event: EventCallback | None = None,
        audio_tap: AudioTap | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`audio_tap(track, at, ulaw)` sees the call's audio on the loop's clock: each caller
        frame sent ("inbound") and the agent's audio as it plays ("outbound"), for a
        recording of the call. `ssl_context` verifies a wss:// server (default: the system's
        trust store)."""
        self.ssl_context = ssl_context
        self.url = url
        self.audio_tap = audio_tap
        self.call_sid = call_sid
        self.account_sid = account_sid
        self.custom_parameters = dict(custom_parameters)
        self.stream_sid = stream_sid or "MZ" + secrets.token_hex(16)
        self.headers = dict(headers or {})
        self.on_event = on_event

        # What happened, for assertions.
        self.received: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.marks_echoed: list[tuple[str, bool]] = []
        self.heard_by_mark: dict[str, int] = {}
        self.clears: list[int] = []  # stream time (ms) of each clear
        self.frames_sent = 0
        self.media_received = 0
        self.marks_received = 0
        self.closed_by_server = False

        self._caller_audio = bytearray(caller_audio or b"")
        self._silent_frame = silence(FRAME_MS)
        self._playback = Playback(on_played=self._outbound_played if audio_tap else None)
        self._sequence_number = 0
        # The only writer, so messages leave in sequenceNumber order.
        self._outbox: Outbox[str] = Outbox(self._send, name="twilio-writer")
        self._ws: ClientConnection | None = None
        self._start_time: float | None = None
        self._end_time: float | None = None
        # A task's error ends the stream and is re-raised to whoever waits on it.
        self._tasks = TaskSet(
            f"Twilio stream {self.stream_sid}",
            failure_level=logging.DEBUG,
            on_failure=self._task_failed,
        )
        self._wake_player = asyncio.Event()
        self._closed = asyncio.Event()
        self._hanging_up = False
        self._failures: list[BaseException] = []

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and send ``connected`` and ``start``; then stream until stopped or closed."""
        tls = {"ssl": self.ssl_context} if self.ssl_context is not None else {}
        self._ws = await connect(
            self.url, additional_headers=self.headers, compression=None, max_size=None, **tls
        )
        loop = asyncio.get_running_loop()
        self._start_time = loop.time()
        self._enqueue(connected_message())
        self._enqueue(
            start_message(
                stream_sid=self.stream_sid,
                call_sid=self.call_sid,
                account_sid=self.account_sid,
                sequence_number=self._next_sequence_number(),
                custom_parameters=self.custom_parameters,
            )
        )
        self._outbox.start()
        self._tasks.spawn(self._receive(), RECEIVER)
        self._tasks.spawn(self._send_caller_audio(), SENDER)
        self._tasks.spawn(self._play(), PLAYER)

    async def stop(self) -> None:
        """Hang up as the caller does: Twilio sends ``stop``, then closes the WebSocket."""
        if self._closed.is_set() or self._ws is None:
            self._raise_failure()
            return
        self._advance_playback()
        await self._tasks.close(SENDER, PLAYER)
        self._enqueue(
            stop_message(
                stream_sid=self.stream_sid,
                call_sid=self.call_sid,
                account_sid=self.account_sid,
                sequence_number=self._next_sequence_number(),
            )
        )
        self._hanging_up = True  # nothing may follow the stop
        # Send what is queued, the stop last, unless the connection is gone meanwhile.
        await self._outbox.close(STOP_TIMEOUT_S)
        await self._ws.close()
        await self.wait_closed(STOP_TIMEOUT_S)

    async def aclose(self) -> None:
        """Cancel every task and close the socket (without ``stop``); re-raise task errors."""
        self._advance_playback()
        self._hanging_up = True
        await self._tasks.close()
        await self._outbox.stop()
        if self._ws is not None:
            await self._ws.close()
        self._mark_closed()
        self._raise_failure()

    async def __aenter__(self) -> TwilioStreamClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- caller actions ----------------------------------------------------------------------

    def caller_frame_sent_at(self, timestamp_ms: int) -> float:
        """Loop time at which the caller frame stamped `timestamp_ms` leaves (paced, no drift)."""
        assert self._start_time is not None, "the stream has not started"
        return self._start_time + (timestamp_ms // FRAME_MS + 1) * FRAME_MS / 1000

    def queue_caller_audio(self, ulaw: bytes) -> None:
        """Caller speech (mu-law): sent in the coming frames, after any queued before it."""
        self._caller_audio += ulaw

    def send_dtmf(self, digit: str) -> None:
        if digit not in DTMF_DIGITS or len(digit) != 1:
            raise ValueError(f"not a DTMF digit: {digit!r}")
        self._enqueue(
            dtmf_message(
                stream_sid=self.stream_sid,
                sequence_number=self._next_sequence_number(),
                digit=digit,
            )
        )

    # -- state -------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code if self._ws is not None else None

    @property
    def played(self) -> bytearray:
        """The outbound audio the caller has heard so far, in the order it played."""
        self._advance_playback()
        return self._playback.played

    @property
    def buffered_bytes(self) -> int:
        return self._playback.buffered_bytes

    @property
    def caller_audio_pending(self) -> int:
        """Bytes of queued caller audio not yet sent."""
        return len(self._caller_audio)

    def stream_ms(self) -> int:
        """The stream clock: ms since ``start`` was sent (frozen once the stream closed)."""
        if self._start_time is None:
            return 0
        end = self._end_time if self._end_time is not None else self._now()
        return int((end - self._start_time) * 1000)

    def summary(self) -> dict[str, Any]:
        return {
            "duration_ms": self.stream_ms(),
            "frames_sent": self.frames_sent,
            "frames_received": self.media_received,
            "bytes_played": len(self.played),
            "marks_sent_by_server": self.marks_received,
            "marks_echoed": len(self.marks_echoed),
            "clears": len(self.clears),
            "errors": list(self.errors),
            "close_code": self.close_code,
        }

    # -- waiting -----------------------------------------------------------------------------

    async def wait_for(
        self,
        predicate: Callable[[], Any],
        timeout: float = 5.0,
        what: str = "",
    ) -> Any:
        """Poll ``predicate()`` until it is truthy and return its value.

        Raises TimeoutError, or ConnectionError if the stream closed first, with the state so
        far in the message; re-raises a background task's error at once.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._raise_failure()
            result = predicate()
            if result:
                return result
            label = what or getattr(predicate, "__name__", "condition")
            if self._closed.is_set():
                raise ConnectionError(f"stream closed before {label}: {self._describe()}")
            if loop.time() >= deadline:
                raise TimeoutError(f"{label} not true after {timeout}s: {self._describe()}")
            await asyncio.sleep(0.005)

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        """Wait until the WebSocket is closed (by either side); return the close code."""
        try:
            async with asyncio.timeout(timeout):
                await self._closed.wait()
        except TimeoutError:
            self._raise_failure()
            raise TimeoutError(f"stream still open after {timeout}s: {self._describe()}") from None
        self._raise_failure()
        return self.close_code

    def _describe(self) -> str:
        recent = [m.get("event") for m in self.received[-10:]]
        return f"summary={self.summary()}, last received events={recent}"

    # -- background tasks --------------------------------------------------------------------

    def _task_failed(self, error: BaseException) -> None:
        self._failures.append(error)
        self._mark_closed()

    async def _send(self, text: str) -> None:
        # A closed connection raises here; the outbox drops what is queued, and the receiver
        # notices the close and ends the stream.
        await self._ws.send(text)

    async def _send_caller_audio(self) -> None:
        """One inbound frame per 20 ms, scheduled against the start time so it never drifts."""
        loop = asyncio.get_running_loop()
        frame = 0
        while True:
            # A frame can only be sent once its 20 ms have been captured.
            delay = self._start_time + (frame + 1) * FRAME_MS / 1000 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            caller_frame = self._next_caller_frame()
            if self.audio_tap is not None and not (self._hanging_up or self._closed.is_set()):
                self.audio_tap("inbound", self._start_time + frame * FRAME_MS / 1000, caller_frame)
            self._enqueue(
                inbound_media_message(
                    stream_sid=self.stream_sid,
                    sequence_number=self._next_sequence_number(),
                    chunk=frame + 1,
                    timestamp_ms=frame * FRAME_MS,
                    payload_b64=base64.b64encode(caller_frame).decode("ascii"),
                ),
                log=False,
            )
            self.frames_sent += 1
            frame += 1

    async def _receive(self) -> None:
        try:
            async for message in self._ws:
                if not self._hanging_up:
                    self._handle(message)
        except ConnectionClosed:
            pass
        self.closed_by_server = not self._hanging_up
        await self._tasks.close(SENDER, PLAYER)
        if not self._hanging_up:  # else `stop` or `aclose` is ending the writer
            await self._outbox.stop()
        self._mark_closed()

    async def _play(self) -> None:
        """Echo marks when their audio has played; keep ``played`` current between them."""
        frame_s = FRAME_MS / 1000
        while True:
            now = self._now()
            self._advance_playback()
            timeout = frame_s if self._playback.buffered_bytes else None
            due = self._playback.next_mark_due()
            if due is not None:
                timeout = min(timeout or frame_s, max(0.0, due - now))
            self._wake_player.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._wake_player.wait()
            except TimeoutError:
                pass

    # -- message handling --------------------------------------------------------------------

    def _handle(self, message: str | bytes) -> None:
        reason = validate_outbound(message, self.stream_sid)
        if reason is not None:
            self._record_error(reason)
            return
        msg = json.loads(message)
        self.received.append(msg)
        self._emit("received", msg)
        now = self._now()
        event = msg["event"]
        if event == "media":
            self.media_received += 1
            audio = base64.b64decode(msg["media"]["payload"])
            if self._playback.buffered_bytes + len(audio) > MAX_BUFFERED_BYTES:
                self._record_error("31931: more than 10 minutes of audio buffered; dropped")
                return
            self._send_echoes(self._playback.add_audio(now, audio))
        elif event == "mark":
            self.marks_received += 1
            self._send_echoes(self._playback.add_mark(now, msg["mark"]["name"]))
        elif event == "clear":
            dropped, echoes = self._playback.clear(now)
            self.clears.append(self.stream_ms())
            self._emit("clear", {"stream_ms": self.clears[-1], "dropped_bytes": dropped})
            self._send_echoes(echoes)
        self._wake_player.set()

    def _send_echoes(self, echoes: list[MarkEcho]) -> None:
        for echo in echoes:
            self.marks_echoed.append((echo.name, echo.played))
            self.heard_by_mark[echo.name] = echo.heard_bytes
            detail = {"name": echo.name, "played": echo.played, "heard_bytes": echo.heard_bytes}
            self._emit("mark_echo", detail)
            self._enqueue(
                mark_echo_message(
                    stream_sid=self.stream_sid,
                    sequence_number=self._next_sequence_number(),
                    name=echo.name,
                )
            )

    def _outbound_played(self, at: float, audio: bytes) -> None:
        if self.audio_tap is not None:
            self.audio_tap("outbound", at, audio)

    def _advance_playback(self) -> None:
        # Playback ends with the call: after a hangup or a close nothing more is heard.
        if self._start_time is not None and not (self._hanging_up or self._closed.is_set()):
            self._send_echoes(self._playback.advance(self._now()))

    def _record_error(self, reason: str) -> None:
        self.errors.append(reason)
        self._emit("error", {"reason": reason})

    # -- helpers -----------------------------------------------------------------------------

    def _enqueue(self, text: str, *, log: bool = True) -> None:
        if self._hanging_up or self._closed.is_set():
            return
        self._outbox.post(text)
        if log:
            self._emit("sent", json.loads(text))

    def _next_sequence_number(self) -> int:
        self._sequence_number += 1
        return self._sequence_number

    def _next_caller_frame(self) -> bytes:
        frame = bytes(self._caller_audio[:FRAME_BYTES])
        del self._caller_audio[:FRAME_BYTES]
        return frame + self._silent_frame[len(frame) :]

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _emit(self, kind: str, detail: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(kind, detail)

    def _mark_closed(self) -> None:
        if not self._closed.is_set():
            self._advance_playback()
            self._end_time = self._now()
            self._closed.set()
            self._emit("closed", {"code": self.close_code, "by_server": self.closed_by_server})

    def _raise_failure(self) -> None:
        if self._failures:
            raise self._failures[0]
