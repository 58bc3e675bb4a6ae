"""Hostile frames on a real, authenticated media stream (daphne on loopback) never drop it.

Twilio keeps a stream through a bad message of ours (it logs 31951 and carries on), and so
do we: whatever arrives (binary, not JSON, any JSON value, Twilio's own messages with a
field replaced by anything), the socket stays open, no 1011, nothing logged as an error,
and the next valid media frame and mark echo are handled as usual.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from callmedia import audio, protocol
from calls.models import MediaStream
from calls.simulator import wire
from peers.realtime import FakeSession

from .agent_harness import AsgiServer, answer, make_agent
from .stream_fuzz import ACCOUNT_SID, acts_on_the_stream, fuzz_settings, hostile_frames
from .stream_helpers import SILENT_FRAME_B64, new_stream_sid
from .twilio_helpers import new_call_sid

pytest_plugins = ["tests.agent_harness"]  # asgi_server, realtime, rest
pytestmark = pytest.mark.django_db(transaction=True)


@dataclass
class FuzzedStream:
    ws: aiohttp.ClientWebSocketResponse
    stream_sid: str
    call_sid: str
    model: FakeSession
    sequence: int = 1
    frames: int = 0  # valid media frames we sent
    marks: int = 0  # valid mark echoes we sent
    hostile: int = 0
    received: list[aiohttp.WSMessage] = field(default_factory=list)
    closed_with: int | None = None

    def next_sequence(self) -> int:
        self.sequence += 1
        return self.sequence

    async def read(self) -> None:
        async for message in self.ws:
            self.received.append(message)
        self.closed_with = self.ws.close_code

    async def send(self, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            await self.ws.send_bytes(frame)
        else:
            await self.ws.send_str(frame)

    async def send_valid(self) -> None:
        """A media frame and a mark echo, as Twilio sends them."""
        self.frames += 1
        await self.ws.send_str(
            wire.inbound_media_message(
                stream_sid=self.stream_sid,
                sequence_number=self.next_sequence(),
                chunk=self.frames,
                timestamp_ms=self.frames * 20,
                payload_b64=SILENT_FRAME_B64,
            )
        )
        self.marks += 1
        await self.ws.send_str(
            wire.mark_echo_message(
                stream_sid=self.stream_sid, sequence_number=self.next_sequence(), name="seg-0"
            )
        )


@pytest.fixture
async def fuzzed(asgi_server: AsgiServer, realtime, rest, caplog):
    # One stream carries every example, and a valid frame waits up to a chunk period to reach
    # the model: the call must outlast the run, not end as idle after 30 s.
    await make_agent(greeting="", idle_timeout_seconds=600, max_call_seconds=3600)
    call_sid, stream_sid = new_call_sid(), new_stream_sid()
    token = await answer(asgi_server.http_url, call_sid)
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(asgi_server.stream_url) as ws,
    ):
        await ws.send_str(wire.connected_message())
        await ws.send_str(
            wire.start_message(
                stream_sid=stream_sid,
                call_sid=call_sid,
                account_sid=ACCOUNT_SID,
                sequence_number=1,
                custom_parameters={"token": token},
            )
        )
        model = await realtime.wait_for_session(configured=True)
        stream = FuzzedStream(ws=ws, stream_sid=stream_sid, call_sid=call_sid, model=model)
        reader = asyncio.create_task(stream.read())
        with caplog.at_level(logging.WARNING):
            yield stream
        # Twilio's `stop` ends it, with a normal close: the stream was alive to the end.
        await ws.send_str(
            wire.stop_message(
                stream_sid=stream_sid,
                sequence_number=stream.next_sequence(),
                call_sid=call_sid,
                account_sid=ACCOUNT_SID,
            )
        )
        await asyncio.wait_for(reader, 10)
    assert stream.closed_with == 1000
    record = await MediaStream.objects.aget(sid=stream_sid)
    assert record.frames_in >= stream.frames and record.marks_received >= stream.marks
    assert record.bad_messages >= 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


@fuzz_settings
@given(data=st.data())
async def test_hostile_frames_never_drop_an_authenticated_stream(fuzzed, data):
    frames = data.draw(
        st.lists(hostile_frames(fuzzed.stream_sid, fuzzed.call_sid), min_size=1, max_size=3)
    )
    for frame in frames:
        if not acts_on_the_stream(frame, fuzzed.stream_sid):
            fuzzed.hostile += 1
            await fuzzed.send(frame)
    await fuzzed.send_valid()
    # The frame after the hostile ones reached the model; the socket is still open.
    await fuzzed.model.wait_for(
        lambda: fuzzed.model.appended_bytes >= fuzzed.frames * audio.FRAME_BYTES
    )
    assert fuzzed.closed_with is None and not fuzzed.ws.closed
    assert all(message.type is aiohttp.WSMsgType.TEXT for message in fuzzed.received)


async def test_a_30_digit_timestamp_is_a_bad_message_not_a_lost_line(fuzzed):
    message = wire.inbound_media_message(
        stream_sid=fuzzed.stream_sid,
        sequence_number=fuzzed.next_sequence(),
        chunk=1,
        timestamp_ms=10**29,
        payload_b64=SILENT_FRAME_B64,
    )
    with pytest.raises(protocol.ProtocolError, match="media.timestamp"):
        protocol.parse(message)
    await fuzzed.send(message)
    await fuzzed.send_valid()
    await fuzzed.model.wait_for(lambda: fuzzed.model.appended_bytes >= audio.FRAME_BYTES)
    assert not fuzzed.ws.closed
