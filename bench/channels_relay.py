"""The reference relay (docs/performance.md): a Channels consumer with two fixes, and a lean one.

`python -m bench.relay --app channels` serves `ReferenceConsumer`, the relay docs/performance.md
measured (0.75 % per call under daphne, 0.54 % under uvicorn, at 50 calls) and from which
the CPU targets were set, so running it here tells how this machine compares with that
one. It is an `AsyncWebsocketConsumer` with the two fixes (no `aclose_old_connections()`
per frame, `compression=None` to the model) that bridges the way Twilio's own sample does:
`json.dumps` for every message, the model's audio base64-decoded and re-encoded, and a mark
after every delta. docs/performance.md lists exactly those three as the next wins, beyond that
relay, so that relay did not have them.

`--app channels-lean` serves `LeanConsumer`: the same consumer with those three wins (the
payload passed through as a string, templates, one mark per 50 deltas), i.e. the least a
Channels relay can do; bench.minimal is the same again without Django or Channels.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json

import django

django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from . import minimal  # noqa: E402


class LeanConsumer(AsyncWebsocketConsumer):
    async def dispatch(self, message: dict) -> None:
        if message["type"] == "websocket.receive":  # fix 1: no thread-pool hop per frame
            await self.websocket_receive(message)
        else:
            await super().dispatch(message)

    async def connect(self) -> None:
        await self.accept()
        self.stream_sid = None
        self.model = await connect(
            minimal.MODEL_URL + "?model=gpt-realtime",
            additional_headers={"Authorization": "Bearer sk-bench"},
            compression=None,  # fix 2
        )
        await self.model.send(minimal.SESSION_UPDATE)
        self.from_model = asyncio.create_task(self.model_to_twilio())

    async def disconnect(self, code: int) -> None:
        self.from_model.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.from_model
        await self.model.close()

    async def receive(self, text_data=None, bytes_data=None) -> None:
        event = json.loads(text_data)
        kind = event["event"]
        if kind == "media":
            await self.model.send(minimal.APPEND_PREFIX + event["media"]["payload"] + '"}')
        elif kind == "start":
            self.stream_sid = event["start"]["streamSid"]
        elif kind == "stop":
            await self.close()

    async def model_to_twilio(self) -> None:
        deltas = 0
        async for raw in self.model:
            event = json.loads(raw)
            kind = event["type"]
            sid = self.stream_sid
            if sid is None:
                continue
            if kind == "response.output_audio.delta":
                media = '{"event":"media","streamSid":"' + sid + '","media":{"payload":"'
                await self.send(text_data=media + event["delta"] + '"}}')
                deltas += 1
                if deltas % 50 == 0:
                    mark = f'{{"event":"mark","streamSid":"{sid}","mark":{{"name":"m{deltas}"}}}}'
                    await self.send(text_data=mark)
            elif kind == "input_audio_buffer.speech_started":
                await self.send(text_data='{"event":"clear","streamSid":"' + sid + '"}')


class ReferenceConsumer(LeanConsumer):
    """As Twilio's sample bridges: dicts and json.dumps, a base64 round trip, a mark per delta."""

    async def receive(self, text_data=None, bytes_data=None) -> None:
        event = json.loads(text_data)
        kind = event["event"]
        if kind == "media":
            append = {"type": "input_audio_buffer.append", "audio": event["media"]["payload"]}
            await self.model.send(json.dumps(append))
        elif kind == "start":
            self.stream_sid = event["start"]["streamSid"]
        elif kind == "stop":
            await self.close()

    async def model_to_twilio(self) -> None:
        async for raw in self.model:
            event = json.loads(raw)
            kind = event.get("type")
            sid = self.stream_sid
            if sid is None:
                continue
            if kind == "response.output_audio.delta" and "delta" in event:
                payload = base64.b64encode(base64.b64decode(event["delta"])).decode("utf-8")
                media = {"event": "media", "streamSid": sid, "media": {"payload": payload}}
                await self.send(text_data=json.dumps(media))
                mark = {"event": "mark", "streamSid": sid, "mark": {"name": "responsePart"}}
                await self.send(text_data=json.dumps(mark))
            elif kind == "input_audio_buffer.speech_started":
                await self.send(text_data=json.dumps({"event": "clear", "streamSid": sid}))


def _app(consumer: type[AsyncWebsocketConsumer]) -> ProtocolTypeRouter:
    return ProtocolTypeRouter(
        {
            "http": minimal.app,
            "lifespan": minimal.app,
            "websocket": URLRouter(
                [
                    path("twilio/stream", consumer.as_asgi()),
                    path("ws/calls/live", minimal.app),
                ]
            ),
        }
    )


app = _app(ReferenceConsumer)
lean_app = _app(LeanConsumer)
