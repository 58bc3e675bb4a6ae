"""An offline backend for development and demos: espeak-ng speech, no model, no network.

It behaves towards the session like the Realtime model, through the same normalized events:
- it speaks the greeting, sentences staff type, and short canned replies (espeak-ng);
- a simple energy VAD on the caller's mu-law reports SpeechStarted/SpeechStopped, so
  barge-in works as with the model's server VAD, and it answers when the caller stops;
- a key menu: `0` asks for the default transfer target and `#` says goodbye and calls
  `end_call`, both through the session's ordinary tool path.

It understands no words: every spoken turn gets the next canned reply.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from agents import speech
from agents.tools import END_CALL, TRANSFER_TO_HUMAN
from callmedia.audio import BYTES_PER_MS, FRAME_MS, ulaw_rms
from callmedia.outbox import Outbox

from .base import (
    AgentConfig,
    AgentTranscript,
    AudioDelta,
    AudioDone,
    Backend,
    BackendEvent,
    BackendUnavailable,
    CallerTranscript,
    ResponseCreated,
    ResponseDone,
    SpeechStarted,
    SpeechStopped,
    ToolCall,
)

logger = logging.getLogger(__name__)

# Energy VAD on 20 ms frames. Speech from a phone sits well above 1000 (16-bit RMS); line
# noise and comfort noise stay under a few hundred.
SPEECH_RMS = 600
SPEECH_START_MS = 60  # this much loud audio in a row starts a turn
SPEECH_STOP_MS = 600  # this much quiet audio in a row ends it
# Agent audio goes out in chunks of this size, like the model's deltas.
DELTA_BYTES = 100 * BYTES_PER_MS

# The menu offers only what the agent can do: "0" reaches a person only if it has a default
# transfer target to reach.
MENU = "Press 0 to talk to a person, or the pound key to end the call."
MENU_WITHOUT_TRANSFER = "Press the pound key to end the call."
REPLY_OPENINGS = (
    "I'm the offline demo agent, so I can't understand what you said.",
    "Sorry, I only know a few tricks.",
    "Thanks for talking to me.",
)
GOODBYE = "Thank you for calling. Goodbye!"
# After news it cannot read (a transfer nobody took, staff handing the call back).
BACK_WITH_YOU = "I'm back with you."
CONNECTING = "Connecting you to a person now."
NOBODY_TO_TRANSFER = "Sorry, there is nobody I can connect you to. " + MENU_WITHOUT_TRANSFER


@dataclass(frozen=True)
class _Utterance:
    """One response: a sentence to speak, and the tool to call once it is sent."""

    text: str
    tool: str = ""
    arguments: dict | None = None


class EnergyVad:
    """Turn 20 ms mu-law frames into speech start/stop decisions by their loudness."""

    def __init__(
        self,
        *,
        threshold_rms: int = SPEECH_RMS,
        start_ms: int = SPEECH_START_MS,
        stop_ms: int = SPEECH_STOP_MS,
    ) -> None:
        self.threshold_rms = threshold_rms
        self.start_frames = max(1, start_ms // FRAME_MS)
        self.stop_frames = max(1, stop_ms // FRAME_MS)
        self.speaking = False
        self.speech_frames = 0  # frames in the current turn, for its length
        self._run = 0  # loud frames in a row (silent) or quiet frames in a row (speaking)

    def feed(self, ulaw: bytes) -> str | None:
        """Return "started" or "stopped" when this frame changes the state, else None."""
        loud = ulaw_rms(ulaw) >= self.threshold_rms
        if self.speaking:
            self.speech_frames += 1
            self._run = 0 if loud else self._run + 1
            if self._run >= self.stop_frames:
                self.speaking, self._run = False, 0
                self.speech_frames -= self.stop_frames  # the quiet that ended it
                return "stopped"
            return None
        self._run = self._run + 1 if loud else 0
        if self._run >= self.start_frames:
            self.speaking, self._run = True, 0
            self.speech_frames = self.start_frames
            return "started"
        return None


class LocalBackend(Backend):
    def __init__(self, config: AgentConfig, *, call_sid: str) -> None:
        self.config = config
        self.call_sid = call_sid
        self.vad = EnergyVad()
        self.truncated: dict[str, int] = {}  # item_id -> ms the caller heard
        self._events: asyncio.Queue[BackendEvent | None] | None = None
        # Utterances to speak, one response at a time, as the model does.
        self._work: Outbox[_Utterance] = Outbox(self._respond, name=f"local-agent-{call_sid}")
        self._speaking: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self.menu = MENU if config.default_target is not None else MENU_WITHOUT_TRANSFER
        self._replies = itertools.cycle(f"{opening} {self.menu}" for opening in REPLY_OPENINGS)
        self._caller_item = ""
        self._pending_key = ""
        self._told = False  # context was added since the last answer
        self._closing = False
        # Like server VAD's create_response: off while a member of staff holds the call.
        self.auto_respond = True

    # -- connection -----------------------------------------------------------------------

    async def connect(self) -> None:
        try:
            # Loads espeak-ng (and caches the greeting) now, so a broken install fails here.
            await speech.speak(self.config.greeting or self.menu)
        except (OSError, speech.SpeechError) as error:
            raise BackendUnavailable(f"espeak-ng is not usable: {error}") from error
        self._events = asyncio.Queue()
        self._work.start()

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._work.clear()
        if self._speaking is not None:
            self._speaking.cancel()
            await asyncio.gather(self._speaking, return_exceptions=True)
        await self._work.stop()
        if self._events is not None:
            self._events.put_nowait(None)

    async def events(self) -> AsyncIterator[BackendEvent]:
        if self._events is None:
            raise BackendUnavailable("not connected")
        while True:
            event = await self._events.get()
            if event is None:
                return
            yield event

    # -- what the session asks ------------------------------------------------------------

    def send_audio(self, payload_b64: str) -> None:
        if self._closing:
            return
        try:
            change = self.vad.feed(base64.b64decode(payload_b64))
        except (binascii.Error, ValueError):
            return
        if change == "started":
            self._caller_item = f"local-caller-{next(self._ids)}"
            self._emit(SpeechStarted(self._caller_item, time.perf_counter()))
        elif change == "stopped":
            self._emit(SpeechStopped(self._caller_item))
            # No words to recognise; the transcript says that someone spoke, and how long.
            spoken_s = self.vad.speech_frames * FRAME_MS / 1000
            self._emit(CallerTranscript(self._caller_item, f"[speech, {spoken_s:.1f} s]"))
            # Like the model's server VAD: the end of the caller's turn starts a response.
            if self.auto_respond:
                self.create_response()

    def create_response(self) -> None:
        key, self._pending_key = self._pending_key, ""
        told, self._told = self._told, False
        if key:
            self._queue(self._answer_key(key))
        elif told:
            self._queue(_Utterance(f"{BACK_WITH_YOU} {self.menu}"))
        else:
            self._queue(_Utterance(next(self._replies)))

    def say(self, text: str) -> None:
        self._queue(_Utterance(text))

    def set_auto_respond(self, respond: bool) -> None:
        self.auto_respond = respond

    def truncate(self, item_id: str, audio_end_ms: int) -> None:
        self.truncated[item_id] = audio_end_ms

    def cancel_response(self, response_id: str) -> None:
        # One utterance at a time: whatever is speaking is the response the session means.
        if self._speaking is not None and not self._speaking.done():
            self._speaking.cancel()

    def send_tool_result(self, call_id: str, output: str) -> None:
        logger.info("Call %s: local agent got a tool result: %s", self.call_sid, output[:200])

    def add_context(self, text: str) -> None:
        # No model reads it: the next answer says the caller is back, then the menu.
        logger.debug("Call %s: local agent told: %s", self.call_sid, text)
        self._told = True

    def keypad(self, digit: str, *, transferring: bool) -> None:
        if not transferring:
            self._pending_key = digit

    # -- responses ------------------------------------------------------------------------

    def _answer_key(self, key: str) -> _Utterance:
        if key == "#":
            return _Utterance(GOODBYE, END_CALL, {"reason": "the caller pressed #"})
        if key == "0":
            target = self.config.default_target
            if target is None:
                return _Utterance(NOBODY_TO_TRANSFER)
            arguments = {"target": target.name, "reason": "the caller pressed 0"}
            return _Utterance(CONNECTING, TRANSFER_TO_HUMAN, arguments)
        return _Utterance(f"You pressed {'star' if key == '*' else key}. {self.menu}")

    def _queue(self, utterance: _Utterance) -> None:
        if self._closing:
            return
        self._work.post(utterance)

    async def _respond(self, utterance: _Utterance) -> None:
        """Speak one queued utterance as one response; cancel_response cuts it short."""
        response_id = f"local-response-{next(self._ids)}"
        self._emit(ResponseCreated(response_id))
        self._speaking = asyncio.create_task(self._speak(utterance, response_id))
        await asyncio.gather(self._speaking, return_exceptions=True)
        if self._speaking.cancelled():
            self._emit(ResponseDone(response_id, "cancelled"))

    async def _speak(self, utterance: _Utterance, response_id: str) -> None:
        item_id = f"local-item-{next(self._ids)}"
        try:
            # Agents name OpenAI voices (marin, cedar, ...); espeak-ng speaks its own for all.
            ulaw = await speech.speak(utterance.text)
        except speech.SpeechError as error:
            logger.error("Call %s: espeak-ng failed: %s", self.call_sid, error)
            self._emit(ResponseDone(response_id, "failed"))
            return
        # All at once, as the model sends faster than real time; Twilio buffers it.
        for start in range(0, len(ulaw), DELTA_BYTES):
            chunk = ulaw[start : start + DELTA_BYTES]
            payload = base64.b64encode(chunk).decode("ascii")
            self._emit(AudioDelta(item_id, response_id, payload, len(chunk)))
        self._emit(AudioDone(item_id, response_id))
        self._emit(AgentTranscript(item_id, utterance.text))
        if utterance.tool:
            call_id = f"local-call-{next(self._ids)}"
            self._emit(ToolCall(call_id, utterance.tool, dict(utterance.arguments or {})))
        self._emit(ResponseDone(response_id, "completed"))

    def _emit(self, event: BackendEvent) -> None:
        if self._events is not None and not self._closing:
            self._events.put_nowait(event)
