"""AgentSession: one per call, between the media stream and a voice backend.

The stream consumer is the session's "port": it owns Twilio's socket, the stream clock
(`now_ms`) and the PlaybackTracker that turns mark echoes into what the caller heard. The
session forwards caller audio to the backend, plays the model's audio, and acts on what
the model and the caller do: barge-in, the end_call and transfer tools, keypresses,
transcripts, limits, and a model that fails.

Rules it keeps:
- `caller_audio` is the hot path: sync, O(1), no database, no awaits.
- Barge-in sends `clear` before anything else, then truncates the model's item at what the
  caller heard (protocols.md, pitfalls 1 and 2).
- Database writes (transcripts, call events) go through one writer task, in order, batched
  into one thread hop; nothing is written per audio frame.
- Hang-ups and transfers go through calls.services; once started they are shielded, so a
  `stop` that arrives meanwhile (a transfer always causes one) does not cut them short.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from channels.db import database_sync_to_async
from django.db import IntegrityError, transaction

from agents import assets
from agents.backends import backend_for
from agents.backends.base import (
    AgentConfig,
    AgentTranscript,
    AgentTranscriptDelta,
    AudioDelta,
    AudioDone,
    Backend,
    BackendClosed,
    BackendError,
    BackendEvent,
    BackendUnavailable,
    CallerTranscript,
    ResponseCreated,
    ResponseDone,
    SpeechStarted,
    SpeechStopped,
    TargetConfig,
    ToolCall,
)
from agents.models import Agent
from agents.tools import END_CALL, TRANSFER_TO_HUMAN
from callmedia.audio import BYTES_PER_MS
from callmedia.playback import PlaybackTracker
from calls import services
from calls.models import Actor, Call, EndReason, Speaker

logger = logging.getLogger(__name__)

# How long a goodbye or "connecting you now" may take to play before we act anyway.
PLAYOUT_WAIT_S = 10.0
# Extra time, beyond a clip's length, for its mark to come back.
CLIP_WAIT_MARGIN_S = 5.0
# A mark every ~1 s of model audio, as well as one per response: the tracker re-anchors on
# each echo, so a long answer's heard position stays exact to a frame or two even if Twilio
# stalls mid-answer; one small message a second is nothing next to 50 media frames.
SEGMENT_MAX_BYTES = 1000 * BYTES_PER_MS
# Keys typed in a row (an account number) make one response, this long after the last one.
DTMF_RESPONSE_DELAY_S = 1.0
WATCHDOG_INTERVAL_S = 0.2
STOP_TIMEOUT_S = 10.0
# At stop, an agent line the caller heard less of than this was cut off by the hang-up.
CUT_OFF_MARGIN_MS = 100

APOLOGY_CLIP = "apology"
GOODBYE_CLIP = "goodbye"


class StreamPort(Protocol):
    """What the media stream consumer offers the session (see calls.consumers)."""

    call_id: str
    call_sid: str
    tracker: PlaybackTracker
    now_ms: int

    def send_audio(self, item_id: str, payload_b64: str, nbytes: int) -> None: ...
    def hold(self) -> None: ...
    async def flush(self) -> None: ...
    def end_segment(self) -> None: ...
    def clear(self) -> dict[str, int]: ...
    async def wait_played(self, timeout_s: float) -> bool: ...
    async def close_stream(self, code: int = 1000) -> None: ...
    async def play_ulaw(self, ulaw: bytes, item_id: str) -> None: ...


# --- the database side, run by the writer task --------------------------------------------


def agent_config_load(agent_id: int | None) -> AgentConfig | None:
    agent = Agent.objects.filter(pk=agent_id).first() if agent_id is not None else None
    if agent is None:
        return None
    targets = tuple(
        TargetConfig(name=t.name, description=t.description, is_default=t.is_default)
        for t in agent.transfer_targets.all()
    )
    return AgentConfig(
        id=agent.pk,
        name=agent.name,
        instructions=agent.instructions,
        greeting=agent.greeting,
        voice=agent.voice,
        model=agent.model,
        backend=agent.backend,
        transfer_digit=agent.transfer_digit,
        max_call_seconds=agent.max_call_seconds,
        idle_timeout_seconds=agent.idle_timeout_seconds,
        targets=targets,
    )


def _event_record(*, call_id: str, kind: str, actor: str, data: dict[str, Any]) -> None:
    # The call's id is all an event needs: no query to load the call first.
    try:
        with transaction.atomic():
            services.call_event_record(call=Call(pk=call_id), kind=kind, actor=actor, data=data)
    except IntegrityError:
        logger.info("Call %s: not recording %s, the call was deleted", call_id, kind)


DbWrite = tuple[Callable[..., Any], dict[str, Any]]


def _write_batch(call_sid: str, batch: list[DbWrite]) -> None:
    for function, kwargs in batch:
        try:
            function(**kwargs)
        except Exception:
            logger.exception("Call %s: %s failed", call_sid, function.__name__)


# --- the session ----------------------------------------------------------------------------


class AgentSession:
    def __init__(
        self, port: StreamPort, *, call_id: str, call_sid: str, agent_id: int | None
    ) -> None:
        self.port = port
        self.call_id = str(call_id)
        self.call_sid = call_sid
        self.agent_id = agent_id
        self.config: AgentConfig | None = None
        self.backend: Backend | None = None
        self._connecting: Backend | None = None

        self._loop: asyncio.AbstractEventLoop | None = None
        self._started_at = 0.0
        self._last_activity = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tool_tasks: set[asyncio.Task[Any]] = set()
        self._control_tasks: set[asyncio.Future[Any]] = set()
        self._db_queue: asyncio.Queue[DbWrite | None] = asyncio.Queue()
        self._db_task: asyncio.Task[None] | None = None
        self._dtmf_timer: asyncio.TimerHandle | None = None

        self._stopped = False
        self._failing = False
        self._ending = False  # hanging up or transferring: the model is no longer heard
        self._handing_off = False
        self._caller_speaking = False
        self._speaker = ""  # who the live view shows as audible: "caller", "agent" or ""
        self._active_response: str | None = None
        self._awaiting_response = False  # we asked for one; response.created not seen yet
        self._respond_when_done = False
        self._pending_says: list[str] = []
        self._dropped_responses: set[str] = set()
        self._segment_bytes = 0

        # Per model item: bytes received (= sent to Twilio), stream offset of its first
        # audio, its response, its transcript so far, and whether it is written.
        self._item_bytes: dict[str, int] = {}
        self._item_offsets: dict[str, int] = {}
        self._item_response: dict[str, str] = {}
        self._item_complete: set[str] = set()  # all its audio arrived (output_audio.done)
        self._agent_text: dict[str, list[str]] = {}
        self._interrupted: dict[str, int] = {}
        self._written: set[str] = set()
        self._speech_offsets: dict[str, int] = {}

    # -- called by the consumer ----------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._started_at = self._last_activity = self._loop.time()
        self._db_task = self._loop.create_task(self._db_writer(), name=f"agent-db-{self.call_sid}")
        try:
            self.config = await database_sync_to_async(agent_config_load)(self.agent_id)
        except Exception:
            logger.exception("Call %s: cannot load agent %s", self.call_sid, self.agent_id)
        self._spawn(self._run(), "run")
        if self.config is not None:
            self._spawn(self._watchdog(), "watchdog")

    def caller_audio(self, payload_b64: str, timestamp_ms: int) -> None:
        backend = self.backend
        if backend is not None:
            backend.send_audio(payload_b64)

    async def dtmf(self, digit: str) -> None:
        config, backend = self.config, self.backend
        if config is None or backend is None or self._ending or self._failing:
            return
        self._touch()
        target = config.default_target
        if digit == config.transfer_digit and target is not None:
            self._cut_off("dtmf_transfer_cut_off", Actor.CALLER)
            backend.keypad(digit, transferring=True)
            self._spawn(self._dtmf_transfer(digit, target), "dtmf-transfer", tool=True)
            return
        backend.keypad(digit, transferring=False)
        if self._dtmf_timer is not None:
            self._dtmf_timer.cancel()
        self._dtmf_timer = asyncio.get_running_loop().call_later(
            DTMF_RESPONSE_DELAY_S, self._keys_typed
        )

    async def say(self, text: str) -> None:
        if self.backend is None or self._ending or self._failing:
            logger.warning("Call %s: cannot say %r now: no model connected", self.call_sid, text)
            return
        if self._active_response is None and not self._awaiting_response:
            self._awaiting_response = True
            self.backend.say(text)
        else:
            self._pending_says.append(text)

    async def interrupt(self) -> None:
        """Staff cleared the call's audio: cut the agent off as a barge-in would."""
        if not self._cut_off("agent_cut_off", Actor.STAFF):
            self.port.clear()  # nothing audible by our estimate; clear Twilio's buffer anyway

    async def stop(self, reason: str = "") -> None:
        if self._stopped:
            return
        self._stopped = True
        logger.info("Call %s: agent session stopping (%s)", self.call_sid, reason or "no reason")
        if self._dtmf_timer is not None:
            self._dtmf_timer.cancel()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        for backend in (self.backend, self._connecting):
            if backend is not None:
                await backend.close()
        self._flush_transcripts()
        if self._control_tasks:
            await asyncio.wait(set(self._control_tasks), timeout=STOP_TIMEOUT_S)
        if self._db_task is not None:
            self._db_queue.put_nowait(None)
            try:
                await asyncio.wait_for(asyncio.shield(self._db_task), STOP_TIMEOUT_S)
            except TimeoutError:
                logger.error("Call %s: transcript writes still pending at stop", self.call_sid)

    # -- the model's events ----------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._converse()
        except Exception as error:
            logger.exception("Call %s: agent session crashed", self.call_sid)
            self._fail("crash", repr(error))

    async def _converse(self) -> None:
        if self.config is None:
            self._fail("no_agent", f"agent {self.agent_id} not found")
            return
        try:
            backend = self._connecting = backend_for(self.config, call_sid=self.call_sid)
            await backend.connect()
        except BackendUnavailable as error:
            self._fail("connect", str(error))
            return
        finally:
            self._connecting = None
        self.backend = backend
        logger.info("Call %s: connected to %s", self.call_sid, self.config.backend)
        if self.config.greeting:
            self._awaiting_response = True
            backend.say(self.config.greeting)
        port = self.port
        async for event in backend.events():
            # What this event sends to Twilio is written here, not by waking the port's
            # writer task: one task switch fewer per audio frame.
            port.hold()
            try:
                self._handle(event)
            except Exception:
                logger.exception("Call %s: error handling %r", self.call_sid, event)
            await port.flush()
            if self._failing:
                return

    def _handle(self, event: BackendEvent) -> None:
        if type(event) is AudioDelta:  # nearly every event: skip the lookup
            self._on_audio(event)
            return
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(self, event)

    def _on_audio(self, event: AudioDelta) -> None:
        if self._ending or event.response_id in self._dropped_responses:
            return
        item_id = event.item_id
        sent = self._item_bytes.get(item_id)
        if sent is None:
            sent = 0
            self._item_offsets[item_id] = self.port.now_ms
            self._item_response[item_id] = event.response_id
        self._item_bytes[item_id] = sent + event.nbytes
        self.port.send_audio(item_id, event.payload_b64, event.nbytes)
        if self._speaker != "agent" and not self._caller_speaking:
            self._set_speaker("agent")
        self._segment_bytes += event.nbytes
        if self._segment_bytes >= SEGMENT_MAX_BYTES:
            self._end_segment()

    def _end_segment(self) -> None:
        self._segment_bytes = 0
        self.port.end_segment()

    def _on_audio_done(self, event: AudioDone) -> None:
        self._item_complete.add(event.item_id)
        self._end_segment()

    def _on_response_created(self, event: ResponseCreated) -> None:
        self._active_response = event.response_id
        self._awaiting_response = False

    def _on_response_done(self, event: ResponseDone) -> None:
        if self._active_response == event.response_id:
            self._active_response = None
        # Whatever we asked for has started by now, or was refused because this one was on.
        self._awaiting_response = False
        self._end_segment()
        if event.status == "failed":
            logger.warning("Call %s: model response %s failed", self.call_sid, event.response_id)
        if self._pending_says and self.backend is not None and not self._ending:
            self._awaiting_response = True
            self.backend.say(self._pending_says.pop(0))
        elif self._respond_when_done:
            self._respond()

    def _on_transcript_delta(self, event: AgentTranscriptDelta) -> None:
        self._agent_text.setdefault(event.item_id, []).append(event.text)

    def _on_agent_transcript(self, event: AgentTranscript) -> None:
        self._agent_text.pop(event.item_id, None)
        self._agent_line(event.item_id, event.text)

    def _on_caller_transcript(self, event: CallerTranscript) -> None:
        self._touch()
        offset_ms = self._speech_offsets.pop(event.item_id, self.port.now_ms)
        if event.text.strip():
            self._db(
                services.transcript_add,
                call_id=self.call_id,
                speaker=Speaker.CALLER,
                text=event.text.strip(),
                offset_ms=offset_ms,
                item_id=event.item_id,
            )

    def _on_speech_started(self, event: SpeechStarted) -> None:
        # Clear first: everything else can wait a millisecond, the caller's ears cannot.
        self._cut_off("barge_in", Actor.CALLER, received_at=event.received_at)
        self._caller_speaking = True
        self._set_speaker("caller")
        self._speech_offsets[event.item_id] = self.port.now_ms
        self._touch()

    def _on_speech_stopped(self, event: SpeechStopped) -> None:
        self._caller_speaking = False
        self._set_speaker("")
        self._touch()

    def _on_tool_call(self, event: ToolCall) -> None:
        if event.name == END_CALL:
            self._spawn(self._end_call(event), "end-call", tool=True)
        elif event.name == TRANSFER_TO_HUMAN:
            self._spawn(self._transfer_tool(event), "transfer", tool=True)
        else:
            logger.warning("Call %s: model called unknown tool %r", self.call_sid, event.name)
            self._tool_result(event.call_id, f"There is no function called {event.name}.")

    def _on_error(self, event: BackendError) -> None:
        if event.fatal:
            self._fail("error", f"{event.code}: {event.message}")
        else:
            logger.warning("Call %s: model error %s: %s", self.call_sid, event.code, event.message)

    def _on_closed(self, event: BackendClosed) -> None:
        self._fail("dropped", event.reason)

    _handlers: dict[type, Callable[[AgentSession, Any], None]] = {
        AudioDone: _on_audio_done,
        ResponseCreated: _on_response_created,
        ResponseDone: _on_response_done,
        AgentTranscriptDelta: _on_transcript_delta,
        AgentTranscript: _on_agent_transcript,
        CallerTranscript: _on_caller_transcript,
        SpeechStarted: _on_speech_started,
        SpeechStopped: _on_speech_stopped,
        ToolCall: _on_tool_call,
        BackendError: _on_error,
        BackendClosed: _on_closed,
    }

    # -- barge-in ----------------------------------------------------------------------------

    def _cut_off(self, kind: str, actor: str, *, received_at: float | None = None) -> bool:
        """If the agent is audible, cut it off now and make the model forget what went unheard."""
        if not self.port.tracker.is_audible(self.port.now_ms):
            return False
        cut = self.port.clear()
        clear_ms = (time.perf_counter() - received_at) * 1000 if received_at else None
        truncated = self._truncate(cut)
        self._event(
            kind,
            actor,
            {
                "heard_ms": truncated,
                **({"clear_latency_ms": round(clear_ms, 3)} if clear_ms is not None else {}),
            },
        )
        return True

    def _truncate(self, cut: dict[str, int]) -> dict[str, int]:
        """Truncate each model item a clear cut short; return {item_id: audio_end_ms}."""
        truncated = {}
        for item_id, heard_ms in cut.items():
            received = self._item_bytes.get(item_id)
            if received is None:
                continue  # a clip we played, not the model's audio
            # The model refuses a truncate past the audio it sent for the item.
            end_ms = min(heard_ms, received // BYTES_PER_MS, self.port.tracker.sent_ms(item_id))
            truncated[item_id] = end_ms
            self._interrupted[item_id] = end_ms
            if self.backend is not None:
                self.backend.truncate(item_id, end_ms)
            self._dropped_responses.add(self._item_response[item_id])
            if item_id in self._written:
                self._db(
                    services.transcript_interrupt,
                    call_id=self.call_id,
                    item_id=item_id,
                    heard_ms=end_ms,
                )
        self._segment_bytes = 0
        if self._active_response is not None and self.backend is not None:
            # Server VAD may have cancelled it already; that race is benign. Naming it keeps
            # a late cancel from cutting the reply the model starts next.
            self._dropped_responses.add(self._active_response)
            self.backend.cancel_response(self._active_response)
        return truncated

    # -- tools -------------------------------------------------------------------------------

    async def _end_call(self, event: ToolCall) -> None:
        if self._ending:
            return
        interrupted = not await self._played_out()
        if interrupted:
            logger.info("Call %s: goodbye interrupted; staying on the call", self.call_sid)
            self._event("goodbye_interrupted", Actor.CALLER, {"reason": event.arguments})
            self._tool_result(
                event.call_id,
                "The caller interrupted your goodbye, so the call is still connected. "
                "Listen to what they say and carry on.",
            )
            return
        reason = str(event.arguments.get("reason", ""))[:200]
        logger.info("Call %s: agent ends the call (%s)", self.call_sid, reason)
        await self._hang_up(EndReason.AGENT_ENDED, Actor.AGENT)

    async def _transfer_tool(self, event: ToolCall) -> None:
        config = self.config
        assert config is not None
        target = event.arguments.get("target")
        if target not in config.target_names:
            self._tool_result(
                event.call_id,
                f"There is nobody called {target!r}. Choose one of: "
                + ", ".join(config.target_names),
            )
            return
        # The caller asked for a person: transfer even if they talk over "connecting you".
        await self._played_out()
        error = await self._transfer(target, Actor.AGENT, str(event.arguments.get("reason", "")))
        if error:
            self._tool_result(
                event.call_id,
                f"The transfer failed ({error}). The caller is still with you: tell them you "
                "could not connect them, and offer to help or to try again later.",
            )

    async def _dtmf_transfer(self, digit: str, target: TargetConfig) -> None:
        error = await self._transfer(target.name, Actor.CALLER, f"caller pressed {digit}")
        if error and self.backend is not None:
            self.backend.add_context(
                f"Transferring the caller failed ({error}). Tell them, and offer to help."
            )
            self._respond()

    async def _played_out(self) -> bool:
        """Wait for what was sent to play; False only if a clear cut it short."""
        self._end_segment()
        loop = asyncio.get_running_loop()
        started = loop.time()
        if await self.port.wait_played(PLAYOUT_WAIT_S):
            return True
        if loop.time() - started >= PLAYOUT_WAIT_S - 0.05:
            # Twilio never confirmed: act anyway, a call that never ends is worse.
            logger.warning("Call %s: no mark echo after %ss", self.call_sid, PLAYOUT_WAIT_S)
            return True
        return False

    async def _transfer(self, target_name: str, actor: str, reason: str) -> str:
        """Hand the caller to `target_name`; return an error in words, or "" on success."""
        self._ending = self._handing_off = True
        try:
            await self._control(
                services.call_transfer(
                    call_id=self.call_id, actor=actor, target_name=target_name, reason=reason
                )
            )
        except services.CallControlError as error:
            logger.warning("Call %s: transfer to %s failed: %s", self.call_sid, target_name, error)
            self._ending = self._handing_off = False
            return str(error)
        logger.info("Call %s: transferred to %s", self.call_sid, target_name)
        return ""

    def _tool_result(self, call_id: str, output: str) -> None:
        if self.backend is not None:
            self.backend.send_tool_result(call_id, output)
            self._respond()

    def _keys_typed(self) -> None:
        self._dtmf_timer = None
        self._respond()

    def _respond(self) -> None:
        """Have the model speak next, unless the caller is talking (VAD then answers)."""
        if self.backend is None or self._ending or self._caller_speaking:
            return
        if self._active_response is not None or self._awaiting_response:
            self._respond_when_done = True
            return
        self._respond_when_done = False
        self._awaiting_response = True
        self.backend.create_response()

    # -- ending the call ---------------------------------------------------------------------

    async def _hang_up(self, reason: str, actor: str) -> None:
        self._ending = True
        try:
            await self._control(
                services.call_hangup(call_id=self.call_id, actor=actor, reason=reason)
            )
        except services.CallControlError as error:
            # Closing the stream still ends the call: Twilio runs <Connect action>.
            logger.error("Call %s: hang-up failed: %s", self.call_sid, error)
        try:
            await self.port.close_stream()
        except Exception as error:  # call.close may have closed it first; it is closed either way
            logger.debug("Call %s: closing the stream: %r", self.call_sid, error)

    async def _play_clip(self, name: str) -> bool:
        ulaw = assets.clip(name)
        await self.port.play_ulaw(ulaw, name)
        return await self.port.wait_played(len(ulaw) / (BYTES_PER_MS * 1000) + CLIP_WAIT_MARGIN_S)

    def _fail(self, failure: str, detail: str) -> None:
        """The model is gone: stop listening to it now, and recover in a task."""
        if self._failing or self._stopped or self._ending:
            return
        self._failing = True
        self._spawn(self._recover(failure, detail), "recover", tool=True)

    async def _recover(self, failure: str, detail: str) -> None:
        """Apologise, then hand the caller to a person, or hang up if there is nobody."""
        logger.error("Call %s: model failed (%s): %s", self.call_sid, failure, detail)
        self._event("agent_error", Actor.SYSTEM, {"failure": failure, "detail": detail[:500]})
        backend, self.backend = self.backend, None
        if backend is not None:
            await backend.close()
        self._ending = True
        await self._play_clip(APOLOGY_CLIP)
        target = self.config.default_target if self.config is not None else None
        if target is not None:
            reason = f"model failure: {failure}"
            try:
                await self._control(
                    services.call_transfer(
                        call_id=self.call_id,
                        actor=Actor.SYSTEM,
                        target_name=target.name,
                        reason=reason,
                    )
                )
                return
            except services.CallControlError as error:
                logger.error("Call %s: fallback transfer failed: %s", self.call_sid, error)
        await self._hang_up(EndReason.FAILED, Actor.SYSTEM)

    async def _watchdog(self) -> None:
        config = self.config
        assert config is not None and self._loop is not None
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            now = self._loop.time()
            if self._ending or self._failing:
                # Hanging up, transferring or recovering; a failed transfer resumes the call.
                self._last_activity = now
                continue
            if now - self._started_at >= config.max_call_seconds:
                await self._end_for_limit("max_call_seconds", config.max_call_seconds)
                return
            if self._speaker == "agent" and not self.port.tracker.is_audible(self.port.now_ms):
                self._set_speaker("")  # the agent's audio has played out, or was cleared
            if self._busy():
                self._last_activity = now
            elif now - self._last_activity >= config.idle_timeout_seconds:
                await self._end_for_limit("idle_timeout_seconds", config.idle_timeout_seconds)
                return

    def _busy(self) -> bool:
        return (
            self._caller_speaking
            or self._active_response is not None
            or bool(self._tool_tasks)
            or self.port.tracker.is_audible(self.port.now_ms)
        )

    async def _end_for_limit(self, limit: str, seconds: int) -> None:
        if self._ending or self._failing:
            return
        logger.info("Call %s: %s (%ss) reached; ending the call", self.call_sid, limit, seconds)
        self._event("limit_reached", Actor.SYSTEM, {"limit": limit, "seconds": seconds})
        self._cut_off("limit_cut_off", Actor.SYSTEM)
        self._ending = True
        backend, self.backend = self.backend, None
        if backend is not None:
            await backend.close()
        await self._play_clip(GOODBYE_CLIP)
        await self._hang_up(EndReason.TIMEOUT, Actor.SYSTEM)

    # -- transcripts -------------------------------------------------------------------------

    def _agent_line(self, item_id: str, text: str, *, heard_ms: int | None = None) -> None:
        text = text.strip()
        if not text or item_id in self._written:
            return
        self._written.add(item_id)
        if heard_ms is None:
            heard_ms = self._interrupted.get(item_id)
        self._db(
            services.transcript_add,
            call_id=self.call_id,
            speaker=Speaker.AGENT,
            text=text,
            offset_ms=self._item_offsets.get(item_id, self.port.now_ms),
            item_id=item_id,
            interrupted=heard_ms is not None,
            heard_ms=heard_ms,
        )

    def _flush_transcripts(self) -> None:
        """At stop: write what was said so far, and mark lines the hang-up cut off."""
        tracker, now_ms = self.port.tracker, self.port.now_ms
        for item_id, sent in self._item_bytes.items():
            if item_id in self._interrupted:
                continue
            heard_ms = tracker.heard_ms(item_id, now_ms)
            unheard = heard_ms + CUT_OFF_MARGIN_MS < sent // BYTES_PER_MS
            if unheard or item_id not in self._item_complete:
                self._interrupted[item_id] = heard_ms
                if item_id in self._written:
                    self._db(
                        services.transcript_interrupt,
                        call_id=self.call_id,
                        item_id=item_id,
                        heard_ms=heard_ms,
                    )
        for item_id, pieces in list(self._agent_text.items()):
            self._agent_line(item_id, "".join(pieces))
        self._agent_text.clear()

    # -- plumbing ----------------------------------------------------------------------------

    def _set_speaker(self, speaker: str) -> None:
        """Tell the live view who is audible, when that changes (never per audio frame)."""
        if speaker != self._speaker:
            self._speaker = speaker
            broadcast = services.call_speaking_broadcast(call_id=self.call_id, speaker=speaker)
            self._spawn(broadcast, "speaking")

    def _touch(self) -> None:
        if self._loop is not None:
            self._last_activity = self._loop.time()

    def _event(self, kind: str, actor: str, data: dict[str, Any]) -> None:
        self._db(_event_record, call_id=self.call_id, kind=kind, actor=actor, data=data)

    def _db(self, function: Callable[..., Any], **kwargs: Any) -> None:
        self._db_queue.put_nowait((function, kwargs))

    async def _db_writer(self) -> None:
        write = database_sync_to_async(_write_batch)
        while True:
            batch = [await self._db_queue.get()]
            while not self._db_queue.empty():
                batch.append(self._db_queue.get_nowait())
            done = None in batch
            writes = [entry for entry in batch if entry is not None]
            if writes:
                await write(self.call_sid, writes)
            if done:
                return

    async def _control(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run a call-control service so that cancelling the caller does not cancel it."""
        task = asyncio.ensure_future(coro)
        self._control_tasks.add(task)
        task.add_done_callback(self._control_done)
        return await asyncio.shield(task)

    def _control_done(self, task: asyncio.Future[Any]) -> None:
        self._control_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.debug("Call %s: control task ended with %r", self.call_sid, task.exception())

    def _spawn(
        self, coro: Coroutine[Any, Any, Any], what: str, *, tool: bool = False
    ) -> asyncio.Task[Any]:
        """A background task, cancelled at stop; `tool` ones keep the call from going idle."""
        task = asyncio.get_running_loop().create_task(
            self._guard(coro, what), name=f"agent-{what}-{self.call_sid}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if tool:
            self._tool_tasks.add(task)
            task.add_done_callback(self._tool_tasks.discard)
        return task

    async def _guard(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("Call %s: agent %s task failed", self.call_sid, what)
