"""Staff listening in and taking over over /ws/calls/<uuid>/listen, against a whole call:
our server (daphne, in-process), the Twilio emulator and the fake model."""

import asyncio
import json

import aiohttp
import pytest
from asgiref.sync import sync_to_async
from django.test import Client

from callmedia.listen import KIND_AGENT, KIND_CALLER, KIND_CLEAR, parse
from calls.consumers.listen import MicRate, mic_problem
from calls.models import Call, CallEvent, TranscriptEntry
from peers.realtime import tone

from .agent_harness import finish, make_agent, start_call
from .dashboard_helpers import make_staff

pytestmark = pytest.mark.django_db(transaction=True)
pytest_plugins = ["tests.agent_harness"]

ORIGIN = "http://127.0.0.1"


@sync_to_async
def staff_cookie(username: str, *codenames: str) -> str:
    user = make_staff(username, *codenames)
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


class Ear:
    """A listener socket: batches of audio parsed into records, JSON messages kept."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.records: list[tuple[int, int, bytes]] = []
        self.batches = 0
        self.messages: list[dict] = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type == aiohttp.WSMsgType.BINARY:
                self.batches += 1
                self.records += parse(message.data)
            elif message.type == aiohttp.WSMsgType.TEXT:
                self.messages.append(json.loads(message.data))

    def audio(self, kind: int) -> list[tuple[int, bytes]]:
        return [(start, audio) for k, start, audio in self.records if k == kind]

    async def wait_for(self, predicate, timeout: float = 5.0, what: str = "") -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"not true after {timeout}s: {what}")
            await asyncio.sleep(0.02)


async def open_ear(http, server, call_id, cookie, origin=ORIGIN):
    return await http.ws_connect(
        f"ws://127.0.0.1:{server.port}/ws/calls/{call_id}/listen",
        headers={"Origin": origin, "Cookie": f"sessionid={cookie}"},
    )


async def test_the_socket_is_for_staff_who_may_listen(asgi_server, realtime, rest):
    await make_agent()
    live = await start_call(asgi_server, rest, realtime)
    call = await live.call()
    watcher = await staff_cookie("watcher", "view_call")
    listener = await staff_cookie("listener", "view_call", "listen_call")
    async with aiohttp.ClientSession() as http:
        for cookie, origin in ((watcher, ORIGIN), ("", ORIGIN), (listener, "https://evil.example")):
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await open_ear(http, asgi_server, call.pk, cookie, origin)
        ws = await open_ear(http, asgi_server, call.pk, listener)
        ear = Ear(ws)
        # Without take_over_call, taking over is refused, and microphone audio is dropped.
        await ws.send_str(json.dumps({"action": "take_over"}))
        await ear.wait_for(lambda: any(m["type"] == "result" for m in ear.messages))
        result = next(m for m in ear.messages if m["type"] == "result")
        assert "permission" in result["error"]
        await ws.send_bytes(tone(60, 700))
        await asyncio.sleep(0.3)
        assert live.twilio.summary()["errors"] == []
        await ws.close()
    await finish(live)


async def test_a_listener_hears_both_sides_as_the_caller_does(asgi_server, realtime, rest):
    await make_agent()
    live = await start_call(asgi_server, rest, realtime)
    call = await live.call()
    live.twilio.queue_caller_audio(tone(20_000, 1000))
    cookie = await staff_cookie("listener", "view_call", "listen_call")
    async with aiohttp.ClientSession() as http:
        ear = Ear(await open_ear(http, asgi_server, call.pk, cookie))
        await ear.wait_for(lambda: len(ear.audio(KIND_CALLER)) >= 3, what="caller audio")
        # The model answers 3 s of tone in a burst: the listener gets it stamped at the stream
        # time the caller hears it, back to back from now.
        await live.model.reply(transcript="A tone.", audio=tone(3000, 400), pace="burst")
        await ear.wait_for(
            lambda: sum(len(a) for _, a in ear.audio(KIND_AGENT)) >= 3000 * 8, what="agent"
        )
        agent = ear.audio(KIND_AGENT)
        first_start = agent[0][0]
        for (start, audio), (next_start, _) in zip(agent, agent[1:], strict=False):
            assert next_start == start + len(audio) // 8
        # Caller frames continue, in order, without gaps.
        caller = ear.audio(KIND_CALLER)
        assert caller[0][1][:160] == tone(20_000, 1000)[:160] or caller[0][1] != b""
        # The caller cuts in: the clear reaches the listener, after the audio it cuts.
        await live.played_at_least(500)
        await live.model.speech_started()
        await ear.wait_for(lambda: ear.audio(KIND_CLEAR), what="clear")
        clear_at = ear.audio(KIND_CLEAR)[0][0]
        assert first_start < clear_at < first_start + 3000
        # ~10 batches a second, not 50 frames.
        batches, seconds = ear.batches, 1.0
        await asyncio.sleep(seconds)
        assert 5 <= ear.batches - batches <= 15
        await ear.ws.close()
    events = [e async for e in CallEvent.objects.filter(call=call).order_by("id")]
    kinds = [(e.kind, e.user_id is not None) for e in events]
    assert ("listen_started", True) in kinds
    await live.wait_until(
        lambda: CallEvent.objects.filter(call=call, kind="listen_stopped").aexists(),
        what="listen_stopped",
    )
    await finish(live)


async def test_take_over_silences_the_agent_and_hand_back_tells_the_model(
    asgi_server, realtime, rest
):
    await make_agent()
    live = await start_call(asgi_server, rest, realtime)
    call = await live.call()
    model = live.model
    cookie = await staff_cookie("boss", "view_call", "listen_call", "take_over_call")
    async with aiohttp.ClientSession() as http:
        ws = await open_ear(http, asgi_server, call.pk, cookie)
        ear = Ear(ws)
        await model.reply(transcript="Let me see.", audio=tone(5000), pace="burst")
        await live.played_at_least(300)
        await ws.send_str(json.dumps({"action": "take_over"}))
        await ear.wait_for(lambda: any(m.get("type") == "result" for m in ear.messages))
        assert next(m for m in ear.messages if m["type"] == "result")["error"] == ""
        # The agent was cut off, and the model no longer answers on its own.
        await live.twilio.wait_for(lambda: live.twilio.clears, 5, "clear")
        await model.wait_for(lambda: not model.creates_responses)
        assert await model.caller_turn("Is anyone there?") is None
        # The staff member's microphone reaches the caller as valid media frames.
        played = len(live.twilio.played)
        staff_voice = tone(600, 700)
        for start in range(0, len(staff_voice), 480):
            await ws.send_bytes(staff_voice[start : start + 480])
            await asyncio.sleep(0.06)
        await live.twilio.wait_for(lambda: len(live.twilio.played) >= played + 4000, 5, "staff")
        assert staff_voice[:960] in bytes(live.twilio.played)
        assert live.twilio.summary()["errors"] == []
        # Audio of the wrong shape is refused.
        assert (
            mic_problem(b"\xff" * 100)
            and mic_problem(b"\xff" * 1760)
            and not mic_problem(b"\xff" * 480)
        )
        # Hand back: the model hears, as context, what happened, and answers on its own again.
        await ws.send_str(json.dumps({"action": "hand_back"}))
        await model.wait_for(lambda: model.creates_responses)
        context = json.dumps(model.items_created)
        assert "member of staff spoke with the caller" in context
        assert "Is anyone there?" in context
        model.queue_reply(transcript="I'm back.", audio_ms=200)
        assert await model.caller_turn("Hello?") is not None
        # The staff member is told once the stream has confirmed; the model may hear the
        # hand-back before that, and the event is written between the two.
        await ear.wait_for(lambda: len([m for m in ear.messages if m["type"] == "result"]) >= 2)
        assert [m for m in ear.messages if m["type"] == "result"][1] == {
            "type": "result",
            "action": "hand_back",
            "error": "",
        }
        await ws.close()
    kinds = {(e.kind, u) async for e, u in _events_with_users(call)}
    assert {("take_over", "boss"), ("hand_back", "boss")} <= kinds
    staff = TranscriptEntry.objects.filter(call=call, speaker="staff")

    async def both_lines() -> bool:
        return await staff.acount() == 2

    await live.wait_until(both_lines, what="take-over and hand-back in the transcript")
    lines = [t.text async for t in staff]
    assert any("took over" in line for line in lines) and any("handed" in line for line in lines)
    await finish(live)


async def _events_with_users(call: Call):
    async for event in CallEvent.objects.filter(call=call).select_related("user"):
        yield event, event.user.username if event.user else ""


def test_microphone_rate_is_real_time_with_a_little_burst():
    rate = MicRate(0.0)
    # The burst, then nothing more until time passes.
    assert all(rate.allow(480, 0.0) for _ in range(8))
    assert not rate.allow(480, 0.0)
    assert rate.allow(480, 0.06)
    assert not rate.allow(480, 0.061)


class _Stream:
    """The parts of the media consumer the hub uses."""

    def __init__(self) -> None:
        from channels.layers import InMemoryChannelLayer

        self.call_id, self.call_sid, self.now_ms = "c0ffee", "CA-hub", 0
        self.tap = None
        self.channel_layer = InMemoryChannelLayer()
        self.lost: list[str] = []

    def holder_lost(self, channel: str) -> None:
        self.lost.append(channel)


async def test_the_tap_exists_only_while_someone_listens():
    from calls.consumers.listening import ListenHub

    stream = _Stream()
    hub = ListenHub(stream)
    assert stream.tap is None
    hub.join("a")
    hub.join("b")
    assert stream.tap is not None
    hub.leave("a")
    assert stream.tap is not None
    hub.leave("b")
    assert stream.tap is None
    # A listener whose keepalives stop (its process died) is forgotten, and the tap goes.
    hub.join("c")
    hub.holder = "c"
    hub.listeners["c"] = 0.0  # expired long ago
    await asyncio.sleep(0.25)
    assert stream.tap is None and stream.lost == ["c"]
