"""A minimal Twilio <-> Realtime relay as a bare ASGI app: the floor to compare against.

`python -m bench.relay --app minimal` serves this instead of voicebot.asgi, with the same
server, load and measurements. It does only what any bridge must: answer the voice webhook
with a stream token, accept the media stream, open the model socket (no compression), pass
caller payloads into input_audio_buffer.append and model deltas into media messages, one mark
per 50 deltas, and `clear` on speech_started. No Django, no Channels, no database, no
session logic: what is left is the cost of Python, asyncio and the WebSocket libraries on
this machine, i.e. what the project's own code adds is the difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

MODEL_URL = os.environ.get("OPENAI_REALTIME_URL", "")
TWIML = (
    '<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://bench/stream">'
    '<Parameter name="token" value="minimal" /></Stream></Connect></Response>'
)
SESSION_UPDATE = json.dumps(
    {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "model": "gpt-realtime",
            "output_modalities": ["audio"],
            "instructions": "bench",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcmu"},
                    "turn_detection": {"type": "server_vad", "interrupt_response": True},
                },
                "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"},
            },
        },
    }
)
APPEND_PREFIX = '{"type":"input_audio_buffer.append","audio":"'


async def app(scope: dict, receive, send) -> None:
    if scope["type"] == "http":
        while (await receive()).get("more_body"):
            pass
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/xml")],
            }
        )
        await send({"type": "http.response.body", "body": TWIML.encode()})
    elif scope["type"] == "websocket":
        if scope["path"] == "/twilio/stream":
            await relay(receive, send)
        else:  # the staff feed: accept and stay quiet
            await receive()
            await send({"type": "websocket.accept"})
            while (await receive())["type"] != "websocket.disconnect":
                pass
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


async def relay(receive, send) -> None:
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    model = await connect(
        MODEL_URL + "?model=gpt-realtime",
        additional_headers={"Authorization": "Bearer sk-bench"},
        compression=None,
    )
    await model.send(SESSION_UPDATE)
    stream = {"sid": None}
    from_model = asyncio.create_task(model_to_twilio(model, send, stream))
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                break
            event = json.loads(message["text"])
            kind = event["event"]
            if kind == "media":
                await model.send(APPEND_PREFIX + event["media"]["payload"] + '"}')
            elif kind == "start":
                stream["sid"] = event["start"]["streamSid"]
            elif kind == "stop":
                break
    except ConnectionClosed:
        pass
    finally:
        from_model.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await from_model
        await model.close()


async def model_to_twilio(model, send, stream: dict) -> None:
    deltas = 0
    async for raw in model:
        event = json.loads(raw)
        kind = event["type"]
        sid = stream["sid"]
        if sid is None:
            continue
        if kind == "response.output_audio.delta":
            media = '{"event":"media","streamSid":"' + sid + '","media":{"payload":"'
            await send({"type": "websocket.send", "text": media + event["delta"] + '"}}'})
            deltas += 1
            if deltas % 50 == 0:
                mark = '{"event":"mark","streamSid":"' + sid + f'","mark":{{"name":"m{deltas}"}}}}'
                await send({"type": "websocket.send", "text": mark})
        elif kind == "input_audio_buffer.speech_started":
            await send(
                {"type": "websocket.send", "text": '{"event":"clear","streamSid":"' + sid + '"}'}
            )
