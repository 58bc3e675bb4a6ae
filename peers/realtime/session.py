"""One client connection to the fake service: what the client sent, and what tests trigger.

`FakeSession` answers client events (checked by `wire`, applied to the `Conversation`
and the `SessionConfig`, responses streamed by the `Responder`) and records them for tests
to assert on. Its public coroutines are the server's side of a call: the caller speaking,
transcripts, errors, the 60-minute expiry, a dropped socket.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from . import wire
from .changes import Changes
from .conversation import Conversation, Item, new_id
from .replies import MULAW_BYTES_PER_MS, Reply
from .responses import FakeResponse, Responder
from .sender import EventSender
from .session_config import SESSION_MAX_S, SessionConfig, interrupt_response_update
from .vad import EnergyVad

if TYPE_CHECKING:
    from .server import FakeRealtimeServer

APPEND = "input_audio_buffer.append"


class FakeSession:
    """One client connection. Records what the client sent; triggers server events."""

    def __init__(self, server: FakeRealtimeServer, ws: ServerConnection) -> None:
        self.server = server
        request = ws.request
        assert request is not None
        parts = urlsplit(request.path)
        self.path: str = parts.path
        self.query: dict[str, str] = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.model: str | None = self.query.get("model")
        self.headers = request.headers
        self.id = new_id("sess")
        self.interrupt_response: bool = server.interrupt_response
        self.closed = False
        self.rejected_beta = False

        self.changes = Changes()
        self._notify = self.changes.notify
        self.sender = EventSender(ws, on_error=self._notify)
        self.conversation = Conversation()
        self.settings = SessionConfig(session_id=self.id, model=self.model)
        self.responder = Responder(
            sender=self.sender,
            conversation=self.conversation,
            config=self.settings,
            spawn=self._spawn,
            on_change=self._notify,
        )
        self._ws = ws
        self._emit = self.sender.emit
        self._reply_queue: list[Reply] = list(server.script)
        self._tasks: set[asyncio.Task[None]] = set()
        self._vad = EnergyVad() if server.vad else None

        # What the client sent, for tests to assert on.
        self.session_updates: list[dict[str, Any]] = []
        self.appended_bytes = 0
        self.append_count = 0
        self.truncations: list[dict[str, Any]] = []
        self.cancels: list[dict[str, Any]] = []
        self.function_outputs: list[dict[str, Any]] = []
        self.items_created: list[dict[str, Any]] = []
        self.client_events: list[dict[str, Any]] = []  # every event except appends
        # For each of client_events: how many appends had arrived before it (their order).
        self.appends_before: list[int] = []

    # -- what tests read -------------------------------------------------------------

    @property
    def conversation_id(self) -> str:
        return self.conversation.id

    @property
    def config(self) -> dict[str, Any]:
        return self.settings.current

    @property
    def responses(self) -> list[FakeResponse]:
        return self.responder.responses

    @property
    def active_response(self) -> FakeResponse | None:
        return self.responder.active

    @property
    def errors_sent(self) -> list[dict[str, Any]]:
        return self.sender.errors_sent

    def messages_created(self, role: str | None = None) -> list[str]:
        """The text of each message item the client created (e.g. a replayed history)."""
        return [
            part.get("text") or ""
            for item in self.items_created
            if item.get("type") == "message" and role in (None, item.get("role"))
            for part in item.get("content", [])
        ]

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Wait until `predicate()` is truthy (re-checked on every recorded change)."""
        return await self.changes.wait_for(predicate, timeout, self.id)

    # -- connection lifecycle --------------------------------------------------------

    async def run(self, *, on_listed: Callable[[FakeSession], None]) -> None:
        """Serve the connection until it closes; `on_listed` once tests may trigger events."""
        if wire.is_beta_client(self.headers.get_all("OpenAI-Beta")):
            self.rejected_beta = True
            on_listed(self)
            await self.sender.error(wire.BETA_SHAPE_DISABLED)
            await self._ws.close()
            self._on_closed()
            return
        try:
            await self._hello()
        except ConnectionClosed:
            self._on_closed()
            return
        # Listed only once session.created is out, so triggers a test fires come after it.
        on_listed(self)
        if self.server.auto_reply_every_ms:
            self._spawn(self._auto_reply_loop(self.server.auto_reply_every_ms))
        await self._serve()

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
        self.responder.abandon()
        for task in list(self._tasks):
            task.cancel()
        self._notify()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._until_closed(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @staticmethod
    async def _until_closed(coro: Coroutine[Any, Any, None]) -> None:
        # The client may go away mid-stream; that ends the task, it is not an error.
        with contextlib.suppress(ConnectionClosed):
            await coro

    # -- client events ---------------------------------------------------------------

    async def _on_message(self, raw: str | bytes) -> None:
        event = wire.parse_client_event(raw)
        if isinstance(event, wire.Rejection):
            await self.sender.error(event)
            return
        type_ = event.get("type")
        if type_ == APPEND:
            # The hot path: 50 per second per call. Count, never keep.
            audio = event.get("audio")
            if not isinstance(audio, str):
                await self._reject(wire.AUDIO_NOT_A_STRING, event)
                return
            self.appended_bytes += wire.base64_decoded_size(audio)
            self.append_count += 1
            if self._vad is not None:
                await self._hear(audio)
            self._notify()
            return
        self.client_events.append(event)
        self.appends_before.append(self.append_count)
        handler = self._handlers.get(type_) if isinstance(type_, str) else None
        if handler is None:
            await self._reject(wire.unknown_event_type(type_, [APPEND, *self._handlers]), event)
        else:
            await handler(self, event)
        self._notify()

    async def _hear(self, audio: str) -> None:
        """Server VAD on the appended audio: the caller's turn starts and ends by itself."""
        assert self._vad is not None
        for change, at_ms in self._vad.feed(audio):
            if change == "started":
                await self.speech_started(at_ms)
            else:
                await self.speech_stopped(at_ms)
                if self.creates_responses and self.active_response is None:
                    self._start_response(self._next_reply(), origin="server")

    async def _reject(self, rejection: wire.Rejection, event: dict[str, Any]) -> None:
        await self.sender.error(rejection, client_event_id=event.get("event_id"))

    async def _on_session_update(self, event: dict[str, Any]) -> None:
        update = event.get("session")
        rejection = wire.session_update_rejection(update)
        if rejection is not None:
            await self._reject(rejection, event)
            return
        self.session_updates.append(update)
        self.settings.update(update)
        interrupt = interrupt_response_update(update)
        if interrupt is not None:
            self.interrupt_response = interrupt
        await self._emit("session.updated", session=self.config)

    async def _on_item_create(self, event: dict[str, Any]) -> None:
        item = event.get("item")
        rejection = wire.item_create_rejection(item, call_ids=self.conversation.call_ids)
        if rejection is not None:
            await self._reject(rejection, event)
            return
        if item["type"] == "function_call_output":
            self.function_outputs.append(item)
        self.items_created.append(item)
        stored = {"object": "realtime.item", "status": "completed", **item}
        stored.setdefault("id", new_id("item"))
        added = Item(id=stored["id"], type=item["type"], role=item.get("role"))
        previous = self.conversation.add(added).previous_item_id
        await self._emit("conversation.item.added", previous_item_id=previous, item=stored)
        await self._emit("conversation.item.done", previous_item_id=previous, item=stored)

    async def _on_item_truncate(self, event: dict[str, Any]) -> None:
        item = self.conversation.get(event.get("item_id"))
        rejection = wire.truncate_rejection(event, item)
        if rejection is not None:
            await self._reject(rejection, event)
            return
        assert item is not None
        audio_end_ms = event["audio_end_ms"]
        available_ms = item.audio_ms
        self.conversation.truncate(item, audio_end_ms)
        self.truncations.append(
            {
                "item_id": item.id,
                "content_index": 0,
                "audio_end_ms": audio_end_ms,
                "available_ms": available_ms,
            }
        )
        await self._emit(
            "conversation.item.truncated",
            item_id=item.id,
            content_index=0,
            audio_end_ms=audio_end_ms,
        )

    async def _on_item_delete(self, event: dict[str, Any]) -> None:
        item_id = event.get("item_id")
        if not self.conversation.delete(item_id):
            await self._reject(wire.item_not_found("item_delete_invalid_item_id", item_id), event)
            return
        await self._emit("conversation.item.deleted", item_id=item_id)

    async def _on_item_retrieve(self, event: dict[str, Any]) -> None:
        item_id = event.get("item_id")
        item = self.conversation.get(item_id)
        if item is None:
            await self._reject(wire.item_not_found("item_retrieve_invalid_item_id", item_id), event)
            return
        await self._emit(
            "conversation.item.retrieved",
            item={"id": item.id, "object": "realtime.item", "type": item.type, "role": item.role},
        )

    async def _on_buffer_commit(self, event: dict[str, Any]) -> None:
        item = self.conversation.add_caller_turn()
        await self._emit(
            "input_audio_buffer.committed", previous_item_id=item.previous_item_id, item_id=item.id
        )

    async def _on_buffer_clear(self, event: dict[str, Any]) -> None:
        await self._emit("input_audio_buffer.cleared")

    async def _on_response_create(self, event: dict[str, Any]) -> None:
        active = self.active_response
        if active is not None:
            await self._reject(wire.already_responding(active.id), event)
            return
        self._start_response(self._next_reply(), origin="client", request=event.get("response"))

    async def _on_response_cancel(self, event: dict[str, Any]) -> None:
        self.cancels.append(event)
        active = self.active_response
        wanted = event.get("response_id")
        if active is None or (wanted is not None and wanted != active.id):
            await self._reject(wire.NO_ACTIVE_RESPONSE, event)
            return
        await self.responder.cancel(active, reason="client_cancelled")

    _handlers: dict[str, Callable[[FakeSession, dict[str, Any]], Awaitable[None]]] = {
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

    # -- replies ---------------------------------------------------------------------

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
        return self.responder.start(reply, origin=origin, request=request)

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
        item_id = self.conversation.caller_item_id = new_id("item")
        await self._emit(
            "input_audio_buffer.speech_started", audio_start_ms=audio_start_ms, item_id=item_id
        )
        interrupt = self.interrupt_response if interrupt is None else interrupt
        if interrupt and self.active_response is not None:
            await self.responder.cancel(self.active_response, reason="turn_detected")
        return item_id

    async def speech_stopped(self, audio_end_ms: int | None = None) -> str:
        """Caller stopped speaking: speech_stopped, then the buffer is committed."""
        if audio_end_ms is None:
            audio_end_ms = self.appended_bytes // MULAW_BYTES_PER_MS
        item_id = self.conversation.caller_item_id or new_id("item")
        self.conversation.caller_item_id = item_id
        await self._emit(
            "input_audio_buffer.speech_stopped", audio_end_ms=audio_end_ms, item_id=item_id
        )
        item = self.conversation.add_caller_turn(item_id)
        await self._emit(
            "input_audio_buffer.committed", previous_item_id=item.previous_item_id, item_id=item_id
        )
        return item_id

    @property
    def creates_responses(self) -> bool:
        """Whether server VAD answers a caller's turn by itself (turn_detection.create_response)."""
        detection = self.config.get("audio", {}).get("input", {}).get("turn_detection") or {}
        return bool(detection.get("create_response", True))

    async def caller_turn(self, transcript: str = "") -> FakeResponse | None:
        """A whole caller turn as server VAD handles it: speech started and stopped, the
        transcript, and a response from the queue unless `create_response` is off."""
        await self.speech_started()
        await self.speech_stopped()
        if transcript:
            await self.caller_transcript(transcript)
        if not self.creates_responses or self.active_response is not None:
            return None
        return self._start_response(self._next_reply(), origin="server")

    async def caller_transcript(self, text: str, *, item_id: str | None = None) -> None:
        await self._emit(
            "conversation.item.input_audio_transcription.completed",
            item_id=item_id or self.conversation.caller_item_id or new_id("item"),
            content_index=0,
            transcript=text,
        )

    async def send_error(
        self, code: str | None, message: str, type: str = "invalid_request_error"
    ) -> None:
        await self.sender.error(wire.Rejection(code, message, type=type))

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
            self.responder.stop(self.active_response)
        await self.sender.error(wire.session_expired(SESSION_MAX_S))
        await self._ws.close()

    async def drop(self) -> None:
        """Cut the TCP connection with no close frame (the client sees code 1006)."""
        if self.active_response is not None:
            self.responder.stop(self.active_response)
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
