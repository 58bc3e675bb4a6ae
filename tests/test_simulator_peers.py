"""The Twilio peers of the call simulator: the REST emulator and the media stream client.

The REST emulator is driven by the real twilio client; the stream client talks to a tiny
WebSocket server written here, which plays the part of our server.
"""

import asyncio
import base64
import json

import aiohttp
import pytest
from aiohttp import web
from django.conf import settings
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from calls.simulator.call import SimulatedCall
from calls.simulator.rest import TwilioRestEmulator
from calls.simulator.stream import Playback, TwilioStreamClient
from peers.ports import free_port

ACCOUNT_SID = "AC" + "a" * 32
CALL_SID = "CA" + "b" * 32
AUTH_TOKEN = "token"
DIAL_TWIML = "<Response><Dial>+14155550199</Dial></Response>"


# --- REST emulator ------------------------------------------------------------------------


@pytest.fixture
async def emulator():
    async with TwilioRestEmulator() as emulator:
        yield emulator


@pytest.fixture
async def twilio_client(emulator):
    client = Client(ACCOUNT_SID, AUTH_TOKEN, http_client=AsyncTwilioHttpClient())
    client.api.base_url = emulator.base_url
    yield client
    await client.http_client.close()


async def test_it_records_a_hangup(emulator, twilio_client):
    call = await twilio_client.calls(CALL_SID).update_async(status="completed")

    assert call.sid == CALL_SID
    assert call.status == "completed"
    assert emulator.calls[CALL_SID] == "completed"
    [hangup] = emulator.hangups(CALL_SID)
    assert hangup.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{CALL_SID}.json"
    assert hangup.form == {"Status": "completed"}
    assert hangup.auth == (ACCOUNT_SID, AUTH_TOKEN)
    assert hangup.status == 200


async def test_a_second_hangup_gets_twilios_404(emulator, twilio_client):
    await twilio_client.calls(CALL_SID).update_async(status="completed")

    with pytest.raises(TwilioRestException) as raised:
        await twilio_client.calls(CALL_SID).update_async(status="completed")

    assert raised.value.status == 404
    assert raised.value.code == 20404
    assert [r.status for r in emulator.hangups(CALL_SID)] == [200, 404]


async def test_it_rejects_unknown_calls_without_auto_register(twilio_client, emulator):
    emulator.auto_register = False

    with pytest.raises(TwilioRestException) as raised:
        await twilio_client.calls(CALL_SID).update_async(status="completed")

    assert raised.value.code == 20404
    assert CALL_SID not in emulator.calls


async def test_it_records_a_twiml_update_with_its_dial_number(emulator, twilio_client):
    updates = []
    emulator.on_twiml = lambda sid, twiml: updates.append((sid, twiml))
    emulator.register_call(CALL_SID)

    call = await twilio_client.calls(CALL_SID).update_async(twiml=DIAL_TWIML)

    assert call.status == "in-progress"
    [update] = emulator.twiml_updates(CALL_SID)
    assert update.twiml == DIAL_TWIML
    assert update.dial_numbers == ["+14155550199"]
    assert updates == [(CALL_SID, DIAL_TWIML)]
    assert emulator.hangups() == []


async def test_it_reads_dial_nouns(emulator, twilio_client):
    twiml = "<Response><Dial><Number>+14155550101</Number><Sip>sip:a@b.c</Sip></Dial></Response>"

    await twilio_client.calls(CALL_SID).update_async(twiml=twiml)

    assert emulator.twiml_updates()[0].dial_numbers == ["+14155550101", "sip:a@b.c"]


async def test_it_creates_calls(emulator, twilio_client):
    created = []

    async def on_create(params):
        created.append(params)

    emulator.on_create = on_create

    call = await twilio_client.calls.create_async(
        to="+14155550123", from_="+14155550100", url="https://example.com/voice"
    )

    assert call.sid.startswith("CA") and len(call.sid) == 34
    assert call.status == "queued"
    assert call.direction == "outbound-api"
    assert emulator.calls[call.sid] == "queued"
    assert emulator.creates()[0].form["Url"] == "https://example.com/voice"
    await emulator.wait_for_request(lambda r: r.call_sid is None, timeout=1)
    await asyncio.sleep(0)
    [params] = created
    assert params["sid"] == call.sid
    assert params["To"] == "+14155550123" and params["Url"] == "https://example.com/voice"


async def test_it_fails_the_next_matching_request_on_demand(emulator, twilio_client):
    emulator.fail_next("/Calls/", status=503, code=20503, message="Service Unavailable")

    with pytest.raises(TwilioRestException) as raised:
        await twilio_client.calls(CALL_SID).update_async(status="completed")
    call = await twilio_client.calls(CALL_SID).update_async(status="completed")

    assert (raised.value.status, raised.value.code) == (503, 20503)
    assert call.status == "completed"


async def test_fail_next_skips_requests_that_do_not_match(emulator, twilio_client):
    emulator.fail_next("Calls.json")

    await twilio_client.calls(CALL_SID).update_async(status="completed")
    with pytest.raises(TwilioRestException) as raised:
        await twilio_client.calls.create_async(to="+1415", from_="+1415", twiml="<Response/>")

    assert raised.value.status == 500


async def test_it_requires_basic_auth(emulator):
    url = f"{emulator.base_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{CALL_SID}.json"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data={"Status": "completed"}) as response:
            body = await response.json()

    assert response.status == 401
    assert body["code"] == 20003
    assert emulator.requests[0].auth is None
    assert CALL_SID not in emulator.calls


async def test_it_checks_the_auth_token_when_given_one(emulator, twilio_client):
    emulator.auth_token = "another token"

    with pytest.raises(TwilioRestException) as raised:
        await twilio_client.calls(CALL_SID).update_async(status="completed")

    assert raised.value.status == 401


async def test_hooks_run_after_the_response(emulator, twilio_client):
    hung_up = asyncio.Event()

    async def on_hangup(call_sid):
        assert emulator.hangups(call_sid)[0].status == 200
        hung_up.set()

    emulator.on_hangup = on_hangup

    await twilio_client.calls(CALL_SID).update_async(status="completed")

    await asyncio.wait_for(hung_up.wait(), 1)


async def test_stop_reraises_a_hook_error(twilio_client):
    emulator = TwilioRestEmulator(on_hangup=lambda sid: 1 / 0)
    await emulator.start()
    twilio_client.api.base_url = emulator.base_url

    call = await twilio_client.calls(CALL_SID).update_async(status="completed")

    assert call.status == "completed"
    with pytest.raises(ZeroDivisionError):
        await emulator.stop()


async def test_wait_for_request_waits_for_one_still_to_come(emulator, twilio_client):
    async def hang_up_later():
        await asyncio.sleep(0.05)
        await twilio_client.calls(CALL_SID).update_async(status="completed")

    task = asyncio.create_task(hang_up_later())
    request = await emulator.wait_for_request(lambda r: r.is_hangup, timeout=2)
    await task

    assert request.call_sid == CALL_SID
    with pytest.raises(TimeoutError, match="Status"):
        await emulator.wait_for_request(lambda r: r.twiml is not None, timeout=0.05)


# --- Playback model -----------------------------------------------------------------------


def test_playback_echoes_each_mark_when_its_audio_has_played():
    playback = Playback()
    playback.add_audio(0.0, b"a" * 800)  # 100 ms
    playback.add_mark(0.0, "first")
    playback.add_audio(0.0, b"b" * 400)  # 50 ms more
    playback.add_mark(0.0, "second")

    assert playback.advance(0.099) == []
    [first] = playback.advance(0.1)
    [second] = playback.advance(0.15)

    assert (first.name, first.played, first.heard_bytes) == ("first", True, 800)
    assert (second.name, second.played, second.heard_bytes) == ("second", True, 400)
    assert playback.played == b"a" * 800 + b"b" * 400


def test_playback_restarts_when_audio_arrives_after_an_underrun():
    playback = Playback()
    playback.add_audio(0.0, b"a" * 80)
    playback.add_audio(1.0, b"b" * 80)  # the first 10 ms played long ago
    playback.add_mark(1.0, "m")

    assert playback.advance(1.009) == []
    assert playback.advance(1.01)[0].name == "m"


def test_playback_clear_drops_audio_and_echoes_pending_marks_unplayed():
    playback = Playback()
    playback.add_audio(0.0, b"a" * 800)
    playback.add_mark(0.0, "first")
    playback.add_audio(0.0, b"b" * 800)
    playback.add_mark(0.0, "second")

    dropped, echoes = playback.clear(0.15)  # half of "second" played

    assert dropped == 400
    assert [(e.name, e.played, e.heard_bytes) for e in echoes] == [
        ("first", True, 800),
        ("second", False, 400),
    ]
    assert playback.buffered_bytes == 0
    assert playback.add_mark(0.2, "after")[0].heard_bytes == 0


def test_a_mark_with_nothing_buffered_is_echoed_at_once():
    [echo] = Playback().add_mark(0.0, "m")

    assert (echo.played, echo.heard_bytes) == (True, 0)


# --- Stream client ------------------------------------------------------------------------


class FakeServer:
    """The server side of a media stream: records what arrives, sends what a test asks."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, dict]] = []
        self.connection: ServerConnection | None = None
        self.connected = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.arrived = asyncio.Condition()
        self.url = ""

    async def handler(self, connection: ServerConnection) -> None:
        self.connection = connection
        self.connected.set()
        loop = asyncio.get_running_loop()
        try:
            async for message in connection:
                self.arrivals.append((loop.time(), json.loads(message)))
                async with self.arrived:
                    self.arrived.notify_all()
        except ConnectionClosed:
            pass
        finally:
            self.disconnected.set()

    async def wait_until(self, predicate, timeout: float = 3.0) -> None:
        async with asyncio.timeout(timeout), self.arrived:
            await self.arrived.wait_for(predicate)

    def events(self, name: str) -> list[dict]:
        return [message for _, message in self.arrivals if message["event"] == name]

    def arrival_time(self, name: str) -> float:
        return next(t for t, message in self.arrivals if message["event"] == name)

    async def send(self, message: dict | str | bytes) -> None:
        await self.connection.send(json.dumps(message) if isinstance(message, dict) else message)

    async def send_audio(self, stream_sid: str, audio: bytes) -> None:
        payload = base64.b64encode(audio).decode()
        await self.send({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}})

    async def send_mark(self, stream_sid: str, name: str) -> None:
        await self.send({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


@pytest.fixture
async def server():
    fake = FakeServer()
    async with serve(fake.handler, "127.0.0.1", 0, compression=None) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        fake.url = f"ws://127.0.0.1:{port}/media"
        yield fake


def make_client(server: FakeServer, **kwargs) -> TwilioStreamClient:
    return TwilioStreamClient(
        server.url,
        call_sid=CALL_SID,
        account_sid=ACCOUNT_SID,
        custom_parameters={"token": "stream-token"},
        **kwargs,
    )


@pytest.fixture
async def twilio(server):
    client = make_client(server, headers={"X-Twilio-Signature": "signature"})
    await client.start()
    await asyncio.wait_for(server.connected.wait(), 2)
    yield client
    await client.aclose()


async def test_it_opens_with_connected_then_start(server, twilio):
    await server.wait_until(lambda: len(server.arrivals) >= 2)
    connected, start = (message for _, message in server.arrivals[:2])

    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert start["event"] == "start"
    assert start["sequenceNumber"] == "1"
    assert start["streamSid"] == twilio.stream_sid
    assert twilio.stream_sid.startswith("MZ") and len(twilio.stream_sid) == 34
    assert start["start"]["callSid"] == CALL_SID
    assert start["start"]["accountSid"] == ACCOUNT_SID
    assert start["start"]["customParameters"] == {"token": "stream-token"}
    assert server.connection.request.headers["X-Twilio-Signature"] == "signature"


@pytest.mark.realtime
async def test_it_sends_a_frame_every_20_ms(server, twilio):
    await asyncio.sleep(1.0)
    arrivals = [(t, m) for t, m in server.arrivals if m["event"] == "media"]

    assert 45 <= len(arrivals) <= 51
    for index, (_, message) in enumerate(arrivals):
        assert message["sequenceNumber"] == str(index + 2)
        assert message["streamSid"] == twilio.stream_sid
        assert message["media"]["track"] == "inbound"
        assert message["media"]["chunk"] == str(index + 1)
        assert message["media"]["timestamp"] == str(index * 20)
        assert base64.b64decode(message["media"]["payload"]) == b"\xff" * 160
    # Scheduled against the start time: the rate does not drift.
    first, last = arrivals[0][0], arrivals[-1][0]
    assert abs((last - first) - (len(arrivals) - 1) * 0.020) < 0.03
    assert twilio.frames_sent >= len(arrivals)


async def test_it_sends_caller_audio_then_silence(server):
    client = make_client(server, caller_audio=b"\x01" * 400)
    await client.start()
    try:
        await server.wait_until(lambda: len(server.events("media")) >= 4)
        client.queue_caller_audio(b"\x02" * 160)
        await client.wait_for(lambda: client.caller_audio_pending == 0)
        await server.wait_until(lambda: len(server.events("media")) >= 7)
    finally:
        await client.aclose()
    payloads = [base64.b64decode(m["media"]["payload"]) for m in server.events("media")]

    assert payloads[:4] == [
        b"\x01" * 160,
        b"\x01" * 160,
        b"\x01" * 80 + b"\xff" * 80,
        b"\xff" * 160,
    ]
    assert b"\x02" * 160 in payloads[4:]


@pytest.mark.realtime
async def test_a_mark_echoes_once_the_audio_before_it_has_played(server, twilio):
    audio = b"\x55" * 8000  # one second
    await server.send_audio(twilio.stream_sid, audio)
    await server.send_mark(twilio.stream_sid, "greeting")
    sent_at = asyncio.get_running_loop().time()

    await server.wait_until(lambda: server.events("mark"))

    delay = server.arrival_time("mark") - sent_at
    assert 0.95 <= delay <= 1.3
    [echo] = server.events("mark")
    assert echo["streamSid"] == twilio.stream_sid
    assert echo["mark"] == {"name": "greeting"}
    assert twilio.marks_echoed == [("greeting", True)]
    assert twilio.heard_by_mark == {"greeting": 8000}
    assert twilio.played == audio
    assert twilio.errors == []


async def test_a_mark_with_nothing_buffered_echoes_at_once(server, twilio):
    await server.send_mark(twilio.stream_sid, "empty")
    sent_at = asyncio.get_running_loop().time()

    await server.wait_until(lambda: server.events("mark"))

    assert server.arrival_time("mark") - sent_at < 0.1
    assert twilio.marks_echoed == [("empty", True)]


async def test_clear_drops_the_audio_and_echoes_pending_marks_at_once(server, twilio):
    await server.send_audio(twilio.stream_sid, b"\x55" * 16000)  # two seconds
    await server.send_mark(twilio.stream_sid, "answer")
    await asyncio.sleep(0.2)
    await server.send({"event": "clear", "streamSid": twilio.stream_sid})
    cleared_at = asyncio.get_running_loop().time()

    await server.wait_until(lambda: server.events("mark"))

    assert server.arrival_time("mark") - cleared_at < 0.1
    assert twilio.marks_echoed == [("answer", False)]
    heard = len(twilio.played)
    assert 1400 <= heard <= 2000  # about 200 ms
    assert twilio.heard_by_mark == {"answer": heard}
    assert len(twilio.clears) == 1
    await asyncio.sleep(0.1)
    assert len(twilio.played) == heard


INVALID_MESSAGES = {
    "misspelled payload": lambda sid: {
        "event": "media",
        "streamSid": sid,
        "media": {"playload": "/w=="},
    },
    "null streamSid": lambda sid: {
        "event": "media",
        "streamSid": None,
        "media": {"payload": "/w=="},
    },
    "other streamSid": lambda sid: {"event": "clear", "streamSid": "MZ" + "0" * 32},
    "sequenceNumber": lambda sid: {
        "event": "media",
        "sequenceNumber": "1",
        "streamSid": sid,
        "media": {"payload": "/w=="},
    },
    "RIFF payload": lambda sid: {
        "event": "media",
        "streamSid": sid,
        "media": {"payload": base64.b64encode(b"RIFF\x00\x00\x00\x00WAVE").decode()},
    },
    "unknown event": lambda sid: {"event": "stop", "streamSid": sid},
    "not JSON": lambda sid: "{not json",
    "binary frame": lambda sid: b"\xff" * 160,
}


@pytest.mark.parametrize("kind", INVALID_MESSAGES)
async def test_an_invalid_message_is_an_error_and_is_not_played(server, twilio, kind):
    await server.send(INVALID_MESSAGES[kind](twilio.stream_sid))
    await server.send_mark(twilio.stream_sid, "fence")  # processed after the bad message

    await twilio.wait_for(lambda: twilio.marks_echoed, timeout=2)

    [error] = twilio.errors
    assert error.startswith("31950" if kind == "binary frame" else "31951")
    assert [m["event"] for m in twilio.received] == ["mark"]
    assert twilio.played == b""
    assert twilio.summary()["errors"] == [error]


async def test_it_sends_dtmf(server, twilio):
    twilio.send_dtmf("5")

    await server.wait_until(lambda: server.events("dtmf"))

    [dtmf] = server.events("dtmf")
    assert set(dtmf) == {"event", "sequenceNumber", "streamSid", "dtmf"}
    assert dtmf["dtmf"] == {"track": "inbound_track", "digit": "5"}
    assert dtmf["streamSid"] == twilio.stream_sid
    with pytest.raises(ValueError):
        twilio.send_dtmf("x")


async def test_sequence_numbers_count_every_message(server, twilio):
    twilio.send_dtmf("1")
    await server.send_mark(twilio.stream_sid, "m")
    await server.wait_until(lambda: server.events("mark") and len(server.events("media")) >= 3)

    numbers = [int(m["sequenceNumber"]) for _, m in server.arrivals if "sequenceNumber" in m]

    assert numbers == list(range(1, len(numbers) + 1))


async def test_stop_sends_stop_then_closes(server, twilio):
    await server.wait_until(lambda: server.events("media"))

    await twilio.stop()

    await asyncio.wait_for(server.disconnected.wait(), 2)
    last = server.arrivals[-1][1]
    assert last == {
        "event": "stop",
        "sequenceNumber": last["sequenceNumber"],
        "streamSid": twilio.stream_sid,
        "stop": {"accountSid": ACCOUNT_SID, "callSid": CALL_SID},
    }
    assert twilio.closed
    assert twilio.close_code == 1000
    assert not twilio.closed_by_server


async def test_a_server_close_ends_every_task(server, twilio):
    await server.send_audio(twilio.stream_sid, b"\x55" * 8000)
    await server.send_mark(twilio.stream_sid, "never")
    await asyncio.sleep(0.1)

    await server.connection.close(1000)

    assert await twilio.wait_closed(2) == 1000
    assert twilio.closed_by_server
    assert twilio.marks_echoed == []
    await asyncio.sleep(0)
    leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith("twilio-")]
    assert [t for t in leftovers if not t.done()] == []
    duration = twilio.stream_ms()
    await asyncio.sleep(0.05)
    assert twilio.stream_ms() == duration


async def test_summary_counts_what_happened(server, twilio):
    await server.send_audio(twilio.stream_sid, b"\x55" * 160)
    await server.send_mark(twilio.stream_sid, "m")
    await server.send(b"binary")
    await twilio.wait_for(lambda: twilio.marks_echoed and twilio.errors, timeout=2)

    summary = twilio.summary()

    assert summary["frames_received"] == 1
    assert summary["bytes_played"] == 160
    assert summary["marks_sent_by_server"] == 1
    assert summary["marks_echoed"] == 1
    assert summary["clears"] == 0
    assert summary["errors"] == ["31950: binary frame"]
    assert summary["close_code"] is None
    assert summary["duration_ms"] >= 20


async def test_wait_for_explains_a_timeout(twilio):
    with pytest.raises(TimeoutError, match="frames_sent"):
        await twilio.wait_for(lambda: False, timeout=0.05, what="the impossible")


async def test_a_failing_callback_is_reraised(server):
    def on_event(kind, detail):
        if kind == "received":
            raise RuntimeError("log is broken")

    client = make_client(server, on_event=on_event)
    await client.start()
    await asyncio.wait_for(server.connected.wait(), 2)
    await server.send_mark(client.stream_sid, "m")

    with pytest.raises(RuntimeError, match="log is broken"):
        await client.wait_for(lambda: False, timeout=2)
    with pytest.raises(RuntimeError, match="log is broken"):
        await client.aclose()


# --- A whole simulated call, against a small stand-in for our server ----------------------


async def test_a_slow_answer_to_the_last_recording_callback_is_still_read(tmp_path):
    """Twilio reports a recording `completed` as the call is hung up; the simulated call
    must keep its HTTP session open until the server has answered, however slowly."""
    rest_port = free_port()
    statuses: list[str] = []
    callback_path = "/twilio/recording/status"

    async def incoming(request: web.Request) -> web.Response:
        stream = f"ws://{request.host}/twilio/stream"
        return web.Response(
            text=f'<Response><Connect><Stream url="{stream}"/></Connect></Response>'
        )

    async def accepted(request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def rest(http: aiohttp.ClientSession, path: str, form: dict) -> None:
        url = f"http://127.0.0.1:{rest_port}/2010-04-01/Accounts/{settings.TWILIO_ACCOUNT_SID}"
        auth = aiohttp.BasicAuth(settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN)
        async with http.post(url + path, data=form, auth=auth) as response:
            assert response.status < 300, await response.text()

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            event = json.loads(message.data)
            if event["event"] == "start":
                call_sid = event["start"]["callSid"]
                callback = f"http://{request.host}{callback_path}"
                async with aiohttp.ClientSession() as http:
                    form = {"RecordingStatusCallback": callback, "RecordingChannels": "dual"}
                    await rest(http, f"/Calls/{call_sid}/Recordings.json", form)
                    await asyncio.sleep(0.3)  # something to record
                    await rest(http, f"/Calls/{call_sid}.json", {"Status": "completed"})
        return ws

    async def recording_status(request: web.Request) -> web.Response:
        await asyncio.sleep(0.5)  # a busy server; the call has long been over by now
        statuses.append((await request.post())["RecordingStatus"])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/twilio/voice/incoming", incoming)
    app.router.add_post("/twilio/voice/status", accepted)
    app.router.add_post("/twilio/stream/status", accepted)
    app.router.add_get("/twilio/stream", stream)
    app.router.add_post(callback_path, recording_status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        call = SimulatedCall(
            server_url=url,
            public_url=url,
            to_number="+14155550100",
            rest_port=rest_port,
            duration_s=10,
            call_recording_path=tmp_path / "call.wav",
            log=lambda line: None,
        )
        result = await call.run()
    finally:
        await runner.cleanup()

    assert result.end_reason == "hangup", result.end_detail
    assert statuses == ["completed"]
    assert result.errors == []
