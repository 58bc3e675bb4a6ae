"""AgentSession: one per call, between the media stream and a voice backend.

The session forwards caller audio to the backend, plays the model's audio through the
stream's port (calls.session.port), and acts on what the model and the caller do: barge-in,
tools, keypresses, transcripts. How a call ends (goodbye, transfer, a failed model, limits)
is in calls.session.endings; what is written to the database, in calls.session.recorder.

Rules it keeps:
- `caller_audio` is the hot path: sync, O(1), no database, no awaits.
- Barge-in sends `clear` before anything else, then truncates the model's item at what the
  caller heard (docs/bridge-pitfalls.md, pitfalls 1 and 2).
- Nothing is written per audio frame: transcripts per utterance, events per event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

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
    ToolCall,
)
from agents.history import AGENT, CALLER, Turn, caller_spoke_last
from agents.tools import END_CALL, TRANSFER_TO_HUMAN
from callmedia.audio import BYTES_PER_MS
from callmedia.chunker import CallerAudioChunker
from callmedia.tasks import TaskSet
from calls import services
from calls.models import Actor
from calls.services import amd
from calls.session.config import call_plan_load
from calls.session.endings import Endings
from calls.session.port import StreamPort
from calls.session.recorder import Recorder
from calls.session.staff import StaffHold, hand_back_context, handed_back_line, took_over_line
from calls.session.state import ModelItem, Phase

logger = logging.getLogger(__name__)

# A mark every ~1 s of model audio, as well as one per response: the tracker re-anchors on
# each echo, so a long answer's heard position stays exact to a frame or two even if Twilio
# stalls mid-answer; one small message a second is nothing next to 50 media frames.
SEGMENT_MAX_BYTES = 1000 * BYTES_PER_MS
# Keys typed in a row (an account number) make one response, this long after the last one.
DTMF_RESPONSE_DELAY_S = 1.0
WATCHDOG_INTERVAL_S = 0.2
# How long stopping waits for a hang-up or transfer under way.
STOP_TIMEOUT_S = 10.0
# At stop, an agent line the caller heard less of than this was cut off by the hang-up.
CUT_OFF_MARGIN_MS = 100
# Between attempts to reconnect a dropped model: the first retry at once, then backing off.
RECONNECT_BACKOFF_S = (0.0, 0.25, 0.5, 1.0)
# A proactive renewal that could not connect is tried again this much later.
RENEW_RETRY_S = 30.0
# Twilio's `DetectMessageEnd` value: detection waits for the beep, so a message can be left.
DETECT_MESSAGE_END = "DetectMessageEnd"


class AgentSession:
    def __init__(
        self,
        port: StreamPort,
        *,
        call_id: str,
        call_sid: str,
        agent_id: int | None,
        resumed_at_ms: int | None = None,
        resume_note: str = "",
    ) -> None:
        """`resumed_at_ms`: the call began on an earlier stream, this long before this one.

        A resumed call does not greet: its model session gets the conversation so far.
        """
        self.port = port
        # Set when the call comes back to the agent on a new stream (a transfer not taken):
        # told to the model in place of the greeting.
        self.resume_note = resume_note
        self.call_id = str(call_id)
        self.call_sid = call_sid
        self.agent_id = agent_id
        self.resumed = resumed_at_ms is not None
        self.config: AgentConfig | None = None
        self.backend: Backend | None = None
        self._connecting: Backend | None = None
        self.phase = Phase.ACTIVE
        self.recorder = Recorder(
            call_id=self.call_id, call_sid=call_sid, offset_base_ms=resumed_at_ms or 0
        )
        self.endings = Endings(self)

        owner = f"Call {call_sid}"
        self._tasks = TaskSet(owner)  # the conversation, the watchdog, broadcasts
        self._actions = TaskSet(owner)  # tools and endings: the call is not idle meanwhile
        # Hang-ups and transfers, shielded from cancellation; their callers handle errors.
        self._controls = TaskSet(owner, failure_level=logging.DEBUG)
        self._dtmf_timer: asyncio.TimerHandle | None = None
        self._started_at = 0.0
        self._last_activity = 0.0

        self._items: dict[str, ModelItem] = {}
        self._caller_offsets: dict[str, int] = {}  # caller item -> stream time speech started
        self._caller_speaking = False
        self._speaker = ""  # who the live view shows as audible: "caller", "agent" or ""
        self._active_response: str | None = None
        self._awaiting_response = False  # we asked for one; response.created not seen yet
        self._respond_when_done = False
        self._pending_says: list[str] = []
        # Sentences staff typed: the one asked of the model, then by the response speaking it.
        self._say_asked: str | None = None
        self._staff_says: dict[str, str] = {}
        self._dropped_responses: set[str] = set()
        self._segment_bytes = 0
        # Answering-machine detection on a call we placed: until Twilio's verdict (or
        # AMD_WAIT_SECONDS), the agent neither greets nor hears what answered.
        self._machine_detection = ""
        self._amd: asyncio.Future[str] | None = None
        self._hearing = True
        self._response_waiters: list[asyncio.Future[str]] = []

        # The conversation so far, replayed into a new model session (agents.history).
        self.history: list[Turn] = []
        self._model_lost: str | None = None  # why the model connection ended, once it has
        self._model_since = 0.0  # loop time the current model session opened
        self._reconnecting = False
        self._renewing = False

        self.held: StaffHold | None = None  # a member of staff is talking to the caller
        # Caller frames reach the model CALLER_AUDIO_CHUNK_MS at a time: fewer messages.
        self._caller_chunks = CallerAudioChunker(
            self._send_caller_chunk, chunk_ms=settings.CALLER_AUDIO_CHUNK_MS
        )

    # -- called by the consumer ----------------------------------------------------------

    async def start(self) -> None:
        self._started_at = self._last_activity = asyncio.get_running_loop().time()
        # The call's limits count from its start, on whichever stream it began.
        self._started_at -= self.recorder.offset_base_ms / 1000
        self.recorder.start()
        try:
            plan = await database_sync_to_async(call_plan_load)(self.call_id, self.agent_id)
            if self.resumed:
                self.history = await database_sync_to_async(services.transcript_history)(
                    call_id=self.call_id
                )
        except Exception:
            logger.exception("Call %s: cannot load agent %s", self.call_sid, self.agent_id)
        else:
            self.config = plan.config
            if plan.missing_variables:
                self.recorder.event(
                    "prompt_variables_missing", Actor.SYSTEM, {"names": plan.missing_variables}
                )
            if plan.machine_detection and not self.resumed:
                self._machine_detection = plan.machine_detection
                self._amd = asyncio.get_running_loop().create_future()
                self._hearing = False
                if plan.answered_by:  # the verdict came before the stream
                    self._amd.set_result(plan.answered_by)
        self._spawn(self._run(), "run")
        if self.config is not None:
            self._spawn(self._watchdog(), "watchdog")

    def caller_audio(self, payload_b64: str) -> None:
        if self.backend is not None and self._hearing:
            self._caller_chunks.add(payload_b64)

    def flush_caller_audio(self) -> None:
        """Send the caller audio gathered so far now: the model must have it before what
        comes next (a keypress, a take-over or hand-back, the end of the stream)."""
        self._caller_chunks.flush()

    def _send_caller_chunk(self, payload_b64: str) -> None:
        backend = self.backend
        if backend is not None:
            backend.send_audio(payload_b64)

    def amd_result(self, answered_by: str) -> None:
        """Twilio's answering-machine verdict (from any process, via the channel layer)."""
        if self._amd is not None and not self._amd.done():
            self._amd.set_result(answered_by)

    async def dtmf(self, digit: str) -> None:
        config, backend = self.config, self.backend
        if config is None or backend is None or self.phase is not Phase.ACTIVE:
            return
        self._touch()
        # The keys are part of what happened (the call's summary lists them).
        self.recorder.event("key_pressed", Actor.CALLER, {"digit": digit})
        target = config.default_target
        if digit == config.transfer_digit and target is not None:
            self.cut_off("dtmf_transfer_cut_off", Actor.CALLER)
            backend.keypad(digit, transferring=True)
            self.spawn_action(self.endings.key_transfer(digit, target), "dtmf-transfer")
            return
        if digit == config.transfer_digit:
            # The caller wants a person and this agent has nobody: staff should know.
            self.recorder.event("transfer_unavailable", Actor.CALLER, {"digit": digit})
        backend.keypad(digit, transferring=False)
        if self._dtmf_timer is not None:
            self._dtmf_timer.cancel()
        self._dtmf_timer = asyncio.get_running_loop().call_later(
            DTMF_RESPONSE_DELAY_S, self._keys_typed
        )

    async def say(self, text: str) -> bool:
        """Have the agent speak `text` (after what it is saying); False if it cannot now."""
        if self.backend is None or self.phase is not Phase.ACTIVE:
            logger.warning("Call %s: cannot say %r now: no model connected", self.call_sid, text)
            return False
        if self._active_response is None and not self._awaiting_response:
            self._say_for_staff(text)
        else:
            self._pending_says.append(text)
        return True

    async def interrupt(self) -> None:
        """Staff cleared the call's audio: cut the agent off as a barge-in would."""
        if not self.cut_off("agent_cut_off", Actor.STAFF):
            self.port.clear()  # nothing audible by our estimate; clear Twilio's buffer anyway

    def take_over(self, user: str) -> None:
        """A member of staff talks to the caller: the agent stops at once and stays quiet."""
        if self.held is not None:
            return
        self.flush_caller_audio()
        self.held = StaffHold(user)
        if not self.cut_off("agent_cut_off", Actor.STAFF):
            self.port.clear()
        if self._active_response is not None and self.backend is not None:
            self._dropped_responses.add(self._active_response)
            self.backend.cancel_response(self._active_response)
        self._pending_says.clear()
        self._respond_when_done = False
        if self.backend is not None:
            self.backend.set_auto_respond(False)
        self.recorder.staff_line(text=took_over_line(user), offset_ms=self.port.now_ms)

    def hand_back(self, user: str, *, reason: str = "handed back") -> None:
        """The call is the agent's again; it answers when the caller next speaks."""
        hold, self.held = self.held, None
        if hold is None:
            return
        self.flush_caller_audio()
        if self.backend is not None:
            self.backend.add_context(hand_back_context(hold, datetime.now(UTC)))
            self.backend.set_auto_respond(True)
        self._touch()
        self.recorder.staff_line(text=handed_back_line(user, reason), offset_ms=self.port.now_ms)

    async def stop(self, reason: str = "") -> None:
        if self.phase is Phase.STOPPED:
            return
        self.phase = Phase.STOPPED
        logger.info("Call %s: agent session stopping (%s)", self.call_sid, reason or "no reason")
        if self._dtmf_timer is not None:
            self._dtmf_timer.cancel()
        self.flush_caller_audio()  # the caller's last words reach the model's transcript
        self._tasks.cancel()
        self._actions.cancel()
        for backend in (self.backend, self._connecting):
            if backend is not None:
                await backend.close()
        self._flush_transcripts()
        await self._controls.wait(STOP_TIMEOUT_S)
        await self.recorder.close()

    # -- the model's events ----------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._converse()
        except Exception as error:
            logger.exception("Call %s: agent session crashed", self.call_sid)
            self.endings.fail("crash", repr(error))

    async def _converse(self) -> None:
        if self.config is None:
            self.endings.fail("no_agent", f"agent {self.agent_id} not found")
            return
        try:
            backend = await self._connect()
        except BackendUnavailable as error:
            self.endings.fail("connect", str(error))
            return
        self._model_since = asyncio.get_running_loop().time()
        logger.info("Call %s: connected to %s", self.call_sid, self.config.backend)
        self.backend = backend
        if self.held is not None:
            backend.set_auto_respond(False)
        if self.resume_note:
            # Back from a transfer nobody took: the model has the call so far and is told
            # why, and speaks first (the caller is waiting to hear what happened).
            self.recorder.event("resumed", Actor.SYSTEM, {"note": self.resume_note})
            backend.restore(self.history)
            backend.add_context(self.resume_note)
            self.respond()
        elif self.resumed:
            self._restore(backend)  # the caller was greeted on the call's first stream
        elif self._amd is not None:
            self._spawn(self._after_machine_detection(), "amd")
        elif self.config.greeting:
            self.greet()
        while True:
            backend = self.backend
            lost = await self._listen(backend)
            if self.phase is not Phase.ACTIVE:
                return  # failing, ending or stopped: nobody needs the model any more
            if lost is None and self.backend is not None and self.backend is not backend:
                continue  # renewed: read the new session
            reason = lost or "the model connection ended"
            if not await self._reconnect(reason):
                self.endings.fail("dropped", reason)
                return

    async def _listen(self, backend: Backend) -> str | None:
        """Handle `backend`'s events until it ends; why it was lost, or None if we let it go."""
        self._model_lost = None
        port = self.port
        async for event in backend.events():
            # What this event sends to Twilio is written here, not by waking the port's
            # writer task: one task switch fewer per audio frame. Events that arrived
            # together are handled before it is written: their audio leaves as one message.
            port.hold()
            try:
                self._handle(event)
            except Exception:
                logger.exception("Call %s: error handling %r", self.call_sid, event)
            if backend.events_waiting():
                continue
            await port.flush()
            if self.phase is Phase.FAILING:
                return None
            if self._model_lost is not None:
                return self._model_lost
        await port.flush()  # the stream ended while more seemed to be coming: nothing waits
        return "the model connection ended" if self.backend is backend else None

    async def _connect(self) -> Backend:
        """A new, connected backend for this call; BackendUnavailable if not."""
        assert self.config is not None
        backend = self._connecting = backend_for(self.config, call_sid=self.call_sid)
        try:
            await backend.connect()
        except BaseException:
            await backend.close()
            raise
        finally:
            self._connecting = None
        return backend

    def _restore(self, backend: Backend) -> None:
        """Give a new model session the conversation so far; answer if the caller spoke last."""
        backend.restore(self.history)
        if self.held is not None:
            backend.set_auto_respond(False)  # staff hold the call: the new session listens
        elif caller_spoke_last(self.history):
            self._awaiting_response = True
            backend.create_response()

    # -- a new model session mid-call -----------------------------------------------------

    async def _reconnect(self, reason: str) -> bool:
        """The model connection was lost: open a new session with the conversation so far.

        Tries for MODEL_RECONNECT_TIMEOUT_SECONDS; False if no attempt succeeded (the caller
        then gets the apology and the fallback). Caller audio meanwhile is not heard.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + settings.MODEL_RECONNECT_TIMEOUT_SECONDS
        self._reconnecting = True
        logger.warning("Call %s: model connection lost (%s); reconnecting", self.call_sid, reason)
        self.recorder.event("model_reconnecting", Actor.SYSTEM, {"reason": reason[:500]})
        old, self.backend = self.backend, None
        if old is not None:
            await old.close()
        self._model_gone()
        error = ""
        try:
            for attempt, pause in enumerate(RECONNECT_BACKOFF_S, start=1):
                if loop.time() + pause >= deadline:
                    break
                await asyncio.sleep(pause)
                try:
                    async with asyncio.timeout_at(deadline):
                        backend = await self._connect()
                except (BackendUnavailable, TimeoutError) as failure:
                    error = str(failure) or "timed out"
                    continue
                if self.phase is not Phase.ACTIVE:
                    await backend.close()
                    return False
                self._restore(backend)
                self.backend = backend
                self._model_since = loop.time()
                took_ms = round((loop.time() - started) * 1000)
                logger.info("Call %s: model reconnected in %d ms", self.call_sid, took_ms)
                self.recorder.event(
                    "model_reconnected",
                    Actor.SYSTEM,
                    {"attempts": attempt, "took_ms": took_ms, "turns": len(self.history)},
                )
                return True
        finally:
            self._reconnecting = False
        logger.error("Call %s: could not reconnect the model: %s", self.call_sid, error)
        return False

    async def _renew(self) -> None:
        """Move to a new model session before the current one reaches its time limit."""
        loop = asyncio.get_running_loop()
        self._renewing = True
        try:
            try:
                backend = await self._connect()
            except BackendUnavailable as error:
                logger.warning("Call %s: cannot renew the model session: %s", self.call_sid, error)
                self._model_since += RENEW_RETRY_S
                return
            old = self.backend
            if self.phase is not Phase.ACTIVE or old is None:
                await backend.close()
                return
            age_s = round(loop.time() - self._model_since)
            self._model_gone()
            self._restore(backend)
            self.backend = backend
            self._model_since = loop.time()
            await old.close()  # its reader stops, and reads the new session instead
            logger.info("Call %s: model session renewed after %d s", self.call_sid, age_s)
            self.recorder.event(
                "model_renewed", Actor.SYSTEM, {"age_s": age_s, "turns": len(self.history)}
            )
        finally:
            self._renewing = False

    def _model_gone(self) -> None:
        """Forget the old session's responses; keep what it said, as transcript and history."""
        self._write_pending_lines()
        self._active_response = None
        self._awaiting_response = False
        self._respond_when_done = False

    def greet(self) -> None:
        if self.config is not None and self.config.greeting and self.backend is not None:
            self._awaiting_response = True
            self.backend.say(self.config.greeting)

    async def _after_machine_detection(self) -> None:
        """Greet a person once Twilio says it is one; leave a message or hang up on a machine.

        Bounded by AMD_WAIT_SECONDS from the start of the stream: past it, the agent greets
        whoever is there, as for an `unknown` verdict.
        """
        assert self._amd is not None and self.config is not None
        loop = asyncio.get_running_loop()
        bound_s = settings.AMD_WAIT_SECONDS - (loop.time() - self._started_at)
        try:
            answered_by = await asyncio.wait_for(asyncio.shield(self._amd), max(bound_s, 0))
        except TimeoutError:
            answered_by = ""
            self.recorder.event(
                "amd_timeout", Actor.SYSTEM, {"waited_s": settings.AMD_WAIT_SECONDS}
            )
        if self.phase is not Phase.ACTIVE:
            return
        message = self.config.voicemail_message.strip()
        if not amd.is_machine(answered_by) and answered_by != amd.FAX:
            logger.info("Call %s: answered by %s", self.call_sid, answered_by or "nobody knows")
            self._hearing = True
            self._touch()
            self.greet()
        elif answered_by in amd.MESSAGE_ENDS and self._machine_detection == DETECT_MESSAGE_END:
            if message:
                self.spawn_action(self.endings.voicemail(message), "voicemail")
            else:
                logger.warning("Call %s: no voicemail message to leave", self.call_sid)
                self.spawn_action(self.endings.machine(answered_by), "machine")
        else:
            self.spawn_action(self.endings.machine(answered_by), "machine")

    async def speak(self, text: str, timeout_s: float) -> bool:
        """Say `text` as a response of its own; True once the model finished generating it."""
        backend = self.backend
        if backend is None or self.phase is not Phase.ACTIVE:
            return False
        waiter = asyncio.get_running_loop().create_future()
        self._response_waiters.append(waiter)
        self._awaiting_response = True
        backend.say(text)
        try:
            return await asyncio.wait_for(waiter, timeout_s) == "completed"
        except TimeoutError:
            return False
        finally:
            if waiter in self._response_waiters:
                self._response_waiters.remove(waiter)

    def _handle(self, event: BackendEvent) -> None:
        if type(event) is AudioDelta:  # nearly every event: skip the lookup
            self._on_audio(event)
            return
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(self, event)

    def _on_audio(self, event: AudioDelta) -> None:
        if self.phase is not Phase.ACTIVE or event.response_id in self._dropped_responses:
            return
        item = self._items.get(event.item_id)
        if item is None:
            item = self._items[event.item_id] = ModelItem(event.item_id)
        if item.offset_ms is None:
            item.offset_ms = self.port.now_ms
            item.response_id = event.response_id
            if event.response_id in self._staff_says:
                self._staff_say_spoken(item, self._staff_says.pop(event.response_id))
        self.port.send_audio(event.item_id, event.payload_b64, event.nbytes)
        if self._speaker != "agent" and not self._caller_speaking:
            self._set_speaker("agent")
        self._segment_bytes += event.nbytes
        if self._segment_bytes >= SEGMENT_MAX_BYTES:
            self.end_segment()

    def end_segment(self) -> None:
        """Close the audio sent so far with a mark."""
        self._segment_bytes = 0
        self.port.end_segment()

    def _item(self, item_id: str) -> ModelItem:
        item = self._items.get(item_id)
        if item is None:
            item = self._items[item_id] = ModelItem(item_id)
        return item

    def _on_audio_done(self, event: AudioDone) -> None:
        self._item(event.item_id).audio_done = True
        self.end_segment()

    def _on_response_created(self, event: ResponseCreated) -> None:
        self._active_response = event.response_id
        self._awaiting_response = False
        if self._say_asked is not None:
            self._staff_says[event.response_id] = self._say_asked
            self._say_asked = None
        if self.held is not None and self.backend is not None:
            # Staff hold the call: whatever started it, the caller must not hear it.
            self._dropped_responses.add(event.response_id)
            self.backend.cancel_response(event.response_id)

    def _on_response_done(self, event: ResponseDone) -> None:
        if self._active_response == event.response_id:
            self._active_response = None
        # Whatever we asked for has started by now, or was refused because this one was on.
        self._awaiting_response = False
        self.end_segment()
        waiters, self._response_waiters = self._response_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(event.status)
        if event.status == "failed":
            logger.warning("Call %s: model response %s failed", self.call_sid, event.response_id)
        if self._pending_says and self.backend is not None and self.phase is Phase.ACTIVE:
            self._say_for_staff(self._pending_says.pop(0))
        elif self._respond_when_done:
            self.respond()

    def _say_for_staff(self, text: str) -> None:
        assert self.backend is not None
        self._awaiting_response = True
        self._say_asked = text
        self.backend.say(text)

    def _staff_say_spoken(self, item: ModelItem, text: str) -> None:
        """A sentence staff typed starts playing now: its line and log entry say so, now."""
        item.staff_say = text
        self.recorder.staff_say_spoken(text=text)

    def _on_transcript_delta(self, event: AgentTranscriptDelta) -> None:
        self._item(event.item_id).text.append(event.text)

    def _on_agent_transcript(self, event: AgentTranscript) -> None:
        item = self._item(event.item_id)
        item.text.clear()
        self._agent_line(item, event.text)

    def _on_caller_transcript(self, event: CallerTranscript) -> None:
        self._touch()
        offset_ms = self._caller_offsets.pop(event.item_id, self.port.now_ms)
        text = event.text.strip()
        if text:
            if self.held is not None:
                self.held.caller_lines.append(text)
            self.recorder.caller_line(item_id=event.item_id, text=text, offset_ms=offset_ms)
            self.history.append(
                Turn(CALLER, text, self.recorder.call_offset_ms(offset_ms), item_id=event.item_id)
            )

    def _on_speech_started(self, event: SpeechStarted) -> None:
        # Clear first: everything else can wait a millisecond, the caller's ears cannot.
        self.cut_off("barge_in", Actor.CALLER, received_at=event.received_at)
        self._caller_speaking = True
        self._set_speaker("caller")
        self._caller_offsets[event.item_id] = self.port.now_ms
        self._touch()

    def _on_speech_stopped(self, event: SpeechStopped) -> None:
        self._caller_speaking = False
        self._set_speaker("")
        self._touch()

    def _on_tool_call(self, event: ToolCall) -> None:
        if event.name == END_CALL:
            self.spawn_action(self.endings.goodbye(event), "end-call")
        elif event.name == TRANSFER_TO_HUMAN:
            self.spawn_action(self.endings.transfer_tool(event), "transfer")
        else:
            logger.warning("Call %s: model called unknown tool %r", self.call_sid, event.name)
            self.tool_result(event.call_id, f"There is no function called {event.name}.")

    def _on_error(self, event: BackendError) -> None:
        if event.retryable:
            self._model_lost = f"{event.code}: {event.message}"
        elif event.fatal:
            self.endings.fail("error", f"{event.code}: {event.message}")
        else:
            logger.warning("Call %s: model error %s: %s", self.call_sid, event.code, event.message)

    def _on_closed(self, event: BackendClosed) -> None:
        self._model_lost = event.reason  # _converse reconnects, or fails if it cannot

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

    def cut_off(self, kind: str, actor: str, *, received_at: float | None = None) -> bool:
        """If the agent is audible, cut it off now and make the model forget what went unheard."""
        if not self.port.is_audible():
            return False
        cut = self.port.clear()
        clear_ms = (time.perf_counter() - received_at) * 1000 if received_at else None
        truncated = self._truncate(cut)
        self.recorder.event(
            kind,
            actor,
            {
                "heard_ms": truncated,
                **({"clear_latency_ms": round(clear_ms, 3)} if clear_ms is not None else {}),
            },
        )
        return True

    def _truncate(self, cut: dict[str, int]) -> dict[str, int]:
        """Truncate each model item a clear cut short; return {item_id: audio_end_ms}.

        `cut` is what the port knows: the items whose audio was not all heard. The item the
        model is still streaming was cut short too even when everything of it that reached
        Twilio has played (a model streaming at about real time keeps Twilio's buffer a
        frame deep, or empty): the model has generated more of it than the caller heard.
        """
        if self._active_response is not None:
            for item in self._items.values():
                streaming = item.response_id == self._active_response and not item.audio_done
                if streaming and item.has_audio and item.heard_ms is None:
                    cut.setdefault(item.id, self.port.heard_ms(item.id))
        truncated = {}
        for item_id, heard_ms in cut.items():
            item = self._items.get(item_id)
            if item is None or not item.has_audio:
                continue  # a clip we played, not the model's audio
            # The model refuses a truncate past the audio it sent for the item.
            end_ms = min(heard_ms, self.port.sent_ms(item_id))
            truncated[item_id] = item.heard_ms = end_ms
            if self.backend is not None:
                self.backend.truncate(item_id, end_ms)
            self._dropped_responses.add(item.response_id)
            if item.written:
                self.recorder.agent_line_cut(item_id=item_id, heard_ms=end_ms)
                for turn in self.history:
                    if turn.item_id == item_id:
                        turn.heard_ms = end_ms
        self._segment_bytes = 0
        if self._active_response is not None and self.backend is not None:
            # Server VAD may have cancelled it already; that race is benign. Naming it keeps
            # a late cancel from cutting the reply the model starts next.
            self._dropped_responses.add(self._active_response)
            self.backend.cancel_response(self._active_response)
        return truncated

    # -- turns -------------------------------------------------------------------------------

    def tool_result(self, call_id: str, output: str) -> None:
        if self.backend is not None:
            self.backend.send_tool_result(call_id, output)
            self.respond()

    def respond(self) -> None:
        """Have the model speak next, unless the caller is talking (VAD then answers)."""
        if self.backend is None or self.phase is not Phase.ACTIVE or self._caller_speaking:
            return
        if self.held is not None:
            return  # staff are talking; the model waits for the hand-back
        if self._active_response is not None or self._awaiting_response:
            self._respond_when_done = True
            return
        self._respond_when_done = False
        self._awaiting_response = True
        self.backend.create_response()

    def _keys_typed(self) -> None:
        self._dtmf_timer = None
        self.respond()

    async def drop_backend(self) -> None:
        """Stop hearing the model: close its connection."""
        backend, self.backend = self.backend, None
        if backend is not None:
            await backend.close()

    # -- limits ------------------------------------------------------------------------------

    async def _watchdog(self) -> None:
        config = self.config
        assert config is not None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            now = loop.time()
            if self.phase is not Phase.ACTIVE:
                # Hanging up, transferring or recovering; a failed transfer resumes the call.
                self._last_activity = now
                continue
            if now - self._started_at >= config.max_call_seconds:
                await self.endings.limit_reached("max_call_seconds", config.max_call_seconds)
                return
            if (
                self.backend is not None
                and not self._renewing
                and now - self._model_since >= settings.REALTIME_SESSION_RENEW_SECONDS
                and self.is_quiet()
            ):
                self._spawn(self._renew(), "renew")
            if self._speaker == "agent" and not self.port.is_audible():
                self._set_speaker("")  # the agent's audio has played out, or was cleared
            if self._busy():
                self._last_activity = now
            elif now - self._last_activity >= config.idle_timeout_seconds:
                await self.endings.limit_reached(
                    "idle_timeout_seconds", config.idle_timeout_seconds
                )
                return

    def is_quiet(self) -> bool:
        """Nobody is speaking or about to: a moment to change streams or model sessions."""
        return self.phase is Phase.ACTIVE and not self._busy() and not self._awaiting_response

    def _busy(self) -> bool:
        return (
            self._caller_speaking
            or self._reconnecting
            or self.held is not None
            or self._active_response is not None
            or bool(self._actions)
            or self.port.is_audible()
        )

    # -- transcripts -------------------------------------------------------------------------

    def _agent_line(self, item: ModelItem, text: str) -> None:
        text = text.strip()
        if not text or item.written:
            return
        item.written = True
        offset_ms = item.offset_ms if item.offset_ms is not None else self.port.now_ms
        self.recorder.agent_line(
            item_id=item.id,
            text=text,
            offset_ms=offset_ms,
            heard_ms=item.heard_ms,
            staff_say=item.staff_say,
        )
        self.history.append(
            Turn(AGENT, text, self.recorder.call_offset_ms(offset_ms), item.heard_ms, item.id)
        )

    def _flush_transcripts(self) -> None:
        """At stop: write what was said so far, and mark lines the hang-up cut off."""
        port = self.port
        for item in self._items.values():
            if not item.has_audio or item.heard_ms is not None:
                continue
            heard_ms = port.heard_ms(item.id)
            unheard = heard_ms + CUT_OFF_MARGIN_MS < port.sent_ms(item.id)
            if unheard or not item.audio_done:
                item.heard_ms = heard_ms
                if item.written:
                    self.recorder.agent_line_cut(item_id=item.id, heard_ms=heard_ms)
        self._write_pending_lines()

    def _write_pending_lines(self) -> None:
        """Write the agent lines whose transcript has not finished arriving, as far as it got."""
        for item in self._items.values():
            if item.text:
                self._agent_line(item, "".join(item.text))
                item.text.clear()

    # -- plumbing ----------------------------------------------------------------------------

    def _set_speaker(self, speaker: str) -> None:
        """Tell the live view who is audible, when that changes (never per audio frame)."""
        if speaker != self._speaker:
            self._speaker = speaker
            broadcast = services.call_speaking_broadcast(call_id=self.call_id, speaker=speaker)
            self._spawn(broadcast, "speaking")

    def _touch(self) -> None:
        self._last_activity = asyncio.get_running_loop().time()

    async def control(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        """Run a call-control service so that cancelling the caller does not cancel it."""
        task = self._controls.spawn(coroutine, f"agent-control-{self.call_sid}")
        return await asyncio.shield(task)

    def spawn_action(self, coroutine: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
        """A tool or an ending: cancelled at stop, and the call is not idle while it runs."""
        return self._actions.spawn(coroutine, f"agent-{what}-{self.call_sid}")

    def _spawn(self, coroutine: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
        return self._tasks.spawn(coroutine, f"agent-{what}-{self.call_sid}")
