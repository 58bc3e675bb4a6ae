"""Staff control across processes through Redis: acknowledged, and surviving Redis outages.

Two daphne processes share a real redis-server and the database, as in production. Twilio's
stream is held by process A; a staff user signed in to process B acts on the call. An
action succeeds only when the process holding the stream confirms it acted. Each test prints
the figures it measures.
"""

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from calls import security
from calls.models import Call
from calls.simulator.rest import TwilioRestEmulator
from calls.simulator.stream import TwilioStreamClient
from peers.realtime import FakeRealtimeServer, Reply

from .agent_harness import answer
from .servers import RedisServer, daphne_process
from .staff_http import StaffBrowser, create_world
from .twilio_helpers import ACCOUNT_SID, new_call_sid

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]

GREETING = Reply(transcript="Hello and welcome.", audio_ms=4000)
# How long a call goes without any control message before staff act on it: longer than the
# 5 s after which redis-py's socket timeout used to kill the stream's channel-layer read.
# QUIET_SECONDS=60 in the environment measures a whole minute.
QUIET_S = float(os.environ.get("QUIET_SECONDS", "9"))
# What staff read when the call's stream cannot be asked, or did not answer.
STREAM_UNREACHABLE = (
    "The call's stream could not be reached: the channel layer (Redis) is not answering. "
    "Try again in a moment."
)
STREAM_UNANSWERED = "The call's stream did not answer; it may have ended."
# How long Redis stays down in the outage test.
OUTAGE_S = 10.0


@dataclass
class World:
    a: str  # base URL of the process that holds the stream
    b: str  # base URL of the process the staff user is signed in to
    a_process: object
    rest: TwilioRestEmulator
    staff: StaffBrowser
    logs: Path


@contextlib.asynccontextmanager
async def two_processes(redis_url: str, tmp_path: Path) -> AsyncIterator[World]:
    await create_world()
    async with (
        FakeRealtimeServer(default_reply=GREETING) as realtime,
        TwilioRestEmulator() as rest,
    ):
        peers = {
            "REDIS_URL": redis_url,
            "OPENAI_REALTIME_URL": realtime.url,
            "TWILIO_API_BASE_URL": rest.base_url,
        }
        with (
            daphne_process(tmp_path / "a.log", **peers) as (server_a, process_a),
            daphne_process(tmp_path / "b.log", **peers) as (server_b, _),
        ):
            staff = StaffBrowser(server_b)
            try:
                await staff.login("operator", "operator-password")
                yield World(server_a, server_b, process_a, rest, staff, tmp_path)
            except BaseException:
                for name in ("a.log", "b.log"):
                    print(f"--- daphne {name}\n" + (tmp_path / name).read_text()[-6000:])
                raise
            finally:
                await staff.close()


async def open_stream(world: World, call_sid: str, token: str) -> TwilioStreamClient:
    """Twilio opens the call's stream on process A; returns once the greeting plays."""
    client = TwilioStreamClient(
        world.a.replace("http", "ws") + "/twilio/stream",
        call_sid=call_sid,
        account_sid=ACCOUNT_SID,
        custom_parameters={"token": token},
    )
    await client.start()
    await client.wait_for(lambda: client.media_received >= 25, timeout=10, what="the greeting")
    return client


async def signed_post(base_url: str, path: str, params: dict[str, str]) -> int:
    signature = security.compute_signature(security.public_url(path), params)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            base_url + path, data=params, headers={security.SIGNATURE_HEADER: signature}
        ) as response,
    ):
        return response.status


async def healthz(base_url: str) -> tuple[int, dict, float]:
    started = time.monotonic()
    async with aiohttp.ClientSession() as http, http.get(f"{base_url}/healthz") as response:
        return response.status, await response.json(), time.monotonic() - started


async def event_kinds(call_sid: str) -> list[str]:
    call = await Call.objects.aget(sid=call_sid)
    return [kind async for kind in call.events.values_list("kind", flat=True)]


async def test_control_reaches_a_call_left_quiet_longer_than_the_redis_read_timeout(
    redis_url, tmp_path
):
    async with two_processes(redis_url, tmp_path) as world:
        call_sid = new_call_sid()
        token = await answer(world.a, call_sid)
        call = await Call.objects.aget(sid=call_sid)

        # Answered, but Twilio has not opened the stream yet: nothing to clear or say into.
        status, said = await world.staff.attempt(str(call.id), "say", text="Hello?")
        assert (status, said["ok"]) == (409, False)
        assert (
            said["message"]
            == "This call has no live audio stream, so the agent cannot speak on it."
        )
        status, cleared = await world.staff.attempt(str(call.id), "clear")
        assert (status, cleared["ok"]) == (409, False)
        assert (
            cleared["message"]
            == "This call has no live audio stream, so there is no audio to clear."
        )

        client = await open_stream(world, call_sid, token)
        try:
            # The greeting ends; no control message crosses for longer than 5 s.
            quiet_from = time.monotonic()
            await asyncio.sleep(QUIET_S)
            quiet_s = time.monotonic() - quiet_from

            asked = time.monotonic()
            cleared = await world.staff.act(str(call.id), "clear")
            answered_s = time.monotonic() - asked
            assert cleared == {"ok": True, "message": "Cleared the audio that was playing."}
            # The confirmation means it was done: the clear is already on its way to Twilio.
            await client.wait_for(lambda: client.clears, timeout=2, what="a clear")

            hung_up = await world.staff.act(str(call.id), "hangup")
            assert hung_up == {"ok": True, "message": "Hung up."}
            await client.wait_closed(timeout=5)
            assert client.closed_by_server
            assert [r.call_sid for r in world.rest.hangups()] == [call_sid]
            print(
                f"\nquiet for {quiet_s:.1f} s with no control message; a staff clear from the "
                f"other process was confirmed in {answered_s * 1000:.0f} ms"
            )
        finally:
            await client.aclose()
    kinds = await event_kinds(call_sid)
    assert "clear" in kinds and "hangup" in kinds and "stream_unanswered" not in kinds


async def test_a_redis_outage_mid_call_fails_nothing_and_control_comes_back(
    stoppable_redis: RedisServer, tmp_path
):
    async with two_processes(stoppable_redis.url, tmp_path) as world:
        call_sid = new_call_sid()
        token = await answer(world.a, call_sid)
        call = await Call.objects.aget(sid=call_sid)
        client = await open_stream(world, call_sid, token)
        try:
            status, health, _ = await healthz(world.b)
            assert (status, health["ok"]) == (200, True), health

            stoppable_redis.stop()
            stopped = time.monotonic()

            # Twilio's webhooks are answered: a live-feed broadcast failing fails nothing.
            for server in (world.a, world.b):
                await answer(server, new_call_sid())  # asserts 200 and a stream in the TwiML
            stream_status = {
                "AccountSid": ACCOUNT_SID,
                "CallSid": call_sid,
                "StreamSid": "MZ" + "0" * 32,
                "StreamEvent": "stream-error",
                "StreamError": "just a test",
            }
            assert await signed_post(world.b, "/twilio/stream/status", stream_status) == 204

            # Staff are told, in words, that the call cannot be reached now.
            status, cleared = await world.staff.attempt(str(call.id), "clear")
            assert (status, cleared) == (503, {"ok": False, "message": STREAM_UNREACHABLE})
            status, said = await world.staff.attempt(str(call.id), "say", text="One moment.")
            assert (status, said) == (503, {"ok": False, "message": STREAM_UNREACHABLE})

            status, health, health_s = await healthz(world.b)
            assert status == 503, health
            assert health["checks"]["database"] == "ok"
            assert health["checks"]["channel_layer"].startswith("down: "), health
            assert health_s < 3

            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
            outage_s = time.monotonic() - stopped
            stoppable_redis.start()
            back = time.monotonic()

            # Control works again once the stream's process has joined its group again.
            attempts = 0
            while True:
                attempts += 1
                status, cleared = await world.staff.attempt(str(call.id), "clear")
                if cleared["ok"] or time.monotonic() - back > 10:
                    break
                await asyncio.sleep(0.25)
            clear_back_s = time.monotonic() - back
            assert cleared == {"ok": True, "message": "Cleared the audio that was playing."}
            assert clear_back_s < 5
            await client.wait_for(lambda: client.clears, timeout=2, what="a clear")

            hung_up = await world.staff.act(str(call.id), "hangup")
            assert hung_up == {"ok": True, "message": "Hung up."}
            await client.wait_closed(timeout=5)
            hangup_back_s = time.monotonic() - back
            assert client.closed_by_server

            status, health, _ = await healthz(world.b)
            assert (status, health["ok"]) == (200, True), health
            rejoined = [
                line.split(": ", 1)[-1]
                for line in (world.logs / "a.log").read_text().splitlines()
                if "groups joined again" in line
            ]
            print(f"\nprocess A: {rejoined}")
            print(
                f"\nRedis down for {outage_s:.1f} s; /healthz said 503 in "
                f"{health_s * 1000:.0f} ms; "
                f"after Redis came back a staff clear reached the call in {clear_back_s:.2f} s "
                f"({attempts} attempts), and the hang-up had closed the stream "
                f"{hangup_back_s:.2f} s after"
            )
        finally:
            await client.aclose()
    kinds = await event_kinds(call_sid)
    # The clear and the say during the outage (and any attempt before the group was joined).
    assert kinds.count("stream_unanswered") >= 2


async def test_an_action_the_stream_never_confirms_is_reported_and_logged(redis_url, tmp_path):
    async with two_processes(redis_url, tmp_path) as world:
        call_sid = new_call_sid()
        token = await answer(world.a, call_sid)
        call = await Call.objects.aget(sid=call_sid)
        client = await open_stream(world, call_sid, token)
        try:
            # The process holding the stream dies: nobody is left to act, or to say so.
            world.a_process.kill()
            world.a_process.wait()

            asked = time.monotonic()
            status, cleared = await world.staff.attempt(str(call.id), "clear")
            waited_s = time.monotonic() - asked
            assert (status, cleared) == (504, {"ok": False, "message": STREAM_UNANSWERED})
            assert 1.5 < waited_s < 4

            # A hang-up is Twilio's: done, and said to be unconfirmed by the stream.
            status, hung_up = await world.staff.attempt(str(call.id), "hangup")
            assert status == 200
            assert hung_up == {
                "ok": True,
                "warning": True,
                "message": f"Hung up. {STREAM_UNANSWERED}",
            }
            assert [r.call_sid for r in world.rest.hangups()] == [call_sid]
            print(f"\nan unanswered clear was reported after {waited_s:.2f} s")
        finally:
            await client.aclose()
    call = await Call.objects.aget(sid=call_sid)
    events = [e async for e in call.events.values_list("kind", "user__username", "data")]
    assert ("clear", "operator", {}) in events
    unanswered = [
        (user, data["action"]) for kind, user, data in events if kind == "stream_unanswered"
    ]
    assert unanswered == [("operator", "clear"), ("operator", "hangup")]
