"""Whole calls against the real ASGI app: Twilio's side, the model's side, and our server.

- Our server: `voicebot.asgi.application` served by daphne on a background thread of the
  test process, on loopback. Being in-process, it shares the test's settings (so fixtures
  can point it at the local peers) and the test database, which is a file for this reason
  (voicebot/test_settings.py); tests that use it run with `django_db(transaction=True)`.
- Twilio: `TwilioStreamClient` (real-time audio both ways, marks echoed as played) and the
  `TwilioRestEmulator`, which ends the stream when a transfer replaces the TwiML, as Twilio
  does.
- The model: `FakeRealtimeServer`, the GA protocol on loopback.

A call starts as Twilio starts one: a signed POST to the voice webhook, then the stream with
the token from the TwiML.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.layers import channel_layers

from agents.models import Agent, TransferTarget
from calls import security
from calls.models import Call, CallEvent, MediaStream, TranscriptEntry
from calls.simulator.rest import TwilioRestEmulator
from calls.simulator.stream import TwilioStreamClient
from peers.ports import free_port, wait_for_port
from peers.realtime import FakeRealtimeServer, FakeSession, Reply

from .twilio_helpers import ACCOUNT_SID, incoming_params, new_call_sid

AGENT_NUMBER = "+14155550100"
RECEPTION_NUMBER = "+14155550199"
SALES_NUMBER = "+14155550188"


class InFlight:
    """The ASGI calls the in-process server is running, so that a test can end with them.

    The server outlives each test, but what it does for a test must not: a stream the test
    left open, or one it stopped without waiting, still writes the call's end (in a
    transaction) while the test's teardown empties the tables; on PostgreSQL the two
    deadlock and the tables stay full for the next test. `settle()` closes every socket
    still open, as a peer leaving would, and waits until every call has returned.
    """

    def __init__(self, application: Any) -> None:
        self.application = application
        self._changed = threading.Condition()
        # id -> (the server's loop, the call's `send`, its scope), while the call runs.
        self._calls: dict[int, tuple[asyncio.AbstractEventLoop, Any, dict]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._settling = False
        self._keys = itertools.count()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if self._settling:
            await _refuse(scope, receive, send)
            return
        key = next(self._keys)
        loop = asyncio.get_running_loop()
        with self._changed:
            self._loop = loop
            self._calls[key] = (loop, send, scope)
        try:
            await self.application(scope, receive, send)
        finally:
            with self._changed:
                del self._calls[key]
                self._changed.notify_all()

    def settle(self, timeout_s: float = 15.0) -> None:
        """Close the sockets still open and wait until the server has finished every call,
        and every database write it queued (from the test's thread, at teardown)."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            self._settling = True  # a page reconnecting meanwhile is turned away
            calls = list(self._calls.values())
            loop = self._loop
        try:
            closing = [
                # A server's close frame says 1000 (autobahn refuses 1001 from a server).
                asyncio.run_coroutine_threadsafe(
                    send({"type": "websocket.close", "code": 1000}), call_loop
                )
                for call_loop, send, scope in calls
                if scope["type"] == "websocket"
            ]
            for sent in closing:
                sent.result(max(0.0, deadline - time.monotonic()))
            with self._changed:
                if not self._changed.wait_for(
                    lambda: not self._calls, max(0.0, deadline - time.monotonic())
                ):
                    left = [scope.get("path", "") for _, _, scope in self._calls.values()]
                    raise RuntimeError(f"the server did not finish within {timeout_s}s: {left}")
            if loop is not None:
                # A task cancelled while awaiting the database leaves its query running on
                # the one thread that serves the server's (and the test's) database calls:
                # anything queued after it runs after it.
                idle = asyncio.run_coroutine_threadsafe(_database_thread_idle(), loop)
                idle.result(max(0.0, deadline - time.monotonic()))
        finally:
            with self._changed:
                self._settling = False


@database_sync_to_async
def _database_thread_idle() -> None:
    """Runs once the database calls queued before it have run."""


async def _refuse(scope: dict, receive: Any, send: Any) -> None:
    """Turn a call away without reaching the project (the server is settling)."""
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.close"})  # before accept: the upgrade gets 403
    elif scope["type"] == "http":
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b""})


class AsgiServer:
    """daphne serving the project on 127.0.0.1 from a thread of the test process.

    In-process, it shares the test's settings (so fixtures can point it at the local peers)
    and its database file. It also serves static files, as the proxy does in production, for
    the browser tests. Twisted's reactor runs once per process, so the suite shares one.
    """

    def __init__(self) -> None:
        from daphne.server import Server
        from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

        from voicebot.asgi import application

        self.port = free_port()
        self.calls = InFlight(ASGIStaticFilesHandler(application))
        self.server = Server(
            self.calls,
            endpoints=[f"tcp:port={self.port}:interface=127.0.0.1"],
            signal_handlers=False,  # not the main thread
            verbosity=0,
            application_close_timeout=5,
        )
        self.thread = threading.Thread(target=self.server.run, name="daphne", daemon=True)

    def start(self) -> None:
        self.thread.start()
        wait_for_port(self.port, timeout=10)

    def stop(self) -> None:
        from twisted.internet import reactor

        reactor.callFromThread(reactor.stop)
        self.thread.join(10)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stream_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/twilio/stream"


@pytest.fixture(scope="session")
def asgi_daphne() -> Iterator[AsgiServer]:
    server = AsgiServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def asgi_server(asgi_daphne: AsgiServer, settings) -> Iterator[AsgiServer]:
    """The suite's server, for one test: at its end, the server has finished the test's
    calls (before the test's tables are emptied).

    It shares this process with the test, in another event loop, and both receive on the
    channel layer (the consumers; a staff action awaiting its reply). channels-redis cannot
    receive from two loops of one process at once, so these tests use the in-memory layer;
    the tests that run real daphne processes (test_redis_control, test_multi_process, the
    deploy recipe, drain and ghost calls) cover Redis.
    """
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    channel_layers.backends.clear()
    yield asgi_daphne
    asgi_daphne.calls.settle()
    channel_layers.backends.clear()


@pytest.fixture
async def realtime(settings) -> Any:
    """The fake model; by default it answers nothing (tests script every reply)."""
    async with FakeRealtimeServer(default_reply=Reply(transcript="", audio_ms=0)) as server:
        settings.OPENAI_REALTIME_URL = server.url
        yield server


@pytest.fixture
async def rest(settings) -> Any:
    async with TwilioRestEmulator() as emulator:
        settings.TWILIO_API_BASE_URL = emulator.base_url
        yield emulator


@sync_to_async
def make_agent(
    *,
    greeting: str = "",
    targets: tuple[tuple[str, str, bool], ...] = (("reception", RECEPTION_NUMBER, True),),
    **fields: Any,
) -> Agent:
    """An agent answering AGENT_NUMBER. Limits are set with update() to allow tiny values."""
    agent = Agent.objects.create(name="Front desk", phone_number=AGENT_NUMBER, greeting=greeting)
    for name, number, is_default in targets:
        TransferTarget.objects.create(
            agent=agent,
            name=name,
            phone_number=number,
            is_default=is_default,
            description=f"The {name} team",
        )
    if fields:
        Agent.objects.filter(pk=agent.pk).update(**fields)
        agent.refresh_from_db()
    return agent


@dataclass
class LiveCall:
    """One call in progress: the Twilio side, the model side, and a timeline of events."""

    call_sid: str
    twilio: TwilioStreamClient
    rest: TwilioRestEmulator
    model: FakeSession | None = None
    # (loop time, kind, detail) for everything the Twilio client saw.
    timeline: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)

    def on_event(self, kind: str, detail: dict[str, Any]) -> None:
        self.timeline.append((asyncio.get_running_loop().time(), kind, detail))

    def first(self, kind: str, predicate: Callable[[dict], bool] = lambda d: True) -> float:
        return next(t for t, k, d in self.timeline if k == kind and predicate(d))

    def last(self, kind: str, predicate: Callable[[dict], bool] = lambda d: True) -> float:
        return max(t for t, k, d in self.timeline if k == kind and predicate(d))

    @property
    def played_ms(self) -> float:
        return len(self.twilio.played) / 8

    async def played_at_least(self, ms: float, timeout: float = 5.0) -> None:
        await self.twilio.wait_for(lambda: self.played_ms >= ms, timeout, f"{ms} ms played")

    async def call(self) -> Call:
        return await Call.objects.aget(sid=self.call_sid)

    async def events(self, kind: str | None = None) -> list[CallEvent]:
        query = CallEvent.objects.filter(call__sid=self.call_sid)
        if kind is not None:
            query = query.filter(kind=kind)
        return [event async for event in query.order_by("created_at", "id")]

    async def transcript(self) -> list[TranscriptEntry]:
        query = TranscriptEntry.objects.filter(call__sid=self.call_sid).order_by("offset_ms", "id")
        return [entry async for entry in query]

    async def wait_until(
        self, predicate: Callable[[], Any], timeout: float = 5.0, what: str = ""
    ) -> Any:
        """Poll an async or sync predicate (e.g. a database query) until it is truthy."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"not true after {timeout}s: {what or predicate}")
            await asyncio.sleep(0.02)

    async def ended(self, timeout: float = 10.0) -> MediaStream:
        """Wait until our server has finished with the stream (session stopped, counters in)."""

        async def stopped() -> MediaStream | None:
            return await MediaStream.objects.filter(
                sid=self.twilio.stream_sid, stopped_at__isnull=False
            ).afirst()

        return await self.wait_until(stopped, timeout, "stream record closed")


async def answer(base_url: str, call_sid: str, to: str = AGENT_NUMBER) -> str:
    """POST the voice webhook to `base_url` as Twilio does (signed); return the stream token."""
    path = "/twilio/voice/incoming"
    params = incoming_params(call_sid, to)
    signature = security.compute_signature(security.public_url(path), params)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            base_url + path,
            data=params,
            headers={security.SIGNATURE_HEADER: signature},
        ) as response,
    ):
        assert response.status == 200, await response.text()
        document = await response.text()
    parameter = ET.fromstring(document).find("./Connect/Stream/Parameter[@name='token']")
    assert parameter is not None, document
    return parameter.get("value")


async def start_call(
    server: AsgiServer,
    rest: TwilioRestEmulator,
    realtime: FakeRealtimeServer | None,
    *,
    transfer_ends_stream: bool = True,
    record: bool = False,
) -> LiveCall:
    """Answer a call and open its stream; wait for the model connection if there is one."""
    call_sid = new_call_sid()
    token = await answer(server.http_url, call_sid)
    live = LiveCall(call_sid=call_sid, twilio=None, rest=rest)  # type: ignore[arg-type]
    live.twilio = TwilioStreamClient(
        server.stream_url,
        call_sid=call_sid,
        account_sid=ACCOUNT_SID,
        custom_parameters={"token": token},
        on_event=live.on_event,
        # What a recording of the call captures, at the emulator.
        audio_tap=rest.audio_tap_for(call_sid) if record else None,
    )
    rest.register_call(call_sid, account_sid=ACCOUNT_SID, to=AGENT_NUMBER)
    if transfer_ends_stream:
        # Twilio ends the stream once the call's TwiML is replaced by the <Dial>.
        rest.on_twiml = lambda sid, twiml: live.twilio.stop() if sid == call_sid else None
    await live.twilio.start()
    if realtime is not None:
        # Once configured: keys and audio sent before the bridge has its model go unheard.
        live.model = await realtime.wait_for_session(configured=True)
    return live


async def finish(live: LiveCall) -> None:
    """Hang up as the caller if the call is still up, and wait for the server to finish."""
    if not live.twilio.closed:
        await live.twilio.stop()
    await live.ended()
    await live.twilio.aclose()
