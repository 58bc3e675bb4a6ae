"""Twilio's side of a media stream, spoken to the consumer in-process.

`TwilioTestStream` drives `MediaStreamConsumer` through Channels' WebsocketCommunicator and
checks every message the server sends exactly as Twilio does (`validate_outbound`). Tests
that need Twilio's real-time playback use `calls.simulator.stream.TwilioStreamClient`
against a real server instead.
"""

import asyncio
import base64
import contextlib
import json
import secrets
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from agents.models import Agent, TransferTarget
from callmedia.audio import FRAME_BYTES, MULAW_SILENCE
from calls import security, services
from calls.simulator import wire

from .twilio_helpers import ACCOUNT_SID, new_call_sid

SILENT_FRAME_B64 = base64.b64encode(MULAW_SILENCE * FRAME_BYTES).decode()


def new_stream_sid() -> str:
    return "MZ" + secrets.token_hex(16)


@sync_to_async
def quiet_agent_create() -> Agent:
    """An agent that waits for the caller, so a stream carries only what a test sends; its
    one transfer target is the default."""
    agent = Agent.objects.create(name="Quiet", phone_number="+14155550100", greeting="")
    TransferTarget.objects.create(
        agent=agent, name="reception", phone_number="+14155550199", is_default=True
    )
    return agent


@contextlib.asynccontextmanager
async def quiet_stream(realtime) -> AsyncIterator["TwilioTestStream"]:
    """A call answered by the quiet agent, its stream open once the model session is
    configured (audio sent sooner is not the model's to hear)."""
    call_sid, token = await answer_call()
    twilio = TwilioTestStream(call_sid=call_sid, token=token)
    await twilio.open()
    await realtime.wait_for_session(configured=True)
    yield twilio
    await twilio.disconnect()


@sync_to_async
def answer_call(to: str = "+14155550100", call_sid: str | None = None) -> tuple[str, str]:
    """Have the voice webhook's service answer a call; returns (call_sid, stream token)."""
    call_sid = call_sid or new_call_sid()
    document = services.call_answer(
        call_sid=call_sid,
        account_sid=ACCOUNT_SID,
        from_number="+14155550123",
        to_number=to,
        direction="inbound",
    )
    parameter = ET.fromstring(document).find("./Connect/Stream/Parameter[@name='token']")
    return call_sid, parameter.get("value")


class TwilioTestStream:
    def __init__(self, *, call_sid: str, token: str | None, headers: list | None = None):
        from voicebot.asgi import application

        self.call_sid = call_sid
        self.token = token
        self.stream_sid = new_stream_sid()
        self.communicator = WebsocketCommunicator(application, "/twilio/stream", headers=headers)
        self.sequence = 0
        self.chunk = 0
        self.received: list[dict] = []
        self.close_code: int | None = None

    def _next(self) -> int:
        self.sequence += 1
        return self.sequence

    async def connect(self) -> bool:
        connected, _ = await self.communicator.connect()
        return connected

    async def send(self, text: str) -> None:
        await self.communicator.send_to(text_data=text)

    async def open(self) -> None:
        """`connected` then `start`, as Twilio opens every stream."""
        assert await self.connect()
        await self.send(wire.connected_message())
        parameters = {"token": self.token} if self.token is not None else {}
        await self.send(
            wire.start_message(
                stream_sid=self.stream_sid,
                call_sid=self.call_sid,
                account_sid=ACCOUNT_SID,
                sequence_number=self._next(),
                custom_parameters={**parameters, "campaign": "spring"},
            )
        )

    async def media(self, payload_b64: str = SILENT_FRAME_B64, count: int = 1) -> None:
        for _ in range(count):
            await self.send(
                wire.inbound_media_message(
                    stream_sid=self.stream_sid,
                    sequence_number=self._next(),
                    chunk=self.chunk + 1,
                    timestamp_ms=self.chunk * 20,
                    payload_b64=payload_b64,
                )
            )
            self.chunk += 1

    async def dtmf(self, digit: str) -> None:
        await self.send(
            wire.dtmf_message(
                stream_sid=self.stream_sid, sequence_number=self._next(), digit=digit
            )
        )

    async def mark(self, name: str) -> None:
        await self.send(
            wire.mark_echo_message(
                stream_sid=self.stream_sid, sequence_number=self._next(), name=name
            )
        )

    async def stop(self) -> None:
        await self.send(
            wire.stop_message(
                stream_sid=self.stream_sid,
                sequence_number=self._next(),
                call_sid=self.call_sid,
                account_sid=ACCOUNT_SID,
            )
        )

    async def receive(self, timeout: float = 3.0) -> dict:
        """The next message from the server, which must be one Twilio accepts."""
        message = await self.communicator.receive_output(timeout)
        if message["type"] == "websocket.close":
            self.close_code = message.get("code", 1000)
            raise ConnectionError(f"server closed the stream with {self.close_code}")
        problem = wire.validate_outbound(
            message.get("text") if message.get("bytes") is None else message["bytes"],
            self.stream_sid,
        )
        assert problem is None, f"Twilio would reject this message: {problem}"
        decoded = json.loads(message["text"])
        self.received.append(decoded)
        return decoded

    async def receive_event(self, event: str, timeout: float = 3.0) -> dict:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            message = await self.receive(max(remaining, 0.01))
            if message["event"] == event:
                return message

    async def closed(self, timeout: float = 3.0) -> int:
        """Wait for the server to close the socket; returns the close code."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.close_code is None:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                await self.receive(max(remaining, 0.01))
            except ConnectionError:
                break
        return self.close_code

    async def nothing_received(self, timeout: float = 0.2) -> bool:
        return await self.communicator.receive_nothing(timeout)

    async def disconnect(self) -> None:
        await self.communicator.disconnect()


def upgrade_signature_headers(*, valid: bool = True) -> list[tuple[bytes, bytes]]:
    url = security.stream_url() if valid else "wss://attacker.example.com/twilio/stream"
    return [(b"x-twilio-signature", security.compute_signature(url, {}).encode())]
