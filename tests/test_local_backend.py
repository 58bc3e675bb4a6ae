"""The offline backend: espeak-ng speech, energy-VAD barge-in, and the key menu."""

import asyncio
import base64

import pytest

from agents import speech
from agents.backends import backend_for
from agents.backends.base import (
    AgentConfig,
    AgentTranscript,
    AudioDelta,
    AudioDone,
    CallerTranscript,
    ResponseCreated,
    ResponseDone,
    SpeechStarted,
    SpeechStopped,
    TargetConfig,
    ToolCall,
)
from agents.backends.local import GOODBYE, EnergyVad, LocalBackend
from agents.tools import END_CALL, TRANSFER_TO_HUMAN
from callmedia.audio import FRAME_BYTES, frames, silence, ulaw_rms

# What calls/session/agent.py tells the model about keys.


def config(**overrides) -> AgentConfig:
    values = {
        "id": 1,
        "name": "Demo",
        "instructions": "",
        "greeting": "Hello, how can I help?",
        "voice": "marin",
        "model": "gpt-realtime",
        "backend": "local",
        "transfer_digit": "0",
        "max_call_seconds": 900,
        "idle_timeout_seconds": 30,
        "targets": (TargetConfig("front_desk", "A person", is_default=True),),
    }
    return AgentConfig(**{**values, **overrides})


@pytest.fixture
async def backend():
    backend = LocalBackend(config(transfer_digit=""), call_sid="CA" + "0" * 32)
    await backend.connect()
    yield backend
    await backend.close()


async def collect(backend, until, timeout: float = 5.0) -> list:
    """Events until one of type `until` (included)."""
    events = []
    stream = backend.events()
    async with asyncio.timeout(timeout):
        async for event in stream:
            events.append(event)
            if isinstance(event, until):
                return events
    return events


def feed(backend, ulaw: bytes) -> None:
    for frame in frames(ulaw):
        backend.send_audio(base64.b64encode(frame).decode())


def spoken(events) -> bytes:
    return b"".join(base64.b64decode(e.payload_b64) for e in events if type(e) is AudioDelta)


def test_speech_is_headerless_non_silent_mulaw():
    ulaw = speech.synthesize("Hello there")

    assert not ulaw.startswith(b"RIFF")
    assert 500 < len(ulaw) // 8 < 3000  # ms
    assert ulaw_rms(ulaw) > 1000
    assert speech.synthesize("  Hello   there ") is speech.synthesize("Hello there")  # cached


async def test_speech_runs_off_the_event_loop_one_synthesis_at_a_time():
    results = await asyncio.gather(*(speech.speak(f"Number {n}") for n in range(8)))

    assert all(ulaw_rms(ulaw) > 1000 for ulaw in results)
    assert results[3] == speech.synthesize("Number 3")


def test_the_factory_builds_it_for_local_agents():
    assert isinstance(backend_for(config(), call_sid="CA1"), LocalBackend)


async def test_it_speaks_as_one_response(backend):
    backend.say("Hello, how can I help?")
    events = await collect(backend, ResponseDone)

    assert type(events[0]) is ResponseCreated
    assert [type(e) for e in events[-3:]] == [AudioDone, AgentTranscript, ResponseDone]
    assert events[-2].text == "Hello, how can I help?"
    assert events[-1].status == "completed"
    deltas = [e for e in events if type(e) is AudioDelta]
    assert {e.item_id for e in deltas} == {events[-3].item_id}
    assert all(e.nbytes == len(base64.b64decode(e.payload_b64)) for e in deltas)
    assert ulaw_rms(spoken(events)) > 1000


def test_the_energy_vad_needs_a_run_of_loud_frames_to_start_and_of_quiet_to_stop():
    vad = EnergyVad(threshold_rms=600, start_ms=60, stop_ms=100)
    loud = b"\x10" * FRAME_BYTES  # near full scale in mu-law
    quiet = silence(20)

    assert [vad.feed(f) for f in (loud, loud, quiet, loud, loud)] == [None] * 5
    assert vad.feed(loud) == "started"
    assert [vad.feed(f) for f in (quiet, quiet, quiet, quiet, loud)] == [None] * 5
    assert [vad.feed(quiet) for _ in range(5)] == [None] * 4 + ["stopped"]


async def test_caller_speech_barges_in_and_gets_an_answer(backend):
    feed(backend, silence(200))
    feed(backend, speech.synthesize("I would like to speak to somebody"))
    started = await collect(backend, SpeechStarted)
    feed(backend, silence(700))
    events = await collect(backend, ResponseDone)

    assert [type(e) for e in started] == [SpeechStarted]
    assert started[0].received_at > 0
    assert type(events[0]) is SpeechStopped
    assert events[0].item_id == started[0].item_id
    transcript = events[1]
    assert type(transcript) is CallerTranscript and transcript.text.startswith("[speech, ")
    assert ulaw_rms(spoken(events)) > 1000  # a canned reply


async def test_silence_and_line_noise_are_not_speech(backend):
    noise = bytes([0xF0, 0x70] * 4000)  # a few hundred of RMS
    assert 0 < ulaw_rms(noise) < 600
    feed(backend, noise)
    backend.say("done")
    events = await collect(backend, ResponseDone)

    assert not any(type(e) in (SpeechStarted, SpeechStopped) for e in events)


async def test_cancel_response_stops_a_reply_being_generated(backend):
    backend.say("A sentence long enough to take a moment to synthesise. " * 5)
    await asyncio.sleep(0)  # the synthesis is running in a worker thread
    backend.cancel_response("local-response")
    events = await collect(backend, ResponseDone)

    assert [type(e) for e in events] == [ResponseCreated, ResponseDone]
    assert events[-1].status == "cancelled"


async def test_pound_says_goodbye_then_calls_end_call(backend):
    backend.keypad("#", transferring=False)
    backend.create_response()
    events = await collect(backend, ResponseDone)

    kinds = [type(e) for e in events]
    assert kinds.index(ToolCall) > kinds.index(AudioDone)  # the goodbye is all sent first
    [transcript] = [e for e in events if type(e) is AgentTranscript]
    assert transcript.text == GOODBYE
    [tool] = [e for e in events if type(e) is ToolCall]
    assert tool.name == END_CALL
    assert tool.arguments["reason"]


async def test_zero_asks_for_the_default_target(backend):
    backend.keypad("0", transferring=False)
    backend.create_response()
    events = await collect(backend, ResponseDone)

    [tool] = [e for e in events if type(e) is ToolCall]
    assert tool.name == TRANSFER_TO_HUMAN
    assert tool.arguments["target"] == "front_desk"


async def test_it_leaves_the_transfer_key_to_the_session():
    # The session transfers on the agent's transfer key itself and only tells the model.
    backend = LocalBackend(config(transfer_digit="0"), call_sid="CA1")
    await backend.connect()
    try:
        backend.keypad("0", transferring=True)
        backend.create_response()
        events = await collect(backend, ResponseDone)
    finally:
        await backend.close()

    assert not any(type(e) is ToolCall for e in events)


async def test_other_keys_get_the_menu(backend):
    backend.keypad("5", transferring=False)
    backend.create_response()
    events = await collect(backend, ResponseDone)

    [transcript] = [e for e in events if type(e) is AgentTranscript]
    assert transcript.text.startswith("You pressed 5.")
    assert not any(type(e) is ToolCall for e in events)


async def test_events_end_after_close(backend):
    await backend.close()

    assert await collect(backend, ResponseDone) == []


async def test_with_nobody_to_transfer_to_its_menu_offers_no_person():
    # An agent with no transfer targets must not tell the caller to press 0 for a person.
    backend = LocalBackend(config(transfer_digit="0", targets=()), call_sid="CA1")
    await backend.connect()
    try:
        backend.keypad("0", transferring=False)
        backend.create_response()
        nobody = await collect(backend, ResponseDone)
        backend.keypad("5", transferring=False)
        backend.create_response()
        other_key = await collect(backend, ResponseDone)
        backend.create_response()
        reply = await collect(backend, ResponseDone)
    finally:
        await backend.close()

    said = [e.text for e in nobody + other_key + reply if type(e) is AgentTranscript]
    assert said[0].startswith("Sorry, there is nobody I can connect you to.")
    assert len(said) == 3
    for text in said:
        assert "press 0" not in text.lower(), text
        assert "pound key to end the call" in text
    assert not any(type(e) is ToolCall for e in nobody)


async def test_after_news_it_cannot_read_it_says_the_caller_is_back(backend):
    # A transfer nobody took: the session adds why, then asks for an answer.
    backend.add_context("The transfer to front_desk did not go through: the line was busy.")
    backend.create_response()
    back = await collect(backend, ResponseDone)
    backend.create_response()
    later = await collect(backend, ResponseDone)

    said = [e.text for e in back + later if type(e) is AgentTranscript]
    assert said[0] == f"I'm back with you. {backend.menu}"
    assert not said[1].startswith("I'm back with you.")
