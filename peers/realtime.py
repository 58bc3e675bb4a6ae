"""A fake OpenAI Realtime API server (GA protocol) on loopback.

It is a double at the external edge: the backend connects to it with `websockets`
exactly as it connects to wss://api.openai.com/v1/realtime, so it speaks the GA wire
protocol described in /work/shared/protocols.md and checks what the real service checks
(bearer auth, no beta header, GA session shape, truncate bounds, one active response).

Tests script what the "model" says with `Reply`, trigger server-side events (caller
speech, transcripts, errors, expiry, a dropped socket) through `FakeSession`, and assert
on what the client sent through the session's records.

It must carry `make bench` (100 calls, 50 audio deltas/s each, both ways) on a small
machine, so the hot paths avoid per-frame dicts and lists: audio deltas are built from
a string template around precomputed base64 chunks, and appends are counted, not kept.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

REALTIME_PATH = "/v1/realtime"
MULAW_RATE_HZ = 8000
MULAW_BYTES_PER_MS = MULAW_RATE_HZ // 1000
FRAME_MS = 20
FRAME_BYTES = FRAME_MS * MULAW_BYTES_PER_MS
FRAME_S = FRAME_MS / 1000
TONE_HZ = 400
DEFAULT_REPLY_AUDIO_MS = 600
BURST_YIELD_EVERY_FRAMES = 25
SESSION_MAX_S = 60 * 60

# The GA `session` object's top-level keys. Anything else (notably the beta names
# `modalities`, `voice`, `input_audio_format`, `turn_detection`, `temperature`) is
# rejected with `unknown_parameter`, as the real service does.
GA_SESSION_KEYS = frozenset(
    {
        "type",
        "model",
        "output_modalities",
        "instructions",
        "audio",
        "include",
        "tracing",
        "tools",
        "tool_choice",
        "max_output_tokens",
        "truncation",
        "prompt",
        "parallel_tool_calls",
        "reasoning",
    }
)
SESSION_MERGED_KEYS = frozenset({"audio", "input", "output"})
GA_AUDIO_FORMATS = frozenset({"audio/pcm", "audio/pcmu", "audio/pcma"})
ITEM_TYPES = frozenset({"message", "function_call", "function_call_output"})

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def _merge_session(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    # Only the audio containers merge; a field such as `format` or `turn_detection`
    # is replaced whole, so a pcmu format does not inherit pcm's `rate`.
    merged = dict(base)
    for key, value in update.items():
        if (
            key in SESSION_MERGED_KEYS
            and isinstance(value, dict)
            and isinstance(base.get(key), dict)
        ):
            merged[key] = _merge_session(base[key], value)
        else:
            merged[key] = value
    return merged


def mulaw_encode_sample(sample: int) -> int:
    """G.711 mu-law encoding of one signed 16-bit sample."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), 32635) + 0x84
    exponent = max(0, min(7, (magnitude >> 7).bit_length() - 1))
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _tone_frame() -> bytes:
    # 400 Hz fits exactly 8 periods in a 20 ms frame, so frames repeat seamlessly.
    return bytes(
        mulaw_encode_sample(int(8000 * math.sin(2 * math.pi * TONE_HZ * n / MULAW_RATE_HZ)))
        for n in range(FRAME_BYTES)
    )


TONE_FRAME = _tone_frame()


def tone(duration_ms: int) -> bytes:
    """Non-silent mu-law audio (a 400 Hz tone) of the given duration."""
    total = duration_ms * MULAW_BYTES_PER_MS
    return (TONE_FRAME * (total // FRAME_BYTES + 1))[:total]


@dataclass(frozen=True, eq=False)
class Reply:
    """What the fake model says in one response.

    `audio` is raw mu-law; when None, a tone of `audio_ms` is generated (0 = no audio).
    `function_call` is `(name, arguments)` and is emitted after the audio.
    `pace` is "realtime" (20 ms deltas at 50/s, drift-free) or "burst" (as fast as possible).
    """

    transcript: str = "Okay."
    audio: bytes | None = None
    audio_ms: int = DEFAULT_REPLY_AUDIO_MS
    function_call: tuple[str, dict[str, Any]] | None = None
    pace: str = "realtime"

    def __post_init__(self) -> None:
        if self.pace not in ("realtime", "burst"):
            raise ValueError(f"pace must be 'realtime' or 'burst', not {self.pace!r}")

    @cached_property
    def audio_bytes(self) -> bytes:
        return self.audio if self.audio is not None else tone(self.audio_ms)

    @cached_property
    def b64_frames(self) -> tuple[str, ...]:
        data = self.audio_bytes
        return tuple(
            base64.b64encode(data[i : i + FRAME_BYTES]).decode("ascii")
            for i in range(0, len(data), FRAME_BYTES)
        )

    @cached_property
    def frame_sizes(self) -> tuple[int, ...]:
        data = self.audio_bytes
        return tuple(len(data[i : i + FRAME_BYTES]) for i in range(0, len(data), FRAME_BYTES))

    @cached_property
    def transcript_pieces(self) -> tuple[str, ...]:
        return tuple(re.findall(r"\s*\S+", self.transcript))

    @property
    def has_message(self) -> bool:
        return bool(self.audio_bytes) or bool(self.transcript)


@dataclass(eq=False)
class FakeResponse:
    """One response as the server streamed it; tests assert on these fields."""

    id: str
    reply: Reply
    origin: str  # "client" (response.create) or "server" (reply(), VAD)
    item_id: str | None = None
    call_id: str | None = None
    function_call_item_id: str | None = None
    status: str = "in_progress"
    status_reason: str | None = None
    audio_bytes_sent: int = 0
    deltas_sent: int = 0
    request: dict[str, Any] | None = None
    # Progress markers read by the cancel path to close exactly what was opened.
    _pieces_sent: int = 0
    _message_open: bool = False
    _message_closed_steps: int = 0
    _function_call_open: bool = False
    _task: asyncio.Task[None] | None = None

    @property
    def audio_ms_sent(self) -> float:
        return self.audio_bytes_sent / MULAW_BYTES_PER_MS

    @property
    def transcript_sent(self) -> str:
        return "".join(self.reply.transcript_pieces[: self._pieces_sent])


@dataclass(eq=False)
class _Item:
    id: str
    type: str
    role: str | None = None
    audio_bytes: int = 0
    has_audio: bool = False
    data: dict[str, Any] = field(default_factory=dict)


class FakeSession:
    """One client connection. Records what the client sent; triggers server events."""

    def __init__(self, server: FakeRealtimeServer, ws: ServerConnection) -> None:
        self.server = server
        self._ws = ws
        request = ws.request
        assert request is not None
        parts = urlsplit(request.path)
        self.path: str = parts.path
        self.query: dict[str, str] = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.model: str | None = self.query.get("model")
        self.headers = request.headers
        self.id = _new_id("sess")
        self.conversation_id = _new_id("conv")
        self.interrupt_response: bool = server.interrupt_response
        self.config: dict[str, Any] = self._initial_config()
        self.closed = False
        self.rejected_beta = False

        self.session_updates: list[dict[str, Any]] = []
        self.appended_bytes = 0
        self.append_count = 0
        self.truncations: list[dict[str, Any]] = []
        self.cancels: list[dict[str, Any]] = []
        self.function_outputs: list[dict[str, Any]] = []
        self.items_created: list[dict[str, Any]] = []
        self.responses: list[FakeResponse] = []
        self.client_events: list[dict[str, Any]] = []  # every event except appends
        # For each of client_events: how many appends had arrived before it (their order).
        self.appends_before: list[int] = []
        self.errors_sent: list[dict[str, Any]] = []

        self.active_response: FakeResponse | None = None
        self._reply_queue: list[Reply] = list(server.script)
        self._items: dict[str, _Item] = {}
        self._last_item_id: str | None = None
        self._call_ids: set[str] = set()
        self._caller_item_id: str | None = None
        self._event_counter = itertools.count(1)
        self._event_prefix = f"event_{secrets.token_hex(4)}"
        self._waiters: list[asyncio.Future[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    # -- bookkeeping -----------------------------------------------------------------

    def _initial_config(self) -> dict[str, Any]:
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.id,
            "model": self.model or "gpt-realtime",
            "output_modalities": ["audio"],
            "instructions": "",
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "tracing": None,
            "truncation": "auto",
            "prompt": None,
            "expires_at": int(time.time()) + SESSION_MAX_S,
            "include": None,
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "transcription": None,
                    "noise_reduction": None,
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.5,
                        "prefix_padding_ms": 300,
                        "silence_duration_ms": 500,
                        "idle_timeout_ms": None,
                        "create_response": True,
                        "interrupt_response": True,
                    },
                },
                "output": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "voice": "marin",
                    "speed": 1.0,
                },
            },
        }

    def _event_id(self) -> str:
        return f"{self._event_prefix}_{next(self._event_counter)}"

    def _notify(self) -> None:
        if self._waiters:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters.clear()

    async def wait_for(
        self,
        predicate: Callable[[], Any],
        timeout: float = 5.0,
    ) -> Any:
        """Wait until `predicate()` is truthy (re-checked on every recorded change)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"condition not met within {timeout}s on {self.id}")
            waiter = loop.create_future()
            self._waiters.append(waiter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, remaining)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._until_closed(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @staticmethod
    async def _until_closed(coro: Any) -> None:
        # The client may go away mid-stream; that ends the task, it is not an error.
        with contextlib.suppress(ConnectionClosed):
            await coro

    async def _emit(self, type_: str, **fields: Any) -> None:
        await self._ws.send(_dumps({"type": type_, "event_id": self._event_id(), **fields}))

    async def _error(
        self,
        code: str | None,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        client_event_id: str | None = None,
    ) -> None:
        error = {
            "type": type_,
            "code": code,
            "message": message,
            "param": param,
            "event_id": client_event_id,
        }
        self.errors_sent.append(error)
        self._notify()
        await self._emit("error", error=error)

    # -- connection lifecycle --------------------------------------------------------

    async def _hello(self) -> None:
        await self._emit("session.created", session=self.config)

    async def _serve(self) -> None:
        try:
            async for raw in self._ws:
                await self._on_message(raw)
        except ConnectionClosed:
            pass
        finally:
            self._on_closed()

    def _on_closed(self) -> None:
        self.closed = True
        if self.active_response is not None:
            self._stop_stream(self.active_response)
            self.active_response.status = "failed"  # never finished; nothing more is sent
            self.active_response = None
        for task in list(self._tasks):
            task.cancel()
        self._notify()

    async def _on_message(self, raw: str | bytes) -> None:
        if not isinstance(raw, str):
            await self._error("invalid_json", "Binary frames are not supported.")
            return
        try:
            event = json.loads(raw)
        except ValueError:
            await self._error("invalid_json", "The event could not be parsed as JSON.")
            return
        if not isinstance(event, dict):
            await self._error("invalid_json", "The event must be a JSON object.")
            return
        type_ = event.get("type")
        if type_ == "input_audio_buffer.append":
            # The hot path: 50 per second per call. Count, never keep.
            audio = event.get("audio")
            if not isinstance(audio, str):
                await self._error(
                    "invalid_type",
                    "Invalid type for 'audio': expected a base64 string.",
                    param="audio",
                    client_event_id=event.get("event_id"),
                )
                return
            padding = (audio[-1:] == "=") + (audio[-2:-1] == "=")
            self.appended_bytes += len(audio) * 3 // 4 - padding
            self.append_count += 1
            self._notify()
            return
        self.client_events.append(event)
        self.appends_before.append(self.append_count)
        handler = self._handlers.get(type_) if isinstance(type_, str) else None
        if handler is None:
            supported = ["input_audio_buffer.append", *self._handlers]
            await self._error(
                "invalid_value",
                f"Invalid value: '{type_}'. Supported values are: "
                + ", ".join(f"'{name}'" for name in supported)
                + ".",
                param="type",
                client_event_id=event.get("event_id"),
            )
        else:
            await handler(self, event)
        self._notify()

    # -- client events ---------------------------------------------------------------

    async def _on_session_update(self, event: dict[str, Any]) -> None:
        client_event_id = event.get("event_id")
        update = event.get("session")
        if not isinstance(update, dict):
            await self._error(
                "missing_required_parameter",
                "Missing required parameter: 'session'.",
                param="session",
                client_event_id=client_event_id,
            )
            return
        problem = self._session_update_problem(update)
        if problem is not None:
            code, message, param = problem
            await self._error(code, message, param=param, client_event_id=client_event_id)
            return
        self.session_updates.append(update)
        self.config = _merge_session(self.config, update)
        turn_detection = (update.get("audio") or {}).get("input", {}).get("turn_detection")
        if isinstance(turn_detection, dict) and "interrupt_response" in turn_detection:
            self.interrupt_response = bool(turn_detection["interrupt_response"])
        await self._emit("session.updated", session=self.config)

    def _session_update_problem(self, update: dict[str, Any]) -> tuple[str, str, str] | None:
        for key in update:
            if key not in GA_SESSION_KEYS:
                return "unknown_parameter", f"Unknown parameter: 'session.{key}'.", f"session.{key}"
        if "type" not in update:
            return (
                "missing_required_parameter",
                "Missing required parameter: 'session.type'.",
                "session.type",
            )
        if update["type"] != "realtime":
            return (
                "invalid_value",
                f"Invalid value: '{update['type']}'. Supported values are: 'realtime'.",
                "session.type",
            )
        audio = update.get("audio") or {}
        for direction in ("input", "output"):
            fmt = (audio.get(direction) or {}).get("format")
            if fmt is None:
                continue
            param = f"session.audio.{direction}.format"
            if not isinstance(fmt, dict):
                return "invalid_type", f"Invalid type for '{param}': expected an object.", param
            if fmt.get("type") not in GA_AUDIO_FORMATS:
                return (
                    "invalid_value",
                    f"Invalid value: '{fmt.get('type')}'. Supported values are: "
                    "'audio/pcm', 'audio/pcmu', and 'audio/pcma'.",
                    f"{param}.type",
                )
        return None

    async def _on_item_create(self, event: dict[str, Any]) -> None:
        client_event_id = event.get("event_id")
        item = event.get("item")
        if not isinstance(item, dict) or item.get("type") not in ITEM_TYPES:
            await self._error(
                "invalid_value",
                "Invalid 'item.type'. Supported values are: 'message', 'function_call', "
                "and 'function_call_output'.",
                param="item.type",
                client_event_id=client_event_id,
            )
            return
        if item["type"] == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(item.get("output"), str):
                await self._error(
                    "invalid_type",
                    "Invalid type for 'item.output': expected a string.",
                    param="item.output",
                    client_event_id=client_event_id,
                )
                return
            if call_id not in self._call_ids:
                await self._error(
                    "invalid_value",
                    f"Tool call ID '{call_id}' not found in conversation.",
                    param="item.call_id",
                    client_event_id=client_event_id,
                )
                return
            self.function_outputs.append(item)
        self.items_created.append(item)
        stored = {"object": "realtime.item", "status": "completed", **item}
        stored.setdefault("id", _new_id("item"))
        self._add_item(_Item(id=stored["id"], type=item["type"], role=item.get("role")))
        previous = self._previous_item_id(stored["id"])
        await self._emit("conversation.item.added", previous_item_id=previous, item=stored)
        await self._emit("conversation.item.done", previous_item_id=previous, item=stored)

    def _add_item(self, item: _Item) -> None:
        self._items[item.id] = item
        item.data["previous_item_id"] = self._last_item_id
        self._last_item_id = item.id

    def _previous_item_id(self, item_id: str) -> str | None:
        return self._items[item_id].data.get("previous_item_id")

    async def _on_item_truncate(self, event: dict[str, Any]) -> None:
        client_event_id = event.get("event_id")
        item_id = event.get("item_id")
        audio_end_ms = event.get("audio_end_ms")
        content_index = event.get("content_index")
        item = self._items.get(item_id) if isinstance(item_id, str) else None
        if item is None:
            await self._error(
                "item_truncate_invalid_item_id",
                f"Item with item_id not found: {item_id}",
                param="item_id",
                client_event_id=client_event_id,
            )
            return
        if content_index != 0:
            await self._error(
                "invalid_value",
                "Invalid 'content_index': only 0 is supported for audio.",
                param="content_index",
                client_event_id=client_event_id,
            )
            return
        if not isinstance(audio_end_ms, int) or audio_end_ms < 0:
            await self._error(
                "invalid_value",
                "Invalid 'audio_end_ms': expected a non-negative integer.",
                param="audio_end_ms",
                client_event_id=client_event_id,
            )
            return
        if item.role != "assistant" or not item.has_audio:
            # Also what the real service answers for an assistant message whose
            # audio has not started yet.
            await self._error(
                "unsupported_content_type",
                "Only model output audio messages can be truncated",
                client_event_id=client_event_id,
            )
            return
        available_ms = item.audio_bytes / MULAW_BYTES_PER_MS
        if audio_end_ms > available_ms:
            await self._error(
                "invalid_value",
                f"Audio content of {int(available_ms)}ms is already shorter than {audio_end_ms}ms",
                param="audio_end_ms",
                client_event_id=client_event_id,
            )
            return
        item.audio_bytes = audio_end_ms * MULAW_BYTES_PER_MS
        self.truncations.append(
            {
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": audio_end_ms,
                "available_ms": available_ms,
            }
        )
        await self._emit(
            "conversation.item.truncated",
            item_id=item_id,
            content_index=0,
            audio_end_ms=audio_end_ms,
        )

    async def _on_item_delete(self, event: dict[str, Any]) -> None:
        item_id = event.get("item_id")
        if self._items.pop(item_id, None) is None:
            await self._error(
                "item_delete_invalid_item_id",
                f"Item with item_id not found: {item_id}",
                param="item_id",
                client_event_id=event.get("event_id"),
            )
            return
        await self._emit("conversation.item.deleted", item_id=item_id)

    async def _on_item_retrieve(self, event: dict[str, Any]) -> None:
        item = self._items.get(event.get("item_id"))
        if item is None:
            await self._error(
                "item_retrieve_invalid_item_id",
                f"Item with item_id not found: {event.get('item_id')}",
                param="item_id",
                client_event_id=event.get("event_id"),
            )
            return
        await self._emit(
            "conversation.item.retrieved",
            item={"id": item.id, "object": "realtime.item", "type": item.type, "role": item.role},
        )

    async def _on_buffer_commit(self, event: dict[str, Any]) -> None:
        item_id = _new_id("item")
        self._add_item(_Item(id=item_id, type="message", role="user"))
        await self._emit(
            "input_audio_buffer.committed",
            previous_item_id=self._previous_item_id(item_id),
            item_id=item_id,
        )

    async def _on_buffer_clear(self, event: dict[str, Any]) -> None:
        await self._emit("input_audio_buffer.cleared")

    async def _on_response_create(self, event: dict[str, Any]) -> None:
        active = self.active_response
        if active is not None:
            await self._error(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {active.id}. "
                "Wait until the response is finished before creating a new one.",
                client_event_id=event.get("event_id"),
            )
            return
        params = event.get("response")
        self._start_response(self._next_reply(), origin="client", request=params)

    async def _on_response_cancel(self, event: dict[str, Any]) -> None:
        self.cancels.append(event)
        active = self.active_response
        wanted = event.get("response_id")
        if active is None or (wanted is not None and wanted != active.id):
            await self._error(
                "response_cancel_not_active",
                "Cancellation failed: no active response found",
                client_event_id=event.get("event_id"),
            )
            return
        await self._cancel_response(active, reason="client_cancelled")

    _handlers: dict[str, Callable[[FakeSession, dict[str, Any]], Any]] = {
        "session.update": _on_session_update,
        "input_audio_buffer.commit": _on_buffer_commit,
        "input_audio_buffer.clear": _on_buffer_clear,
        "conversation.item.create": _on_item_create,
        "conversation.item.truncate": _on_item_truncate,
        "conversation.item.delete": _on_item_delete,
        "conversation.item.retrieve": _on_item_retrieve,
        "response.create": _on_response_create,
        "response.cancel": _on_response_cancel,
    }

    # -- responses -------------------------------------------------------------------

    def queue_reply(self, reply: Reply | None = None, **fields: Any) -> Reply:
        """Queue what the model says on the next response (`Reply` or its fields)."""
        reply = reply if reply is not None else Reply(**fields)
        self._reply_queue.append(reply)
        return reply

    def _next_reply(self) -> Reply:
        if self._reply_queue:
            return self._reply_queue.pop(0)
        return self.server.default_reply

    def _start_response(
        self, reply: Reply, *, origin: str, request: dict[str, Any] | None = None
    ) -> FakeResponse:
        response = FakeResponse(id=_new_id("resp"), reply=reply, origin=origin, request=request)
        self.responses.append(response)
        self.active_response = response
        response._task = self._spawn(self._stream(response))
        self._notify()
        return response

    def _response_object(self, response: FakeResponse, output: list[dict[str, Any]]) -> dict:
        status_details = None
        if response.status == "cancelled":
            status_details = {"type": "cancelled", "reason": response.status_reason}
        usage = None
        if response.status != "in_progress":
            output_tokens = len(response.reply.transcript_pieces) * 2 + response.deltas_sent
            usage = {
                "total_tokens": 100 + output_tokens,
                "input_tokens": 100,
                "output_tokens": output_tokens,
                "input_token_details": {"text_tokens": 100, "audio_tokens": 0, "cached_tokens": 0},
                "output_token_details": {
                    "text_tokens": len(response.reply.transcript_pieces),
                    "audio_tokens": response.deltas_sent,
                },
            }
        audio_out = self.config.get("audio", {}).get("output", {})
        return {
            "object": "realtime.response",
            "id": response.id,
            "status": response.status,
            "status_details": status_details,
            "output": output,
            "conversation_id": self.conversation_id,
            "output_modalities": ["audio"],
            "max_output_tokens": "inf",
            "audio": {
                "output": {"format": audio_out.get("format"), "voice": audio_out.get("voice")}
            },
            "usage": usage,
            "metadata": None,
        }

    def _message_item(self, response: FakeResponse, status: str, transcript: str | None) -> dict:
        content = [] if transcript is None else [{"type": "output_audio", "transcript": transcript}]
        return {
            "id": response.item_id,
            "object": "realtime.item",
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def _function_call_item(self, response: FakeResponse, status: str, arguments: str) -> dict:
        name, _ = response.reply.function_call or ("", {})
        return {
            "id": response.function_call_item_id,
            "object": "realtime.item",
            "type": "function_call",
            "status": status,
            "name": name,
            "call_id": response.call_id,
            "arguments": arguments,
        }

    def _final_output(self, response: FakeResponse, status: str) -> list[dict[str, Any]]:
        output = []
        if response.item_id is not None:
            output.append(self._message_item(response, status, response.transcript_sent))
        if response.function_call_item_id is not None:
            arguments = _dumps(response.reply.function_call[1]) if status == "completed" else ""
            output.append(self._function_call_item(response, status, arguments))
        return output

    async def _stream(self, response: FakeResponse) -> None:
        reply = response.reply
        await self._emit("response.created", response=self._response_object(response, []))
        output_index = 0
        if reply.has_message:
            await self._stream_message(response, output_index)
            output_index += 1
        if reply.function_call is not None:
            await self._stream_function_call(response, output_index)
        response.status = "completed"
        self.active_response = None
        self._notify()
        await self._emit(
            "response.done",
            response=self._response_object(response, self._final_output(response, "completed")),
        )

    async def _stream_message(self, response: FakeResponse, output_index: int) -> None:
        item = _Item(id=_new_id("item"), type="message", role="assistant")
        response.item_id = item.id
        self._add_item(item)
        response._message_open = True
        await self._emit(
            "response.output_item.added",
            response_id=response.id,
            output_index=output_index,
            item=self._message_item(response, "in_progress", None),
        )
        ids = {
            "response_id": response.id,
            "item_id": item.id,
            "output_index": output_index,
            "content_index": 0,
        }
        await self._emit(
            "response.content_part.added", **ids, part={"type": "output_audio", "transcript": ""}
        )
        await self._stream_audio(response, item, output_index)
        await self._close_message(response, output_index, "completed")

    async def _stream_audio(self, response: FakeResponse, item: _Item, output_index: int) -> None:
        reply = response.reply
        frames = reply.b64_frames
        sizes = reply.frame_sizes
        pieces = reply.transcript_pieces
        n_frames = len(frames)
        # Transcript piece k goes out just before audio frame k * n_frames // n_pieces.
        piece_at = [k * n_frames // len(pieces) for k in range(len(pieces))] if pieces else []
        head = (
            '{"type":"response.output_audio.delta","event_id":"'
            f"{self._event_prefix}_r{len(self.responses)}_"
        )
        middle = (
            f'","response_id":"{response.id}","item_id":"{item.id}",'
            f'"output_index":{output_index},"content_index":0,"delta":"'
        )
        send = self._ws.send
        loop = asyncio.get_running_loop()
        realtime = reply.pace == "realtime"
        started = loop.time()
        i = 0
        while i < n_frames:
            due = n_frames
            if realtime:
                due = min(n_frames, int((loop.time() - started) / FRAME_S) + 1)
            while i < due:
                while response._pieces_sent < len(pieces) and piece_at[response._pieces_sent] <= i:
                    await self._send_transcript_delta(response, output_index)
                if not item.has_audio:
                    item.has_audio = True
                item.audio_bytes += sizes[i]
                response.audio_bytes_sent += sizes[i]
                response.deltas_sent += 1
                await send(head + str(i) + middle + frames[i] + '"}')
                i += 1
                if not realtime and i % BURST_YIELD_EVERY_FRAMES == 0:
                    await asyncio.sleep(0)  # let a cancel or truncate in between bursts
            self._notify()
            if i < n_frames:
                await asyncio.sleep(started + i * FRAME_S - loop.time())
        while response._pieces_sent < len(pieces):
            await self._send_transcript_delta(response, output_index)

    async def _send_transcript_delta(self, response: FakeResponse, output_index: int) -> None:
        piece = response.reply.transcript_pieces[response._pieces_sent]
        response._pieces_sent += 1
        await self._emit(
            "response.output_audio_transcript.delta",
            response_id=response.id,
            item_id=response.item_id,
            output_index=output_index,
            content_index=0,
            delta=piece,
        )

    async def _close_message(self, response: FakeResponse, output_index: int, status: str) -> None:
        """Send the message item's closing events not yet sent (resumable after a cancel)."""
        ids = {
            "response_id": response.id,
            "item_id": response.item_id,
            "output_index": output_index,
            "content_index": 0,
        }
        transcript = response.transcript_sent
        steps: list[tuple[str, dict[str, Any]]] = [
            ("response.output_audio.done", ids),
            ("response.output_audio_transcript.done", {**ids, "transcript": transcript}),
            (
                "response.content_part.done",
                {**ids, "part": {"type": "output_audio", "transcript": transcript}},
            ),
            (
                "response.output_item.done",
                {
                    "response_id": response.id,
                    "output_index": output_index,
                    "item": self._message_item(response, status, transcript),
                },
            ),
        ]
        while response._message_closed_steps < len(steps):
            type_, fields = steps[response._message_closed_steps]
            response._message_closed_steps += 1
            await self._emit(type_, **fields)
        response._message_open = False

    async def _stream_function_call(self, response: FakeResponse, output_index: int) -> None:
        name, arguments = response.reply.function_call  # type: ignore[misc]
        response.call_id = _new_id("call")
        response.function_call_item_id = _new_id("item")
        self._call_ids.add(response.call_id)
        self._add_item(_Item(id=response.function_call_item_id, type="function_call"))
        arguments_json = _dumps(arguments)
        ids = {
            "response_id": response.id,
            "item_id": response.function_call_item_id,
            "output_index": output_index,
            "call_id": response.call_id,
        }
        response._function_call_open = True
        await self._emit(
            "response.output_item.added",
            response_id=response.id,
            output_index=output_index,
            item=self._function_call_item(response, "in_progress", ""),
        )
        await self._emit("response.function_call_arguments.delta", **ids, delta=arguments_json)
        await self._emit(
            "response.function_call_arguments.done", **ids, name=name, arguments=arguments_json
        )
        response._function_call_open = False  # before the await: the frame is out once sent
        await self._emit(
            "response.output_item.done",
            response_id=response.id,
            output_index=output_index,
            item=self._function_call_item(response, "completed", arguments_json),
        )

    def _stop_stream(self, response: FakeResponse) -> None:
        if response._task is not None and response._task is not asyncio.current_task():
            response._task.cancel()

    async def _cancel_response(self, response: FakeResponse, *, reason: str) -> None:
        """Stop the deltas at once, close what was open, then response.done cancelled."""
        self._stop_stream(response)
        response.status = "cancelled"
        response.status_reason = reason
        self.active_response = None
        self._notify()
        if response._message_open:
            await self._close_message(response, 0, "incomplete")
        if response._function_call_open:
            response._function_call_open = False
            await self._emit(
                "response.output_item.done",
                response_id=response.id,
                output_index=1 if response.item_id else 0,
                item=self._function_call_item(response, "incomplete", ""),
            )
        await self._emit(
            "response.done",
            response=self._response_object(response, self._final_output(response, "incomplete")),
        )

    # -- server-initiated triggers (called by tests) ---------------------------------

    async def reply(self, reply: Reply | None = None, **fields: Any) -> FakeResponse:
        """Start a response without response.create, as server VAD does after speech."""
        if self.active_response is not None:
            raise RuntimeError(f"{self.id} already has an active response")
        chosen = reply if reply is not None else Reply(**fields) if fields else self._next_reply()
        return self._start_response(chosen, origin="server")

    async def speech_started(
        self, audio_start_ms: int | None = None, *, interrupt: bool | None = None
    ) -> str:
        """Caller started speaking; with interrupt_response, cancels the active response."""
        if audio_start_ms is None:
            audio_start_ms = self.appended_bytes // MULAW_BYTES_PER_MS
        self._caller_item_id = _new_id("item")
        await self._emit(
            "input_audio_buffer.speech_started",
            audio_start_ms=audio_start_ms,
            item_id=self._caller_item_id,
        )
        interrupt = self.interrupt_response if interrupt is None else interrupt
        if interrupt and self.active_response is not None:
            await self._cancel_response(self.active_response, reason="turn_detected")
        return self._caller_item_id

    async def speech_stopped(self, audio_end_ms: int | None = None) -> str:
        """Caller stopped speaking: speech_stopped, then the buffer is committed."""
        if audio_end_ms is None:
            audio_end_ms = self.appended_bytes // MULAW_BYTES_PER_MS
        item_id = self._caller_item_id or _new_id("item")
        self._caller_item_id = item_id
        await self._emit(
            "input_audio_buffer.speech_stopped", audio_end_ms=audio_end_ms, item_id=item_id
        )
        self._add_item(_Item(id=item_id, type="message", role="user"))
        await self._emit(
            "input_audio_buffer.committed",
            previous_item_id=self._previous_item_id(item_id),
            item_id=item_id,
        )
        return item_id

    async def caller_transcript(self, text: str, *, item_id: str | None = None) -> None:
        await self._emit(
            "conversation.item.input_audio_transcription.completed",
            item_id=item_id or self._caller_item_id or _new_id("item"),
            content_index=0,
            transcript=text,
        )

    async def send_error(
        self, code: str | None, message: str, type: str = "invalid_request_error"
    ) -> None:
        await self._error(code, message, type_=type)

    async def send_rate_limits(self) -> None:
        await self._emit(
            "rate_limits.updated",
            rate_limits=[
                {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
                {"name": "tokens", "limit": 40000, "remaining": 39000, "reset_seconds": 1.5},
            ],
        )

    async def expire(self) -> None:
        """The 60-minute limit: error session_expired, then the server closes."""
        if self.active_response is not None:
            self._stop_stream(self.active_response)
        await self._error(
            "session_expired",
            f"Your session hit the maximum duration of {SESSION_MAX_S // 60} minutes.",
        )
        await self._ws.close()

    async def drop(self) -> None:
        """Cut the TCP connection with no close frame (the client sees code 1006)."""
        if self.active_response is not None:
            self._stop_stream(self.active_response)
        self._ws.transport.abort()
        await self._ws.wait_closed()

    async def _auto_reply_loop(self, every_ms: int) -> None:
        # Benchmark mode: every `every_ms`, the "caller" speaks and the model answers,
        # barging in on the previous answer if it is still playing.
        while True:
            await asyncio.sleep(every_ms / 1000)
            await self.speech_started()
            await self.speech_stopped()
            if self.active_response is None:
                self._start_response(self._next_reply(), origin="server")


class FakeRealtimeServer:
    """Loopback stand-in for wss://api.openai.com/v1/realtime (GA protocol)."""

    def __init__(
        self,
        *,
        script: list[Reply] | None = None,
        default_reply: Reply | None = None,
        interrupt_response: bool = True,
        auto_reply_every_ms: int | None = None,
    ) -> None:
        self.script: list[Reply] = list(script or [])
        self.default_reply: Reply = default_reply or Reply()
        self.interrupt_response = interrupt_response
        self.auto_reply_every_ms = auto_reply_every_ms
        self.sessions: list[FakeSession] = []
        self.handshakes: list[dict[str, Any]] = []  # every attempt, accepted or not
        self._server: Server | None = None
        self._session_cursor = 0
        self._session_added = asyncio.Event()

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}{REALTIME_PATH}"

    async def start(self) -> FakeRealtimeServer:
        self._session_added = asyncio.Event()
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._check_handshake,
            compression=None,
            max_size=None,
        )
        return self

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> FakeRealtimeServer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def queue_reply(self, reply: Reply | None = None, **fields: Any) -> Reply:
        """Append to the script that every session started from now on plays in order."""
        reply = reply if reply is not None else Reply(**fields)
        self.script.append(reply)
        return reply

    async def wait_for_session(
        self,
        timeout: float = 5.0,
        *,
        index: int | None = None,
    ) -> FakeSession:
        """The session at `index`, or else the next one not yet returned by this method."""
        wanted = self._session_cursor if index is None else index
        async with asyncio.timeout(timeout):
            while len(self.sessions) <= wanted:
                self._session_added.clear()
                await self._session_added.wait()
        if index is None:
            self._session_cursor += 1
        return self.sessions[wanted]

    def _check_handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        record = {"path": parts.path, "query": parts.query, "headers": request.headers}
        self.handshakes.append(record)
        if parts.path != REALTIME_PATH:
            record["status"] = 404
            return self._json_response(connection, HTTPStatus.NOT_FOUND, "Not found.")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not token.strip():
            record["status"] = 401
            return self._json_response(
                connection,
                HTTPStatus.UNAUTHORIZED,
                "Missing bearer or basic authentication in header",
            )
        record["status"] = 101
        return None

    @staticmethod
    def _json_response(connection: ServerConnection, status: HTTPStatus, message: str) -> Response:
        body = _dumps(
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            }
        )
        response = connection.respond(status, body)
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        return response

    async def _handle(self, ws: ServerConnection) -> None:
        session = FakeSession(self, ws)
        if "realtime=v1" in ",".join(session.headers.get_all("OpenAI-Beta")):
            session.rejected_beta = True
            self._add_session(session)
            await session._error(
                "beta_api_shape_disabled",
                "The Realtime API beta shape has been disabled. Remove the "
                "'OpenAI-Beta: realtime=v1' header and use the GA interface.",
            )
            await ws.close()
            session._on_closed()
            return
        try:
            await session._hello()
        except ConnectionClosed:
            session._on_closed()
            return
        # Listed only once session.created is out, so triggers a test fires come after it.
        self._add_session(session)
        if self.auto_reply_every_ms:
            session._spawn(session._auto_reply_loop(self.auto_reply_every_ms))
        await session._serve()

    def _add_session(self, session: FakeSession) -> None:
        self.sessions.append(session)
        self._session_added.set()
