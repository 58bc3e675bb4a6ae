"""Caller audio reaches the model in chunks: in order, never late, and flushed when it must."""

import asyncio
import base64
import time

import pytest
from channels.layers import get_channel_layer

from callmedia import audio
from callmedia.chunker import CallerAudioChunker, b64_join, chunk_ms_valid
from calls.models import Call, call_group_name

from .stream_helpers import TwilioTestStream, quiet_agent_create, quiet_stream

pytest_plugins = ["tests.agent_harness"]  # realtime, rest

# Chunks this long would hold a frame for a whole second: only a flush sends it sooner.
LONG_CHUNK_MS = 1000
# How late a timer may fire on a machine busy with other tests.
TIMER_SLACK_S = 0.05


def frame(number: int) -> str:
    """A distinct 20 ms frame: its number in every byte."""
    return base64.b64encode(bytes([number % 256]) * audio.FRAME_BYTES).decode("ascii")


class Sent:
    """What a chunker handed on, with when."""

    def __init__(self) -> None:
        self.chunks: list[str] = []
        self.times: list[float] = []

    def __call__(self, chunk: str) -> None:
        self.chunks.append(chunk)
        self.times.append(time.perf_counter())

    @property
    def audio(self) -> bytes:
        return b"".join(base64.b64decode(chunk, validate=True) for chunk in self.chunks)


# --- the chunker -------------------------------------------------------------------------


async def test_frames_are_concatenated_in_order_one_append_per_chunk():
    sent = Sent()
    chunker = CallerAudioChunker(sent, chunk_ms=60)
    for number in range(6):
        chunker.add(frame(number))
    assert len(sent.chunks) == 2  # 6 frames of 20 ms: two appends of 60 ms
    assert [len(base64.b64decode(c)) for c in sent.chunks] == [3 * audio.FRAME_BYTES] * 2
    assert sent.audio == b"".join(base64.b64decode(frame(n)) for n in range(6))


async def test_an_odd_chunk_size_concatenates_exactly_too():
    # 100 ms is 800 bytes, not a multiple of 3: base64 of the whole, not of the pieces.
    sent = Sent()
    chunker = CallerAudioChunker(sent, chunk_ms=100)
    for number in range(10):
        chunker.add(frame(number))
    assert len(sent.chunks) == 2
    assert sent.audio == b"".join(base64.b64decode(frame(n)) for n in range(10))


async def test_a_partial_chunk_leaves_within_the_chunk_period():
    sent = Sent()
    chunker = CallerAudioChunker(sent, chunk_ms=100)
    added = time.perf_counter()
    chunker.add(frame(1))
    chunker.add(frame(2))
    assert sent.chunks == []
    await asyncio.sleep(0.1 + TIMER_SLACK_S)
    assert len(sent.chunks) == 1
    assert sent.audio == base64.b64decode(frame(1)) + base64.b64decode(frame(2))
    assert sent.times[0] - added <= 0.1 + TIMER_SLACK_S


async def test_no_frame_waits_longer_than_the_chunk_period_in_a_live_stream():
    sent = Sent()
    chunk_s = 0.06
    chunker = CallerAudioChunker(sent, chunk_ms=60)
    added: list[float] = []
    for number in range(16):  # 5 full chunks and one frame the timer sends
        added.append(time.perf_counter())
        chunker.add(frame(number))
        await asyncio.sleep(0.02)
    await asyncio.sleep(chunk_s + TIMER_SLACK_S)
    assert sent.audio == b"".join(base64.b64decode(frame(n)) for n in range(16))
    # Frame n left with the chunk that holds it.
    left = []
    for chunk, at in zip(sent.chunks, sent.times, strict=True):
        left += [at] * (len(base64.b64decode(chunk)) // audio.FRAME_BYTES)
    waits = [out - into for into, out in zip(added, left, strict=True)]
    assert max(waits) <= chunk_s + TIMER_SLACK_S


async def test_flush_sends_at_once_and_a_frame_chunk_passes_payloads_through():
    sent = Sent()
    chunker = CallerAudioChunker(sent, chunk_ms=LONG_CHUNK_MS)
    chunker.add(frame(7))
    chunker.flush()
    chunker.flush()  # nothing left: nothing sent
    assert sent.chunks == [frame(7)]
    direct = Sent()
    passthrough = CallerAudioChunker(direct, chunk_ms=20)
    payload = frame(9)
    passthrough.add(payload)
    assert direct.chunks[0] is payload  # not decoded and encoded again


def test_payloads_of_any_length_join_exactly():
    pieces = [bytes([n]) * size for n, size in enumerate((160, 7, 1, 480, 2))]
    joined = b64_join([base64.b64encode(piece).decode("ascii") for piece in pieces])
    assert base64.b64decode(joined, validate=True) == b"".join(pieces)


def test_chunk_sizes_are_whole_frames():
    assert [chunk_ms_valid(ms) for ms in (0, 20, 30, 59, 60, 100)] == [20, 20, 20, 40, 60, 100]


# --- through the media stream: flushed when the model must have every frame --------------

@pytest.fixture
async def stream(db, settings, realtime, rest):
    settings.CALLER_AUDIO_CHUNK_MS = LONG_CHUNK_MS
    await quiet_agent_create()
    async with quiet_stream(realtime) as twilio:
        yield twilio


def events_of(session, kind: str) -> list[int]:
    return [i for i, event in enumerate(session.client_events) if event.get("type") == kind]


async def control(stream: TwilioTestStream, message: dict) -> None:
    call = await Call.objects.aget(sid=stream.call_sid)
    await get_channel_layer().group_send(call_group_name(str(call.id)), message)


@pytest.mark.django_db(transaction=True)
async def test_a_keypress_sends_the_audio_before_it_first(stream, realtime):
    session = realtime.sessions[0]
    await stream.media(frame(1), count=2)
    await stream.dtmf("5")
    await session.wait_for(lambda: events_of(session, "conversation.item.create"), timeout=0.5)
    key = events_of(session, "conversation.item.create")[0]
    assert "pressed the 5 key" in str(session.client_events[key])
    # Both frames were appended before the key, well before the chunk period was up.
    assert session.appends_before[key] == 1
    assert session.appended_bytes == 2 * audio.FRAME_BYTES


@pytest.mark.django_db(transaction=True)
async def test_stop_sends_the_last_frames(stream, realtime):
    session = realtime.sessions[0]
    await stream.media(frame(2), count=2)
    await stream.stop()
    await stream.closed()
    await session.wait_for(lambda: session.appended_bytes == 2 * audio.FRAME_BYTES, timeout=0.5)


@pytest.mark.django_db(transaction=True)
async def test_take_over_and_hand_back_send_the_audio_before_them(stream, realtime):
    session = realtime.sessions[0]
    await stream.media(frame(3), count=2)
    await control(stream, {"type": "call.take_over", "holder": "staff-1", "user": "Ann"})
    await session.wait_for(lambda: len(events_of(session, "session.update")) >= 2, timeout=0.5)
    taken = events_of(session, "session.update")[1]  # the first configured the session
    assert session.appends_before[taken] == 1
    assert session.appended_bytes == 2 * audio.FRAME_BYTES

    await stream.media(frame(4), count=3)
    await control(stream, {"type": "call.hand_back", "holder": "staff-1"})
    await session.wait_for(lambda: len(events_of(session, "session.update")) >= 3, timeout=0.5)
    back = events_of(session, "session.update")[2]
    assert session.appends_before[back] == 2
    assert session.appended_bytes == 5 * audio.FRAME_BYTES
