"""Responses: a `Reply` streamed as the GA service streams one, and cancelled mid-stream.

A response is a message item (audio deltas at 50/s with its transcript in pieces between
them) and then, if the reply has one, a function call item, closed by `response.done`.
A cancel (`response.cancel`, or the caller barging in) stops the deltas at once, closes
exactly what was open, and ends with `response.done` cancelled.

The audio delta is the hot path (the bench runs 100 calls at 50 deltas/s each): it is a
string template around the reply's precomputed base64 chunks, never a dict to serialise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from .conversation import Conversation, Item, new_id
from .replies import FRAME_MS, FRAME_S, MULAW_BYTES_PER_MS, Reply
from .sender import EventSender
from .session_config import SessionConfig
from .wire import dumps

# In burst pace, yield to the loop this often so a cancel or truncate can get in between.
BURST_YIELD_EVERY_FRAMES = 25

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


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


class Responder:
    """Streams one session's responses, at most one at a time."""

    def __init__(
        self,
        *,
        sender: EventSender,
        conversation: Conversation,
        config: SessionConfig,
        spawn: Spawn,
        on_change: Callable[[], None],
    ) -> None:
        self.responses: list[FakeResponse] = []
        self.active: FakeResponse | None = None
        self._sender = sender
        self._emit = sender.emit
        self._conversation = conversation
        self._config = config
        self._spawn = spawn
        self._on_change = on_change

    def start(
        self, reply: Reply, *, origin: str, request: dict[str, Any] | None = None
    ) -> FakeResponse:
        response = FakeResponse(id=new_id("resp"), reply=reply, origin=origin, request=request)
        self.responses.append(response)
        self.active = response
        response._task = self._spawn(self._stream(response))
        self._on_change()
        return response

    def stop(self, response: FakeResponse) -> None:
        """Stop streaming with nothing more sent (the socket is going away)."""
        if response._task is not None and response._task is not asyncio.current_task():
            response._task.cancel()

    def abandon(self) -> None:
        """The client went away: the active response never finishes."""
        if self.active is not None:
            self.stop(self.active)
            self.active.status = "failed"
            self.active = None

    async def cancel(self, response: FakeResponse, *, reason: str) -> None:
        """Stop the deltas at once, close what was open, then response.done cancelled."""
        self.stop(response)
        response.status = "cancelled"
        response.status_reason = reason
        self.active = None
        self._on_change()
        if response._message_open:
            await self._close_message(response, 0, "incomplete")
        if response._function_call_open:
            response._function_call_open = False
            await self._emit(
                "response.output_item.done",
                response_id=response.id,
                output_index=1 if response.item_id else 0,
                item=function_call_item(response, "incomplete", ""),
            )
        await self._emit(
            "response.done",
            response=self._response_object(response, final_output(response, "incomplete")),
        )

    # -- streaming -----------------------------------------------------------------------

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
        self.active = None
        self._on_change()
        await self._emit(
            "response.done",
            response=self._response_object(response, final_output(response, "completed")),
        )

    async def _stream_message(self, response: FakeResponse, output_index: int) -> None:
        item = self._conversation.add(Item(id=new_id("item"), type="message", role="assistant"))
        response.item_id = item.id
        response._message_open = True
        await self._emit(
            "response.output_item.added",
            response_id=response.id,
            output_index=output_index,
            item=message_item(response, "in_progress", None),
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

    async def _stream_audio(self, response: FakeResponse, item: Item, output_index: int) -> None:
        reply = response.reply
        frames = reply.b64_frames
        sizes = reply.frame_sizes
        pieces = reply.transcript_pieces
        n_frames = len(frames)
        # Transcript piece k goes out just before audio frame k * n_frames // n_pieces.
        piece_at = [k * n_frames // len(pieces) for k in range(len(pieces))] if pieces else []
        head = (
            '{"type":"response.output_audio.delta","event_id":"'
            f"{self._sender.prefix}_r{len(self.responses)}_"
        )
        middle = (
            f'","response_id":"{response.id}","item_id":"{item.id}",'
            f'"output_index":{output_index},"content_index":0,"delta":"'
        )
        send = self._sender.ws.send
        loop = asyncio.get_running_loop()
        realtime = reply.pace == "realtime"
        lead_frames = reply.lead_ms // FRAME_MS
        if reply.stall_after_ms is not None:
            n_frames = min(n_frames, reply.stall_after_ms // FRAME_MS)
        started = loop.time()
        i = 0
        while i < n_frames:
            due = n_frames
            if realtime:
                due = min(n_frames, int((loop.time() - started) / FRAME_S) + 1 + lead_frames)
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
                    await asyncio.sleep(0)
            self._on_change()
            if i < n_frames:
                await asyncio.sleep(started + (i - lead_frames) * FRAME_S - loop.time())
        if reply.stall_after_ms is not None:
            await asyncio.Event().wait()  # until the cancel stops this task
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
                    "item": message_item(response, status, transcript),
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
        response.function_call_item_id, response.call_id = self._conversation.add_function_call()
        arguments_json = dumps(arguments)
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
            item=function_call_item(response, "in_progress", ""),
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
            item=function_call_item(response, "completed", arguments_json),
        )

    def _response_object(self, response: FakeResponse, output: list[dict[str, Any]]) -> dict:
        audio_out = self._config.output_audio
        return response_object(
            response,
            output,
            conversation_id=self._conversation.id,
            audio_output={"format": audio_out.get("format"), "voice": audio_out.get("voice")},
        )


# -- the JSON objects a response's events carry --------------------------------------


def response_object(
    response: FakeResponse,
    output: list[dict[str, Any]],
    *,
    conversation_id: str,
    audio_output: dict[str, Any],
) -> dict[str, Any]:
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
    return {
        "object": "realtime.response",
        "id": response.id,
        "status": response.status,
        "status_details": status_details,
        "output": output,
        "conversation_id": conversation_id,
        "output_modalities": ["audio"],
        "max_output_tokens": "inf",
        "audio": {"output": audio_output},
        "usage": usage,
        "metadata": None,
    }


def message_item(response: FakeResponse, status: str, transcript: str | None) -> dict[str, Any]:
    content = [] if transcript is None else [{"type": "output_audio", "transcript": transcript}]
    return {
        "id": response.item_id,
        "object": "realtime.item",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def function_call_item(response: FakeResponse, status: str, arguments: str) -> dict[str, Any]:
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


def final_output(response: FakeResponse, status: str) -> list[dict[str, Any]]:
    output = []
    if response.item_id is not None:
        output.append(message_item(response, status, response.transcript_sent))
    if response.function_call_item_id is not None:
        arguments = dumps(response.reply.function_call[1]) if status == "completed" else ""
        output.append(function_call_item(response, status, arguments))
    return output
