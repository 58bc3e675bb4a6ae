"""The OpenAI Realtime API (GA shape) over `websockets`, for one call.

Audio is `audio/pcmu` both ways, so Twilio's base64 payloads pass through untouched. The
send path never waits on the socket: caller frames are written at once while nothing is
queued and the socket keeps up, everything else goes through an outbox drained by one writer
task, and frames leave in order either way. The hot message, `input_audio_buffer.append`, is
built from a string template rather than `json.dumps` (base64 needs no JSON escaping).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

from django.conf import settings
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.protocol import State

from agents.tools import tools_for
from callmedia.outbox import Outbox

from .base import (
    IDLE,
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

logger = logging.getLogger(__name__)

TRANSCRIPTION_MODEL = "gpt-4o-transcribe"
CONNECT_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0
# Model messages are small, but a session.updated echoing long instructions is not.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# 10 s of caller frames. A model socket that far behind is failing; drop audio, not memory.
MAX_QUEUED_MESSAGES = 500
# Caller audio skips the queue while the socket's write buffer holds less than this (the
# `websockets` default high-water mark): beyond it the writer task waits for the drain.
DIRECT_WRITE_LIMIT = 32 * 1024

_APPEND_PREFIX = '{"type":"input_audio_buffer.append","audio":"'
_APPEND_SUFFIX = '"}'
_DELTA_TYPE = "response.output_audio.delta"

# Races the protocol makes unavoidable: harmless, logged at debug.
# (docs/openai-realtime.md#errors-benign-races-and-fatal-ones)
BENIGN_ERROR_CODES = frozenset(
    {"conversation_already_has_active_response", "response_cancel_not_active"}
)
# The session cannot continue after these.
FATAL_ERROR_CODES = frozenset(
    {
        "session_expired",
        "invalid_api_key",
        "insufficient_quota",
        "model_not_found",
        "beta_api_shape_disabled",
    }
)
FATAL_ERROR_TYPES = frozenset({"server_error", "authentication_error"})
# Fatal for this session, but a new session (with the conversation replayed) carries on.
RETRYABLE_ERROR_CODES = frozenset({"session_expired"})
# Our truncate and cancel events carry ids with these prefixes, so their errors are known.
_TRUNCATE_EVENT_PREFIX = "vb_truncate_"
_CANCEL_EVENT_PREFIX = "vb_cancel_"

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def turn_detection(*, create_response: bool | None = None) -> dict[str, Any]:
    """Server VAD as the project uses it; `turn_detection` is replaced whole by an update,
    so every change sends all of it (docs/openai-realtime.md#turn-detection). Without
    `create_response` the service's default (true) holds."""
    detection: dict[str, Any] = {"type": "server_vad", "interrupt_response": True}
    if create_response is not None:
        detection["create_response"] = create_response
    return detection


def session_config(config: AgentConfig) -> dict[str, Any]:
    """The `session` of session.update, in the GA shape (docs/openai-realtime.md#sessionupdate)."""
    return {
        "type": "realtime",
        "model": config.model,
        "output_modalities": ["audio"],
        "instructions": config.instructions,
        "audio": {
            "input": {
                "format": {"type": "audio/pcmu"},
                "transcription": {"model": TRANSCRIPTION_MODEL},
                "turn_detection": turn_detection(),
            },
            "output": {"format": {"type": "audio/pcmu"}, "voice": config.voice},
        },
        "tools": tools_for(config),
        "tool_choice": "auto",
    }


def say_instructions(text: str) -> str:
    return f"Say exactly this to the caller, word for word, and nothing else: {text}"


def b64_decoded_length(payload: str) -> int:
    padding = (payload[-1:] == "=") + (payload[-2:-1] == "=")
    return len(payload) * 3 // 4 - padding


class OpenAIRealtimeBackend(Backend):
    def __init__(
        self,
        config: AgentConfig,
        *,
        call_sid: str,
        url: str | None = None,
        api_key: str | None = None,
    ) -> None:
        self.config = config
        self.call_sid = call_sid
        self.url = url or settings.OPENAI_REALTIME_URL
        self.api_key = settings.OPENAI_API_KEY if api_key is None else api_key
        self._ws: ClientConnection | None = None
        self._outbox: Outbox[str] = Outbox(self._write, name=f"openai-writer-{call_sid}")
        self._closing = False
        self._dropping_audio = False
        self._event_ids = itertools.count(1)

    # -- connection -----------------------------------------------------------------------

    async def connect(self) -> None:
        if not self.api_key:
            raise BackendUnavailable("OPENAI_API_KEY is not set")
        separator = "&" if "?" in self.url else "?"
        url = f"{self.url}{separator}model={quote(self.config.model)}"
        try:
            # The GA API takes the bearer token alone; an OpenAI-Beta header is refused.
            self._ws = await connect(
                url,
                additional_headers={"Authorization": f"Bearer {self.api_key}"},
                compression=None,  # base64 audio barely compresses (docs/performance.md)
                max_size=MAX_MESSAGE_BYTES,
                open_timeout=CONNECT_TIMEOUT_S,
                close_timeout=CLOSE_TIMEOUT_S,
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as error:
            raise BackendUnavailable(f"cannot connect to {self.url}: {error}") from error
        # Sent before anything else the session queues, so the greeting uses this config.
        try:
            await self._ws.send(
                _dumps({"type": "session.update", "session": session_config(self.config)})
            )
        except ConnectionClosed as error:
            raise BackendUnavailable(f"the model closed the connection at once: {error}") from error
        self._outbox.start()

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        await self._outbox.stop()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()

    def _write(self, message: str) -> Awaitable[None]:
        # The socket's own coroutine, none of ours per message. A ConnectionClosed drops
        # what is queued; the reader reports the close.
        assert self._ws is not None
        return self._ws.send(message)

    def _send(self, message: str) -> None:
        if self._closing or self._ws is None:
            return
        self._outbox.post(message)

    def _send_event(self, type_: str, **fields: Any) -> None:
        self._send(_dumps({"type": type_, **fields}))

    # -- client events --------------------------------------------------------------------

    def send_audio(self, payload_b64: str) -> None:
        if self._closing or self._ws is None:
            return
        if len(self._outbox) >= MAX_QUEUED_MESSAGES:
            if not self._dropping_audio:
                self._dropping_audio = True
                logger.warning(
                    "Call %s: model socket is behind; dropping caller audio", self.call_sid
                )
            return
        self._dropping_audio = False
        message = _APPEND_PREFIX + payload_b64 + _APPEND_SUFFIX
        ws = self._ws
        if (
            not self._outbox
            and ws.protocol.state is State.OPEN
            and ws.transport.get_write_buffer_size() < DIRECT_WRITE_LIMIT
        ):
            # Nothing queued ahead of it and the socket keeps up: write it now, as
            # `ws.send` would (it writes before it yields), without waking the writer task.
            ws.protocol.send_text(message.encode())
            ws.send_data()
            return
        self._outbox.post(message)

    def create_response(self) -> None:
        self._send_event("response.create")

    def say(self, text: str) -> None:
        self._send_event("response.create", response={"instructions": say_instructions(text)})

    def truncate(self, item_id: str, audio_end_ms: int) -> None:
        self._send_event(
            "conversation.item.truncate",
            event_id=f"{_TRUNCATE_EVENT_PREFIX}{next(self._event_ids)}",
            item_id=item_id,
            content_index=0,
            audio_end_ms=max(0, int(audio_end_ms)),
        )

    def cancel_response(self, response_id: str) -> None:
        self._send_event(
            "response.cancel",
            event_id=f"{_CANCEL_EVENT_PREFIX}{next(self._event_ids)}",
            response_id=response_id,
        )

    def send_tool_result(self, call_id: str, output: str) -> None:
        self._send_event(
            "conversation.item.create",
            item={"type": "function_call_output", "call_id": call_id, "output": output},
        )

    def set_auto_respond(self, respond: bool) -> None:
        self._send_event(
            "session.update",
            session={
                "type": "realtime",
                "audio": {"input": {"turn_detection": turn_detection(create_response=respond)}},
            },
        )

    def add_context(self, text: str) -> None:
        self._send_event(
            "conversation.item.create",
            item={
                "type": "message",
                "role": "system",
                "content": [{"type": "input_text", "text": text}],
            },
        )

    # -- server events --------------------------------------------------------------------

    def events_waiting(self) -> bool:
        # The messages `websockets` has received and not yet handed out. Model audio that
        # arrives in a burst is then written to Twilio as one media message.
        ws = self._ws
        if ws is None:
            return False
        try:
            frames = ws.recv_messages.frames.queue
            return bool(frames) and frames[0].fin  # a whole message, not its first part
        except AttributeError:  # another websockets version: never wait
            return False

    async def events(self) -> AsyncIterator[BackendEvent]:
        ws = self._ws
        if ws is None:
            raise BackendUnavailable("not connected")
        reason = "the model closed the connection"
        try:
            async for raw in ws:
                try:
                    event = self.parse(raw)
                except Exception:
                    logger.exception("Call %s: unreadable model event %.200r", self.call_sid, raw)
                    continue
                if event is not None:
                    yield event
                elif not self.events_waiting():
                    yield IDLE  # the events before it said more was coming: it was not
        except ConnectionClosed as error:
            reason = f"connection to the model lost ({error})"
        if not self._closing:
            code = ws.close_code
            if code not in (None, 1000, 1006) and reason.startswith("the model"):
                reason = f"{reason} (code {code}: {ws.close_reason or 'no reason'})"
            yield BackendClosed(reason=reason)

    def parse(self, raw: str | bytes) -> BackendEvent | None:
        """One server event, normalized; None for events the session does not need."""
        message = json.loads(raw)
        type_ = message.get("type")
        if type_ == _DELTA_TYPE:  # 50 a second: first and cheapest
            payload = message["delta"]
            return AudioDelta(
                message["item_id"], message["response_id"], payload, b64_decoded_length(payload)
            )
        handler = self._handlers.get(type_)
        return handler(self, message) if handler is not None else None

    def _on_speech_started(self, message: dict[str, Any]) -> SpeechStarted:
        return SpeechStarted(message.get("item_id", ""), time.perf_counter())

    def _on_error(self, message: dict[str, Any]) -> BackendError | None:
        error = message.get("error") or {}
        code = error.get("code") or ""
        text = error.get("message") or ""
        event_id = error.get("event_id") or ""
        if (
            code in BENIGN_ERROR_CODES
            or event_id.startswith((_TRUNCATE_EVENT_PREFIX, _CANCEL_EVENT_PREFIX))
            or "already shorter than" in text
        ):
            logger.debug("Call %s: benign model race %s: %s", self.call_sid, code, text)
            return None
        fatal = code in FATAL_ERROR_CODES or error.get("type") in FATAL_ERROR_TYPES
        return BackendError(
            code=code or error.get("type") or "error",
            message=text,
            fatal=fatal,
            retryable=code in RETRYABLE_ERROR_CODES,
        )

    _handlers: dict[str, Callable[[OpenAIRealtimeBackend, dict[str, Any]], Any]] = {
        "response.created": lambda self, m: ResponseCreated(m["response"]["id"]),
        "response.output_audio.done": lambda self, m: AudioDone(
            m["item_id"], m.get("response_id", "")
        ),
        "response.output_audio_transcript.delta": lambda self, m: AgentTranscriptDelta(
            m["item_id"], m.get("delta", "")
        ),
        "response.output_audio_transcript.done": lambda self, m: AgentTranscript(
            m["item_id"], m.get("transcript", "")
        ),
        "conversation.item.input_audio_transcription.completed": lambda self, m: CallerTranscript(
            m["item_id"], m.get("transcript", "")
        ),
        "input_audio_buffer.speech_started": _on_speech_started,
        "input_audio_buffer.speech_stopped": lambda self, m: SpeechStopped(m.get("item_id", "")),
        "response.function_call_arguments.done": lambda self, m: _tool_call(m),
        "response.done": lambda self, m: ResponseDone(
            m["response"]["id"], m["response"].get("status", "")
        ),
        "error": _on_error,
    }


def _tool_call(message: dict[str, Any]) -> ToolCall:
    try:
        arguments = json.loads(message.get("arguments") or "{}")
    except ValueError:
        arguments = {}
    if not isinstance(arguments, dict):
        arguments = {}
    return ToolCall(message["call_id"], message.get("name", ""), arguments)
