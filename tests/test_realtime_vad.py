"""The fake Realtime server's energy VAD hears the caller speak, from appended audio alone."""

import base64
import json

from callmedia import audio
from peers.realtime import FakeRealtimeServer, tone
from peers.realtime.vad import EnergyVad


def b64(ulaw: bytes) -> str:
    return base64.b64encode(ulaw).decode("ascii")


def test_speech_starts_at_the_first_loud_frame_and_stops_after_the_silence():
    vad = EnergyVad(silence_ms=100)
    assert vad.feed(b64(audio.silence(60))) == []
    # One append of 60 ms: silence, then the caller starts speaking 40 ms in.
    assert vad.feed(b64(audio.silence(40) + tone(20))) == [("started", 100)]
    assert vad.feed(b64(tone(60))) == []
    assert vad.feed(b64(audio.silence(100))) == [("stopped", 280)]
    assert not vad.speaking


async def test_a_session_with_vad_reports_speech_from_appends():
    import websockets

    async with FakeRealtimeServer(vad=True) as server:
        headers = {"Authorization": "Bearer sk-test"}
        url = server.url + "?model=gpt-realtime"
        async with websockets.connect(url, additional_headers=headers) as ws:
            session = await server.wait_for_session()
            append = '{"type":"input_audio_buffer.append","audio":"%s"}'
            await ws.send(append % b64(audio.silence(40) + tone(20)))
            await session.wait_for(lambda: session.conversation.caller_item_id)
            while True:
                event = json.loads(await ws.recv())
                if event["type"] == "input_audio_buffer.speech_started":
                    break
            assert event["audio_start_ms"] == 40
