"""Model audio that arrives together leaves for Twilio together; audio that trickles in is
written as it comes."""

import base64
import os

import pytest

from callmedia import audio
from peers.realtime import Reply

from .stream_helpers import TwilioTestStream, quiet_agent_create, quiet_stream

pytestmark = pytest.mark.django_db(transaction=True)
pytest_plugins = ["tests.agent_harness"]  # realtime, rest


@pytest.fixture
async def stream(db, realtime, rest):
    await quiet_agent_create()
    async with quiet_stream(realtime) as twilio:
        yield twilio


async def media_until_mark(stream: TwilioTestStream) -> list[bytes]:
    """The audio of each media message up to the reply's closing mark."""
    payloads = []
    while True:
        message = await stream.receive(timeout=5)
        if message["event"] == "mark":
            return payloads
        if message["event"] == "media":
            payloads.append(base64.b64decode(message["media"]["payload"]))


async def test_deltas_that_arrive_together_leave_as_fewer_media_messages(stream, realtime):
    session = realtime.sessions[0]
    sound = os.urandom(100 * audio.FRAME_BYTES)  # 2 s, every frame different
    await session.reply(Reply(transcript="", audio=sound, pace="burst"))
    payloads: list[bytes] = []
    while sum(map(len, payloads)) < len(sound):
        payloads += await media_until_mark(stream)
    assert b"".join(payloads) == sound  # in order, every byte
    assert len(payloads) < 100  # 100 deltas, sent as fast as the socket takes them


async def test_deltas_that_trickle_in_leave_one_by_one(stream, realtime):
    session = realtime.sessions[0]
    sound = os.urandom(10 * audio.FRAME_BYTES)
    await session.reply(Reply(transcript="", audio=sound, pace="realtime"))
    payloads = await media_until_mark(stream)
    assert b"".join(payloads) == sound
    assert [len(p) for p in payloads] == [audio.FRAME_BYTES] * 10
