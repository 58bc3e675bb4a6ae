"""A server killed mid-call leaves no ghost: its calls are resumed or truthfully ended.

Real daphne processes on the test's database, the Twilio REST emulator as Twilio, and the
fake Realtime server as the model. Process A holds the call's stream and is SIGKILLed;
process B (both run the reconciler, as in production; the lease picks one) finds the lost
stream, asks Twilio, and acts. The periods are shortened so the test takes seconds, the
deadline stays the production one: 60 s from the crash.
"""

import asyncio
import contextlib

import aiohttp
import pytest
from asgiref.sync import sync_to_async

from agents.models import Agent
from calls import security
from calls.models import Call, CallEvent, MediaStream, ServerProcess
from calls.simulator.rest import TwilioRestEmulator
from calls.simulator.stream import TwilioStreamClient
from peers.realtime import FakeRealtimeServer, Reply

from .agent_harness import answer
from .servers import daphne, daphne_process
from .twilio_helpers import ACCOUNT_SID, new_call_sid

pytestmark = pytest.mark.django_db(transaction=True)

# The production deadline: every call of a crashed server resumed or ended within a minute.
DEADLINE_S = 60
# Heartbeat 0.5 s, a process silent for 2 s is dead, a pass every 0.5 s.
FAST_PERIODS = {
    "STREAM_HEARTBEAT_SECONDS": "0.5",
    "STREAM_STALE_SECONDS": "2",
    "RECONCILE_INTERVAL_SECONDS": "0.5",
    "RECONCILE_UNANSWERED_GRACE_SECONDS": "2",
    "CALL_RECONCILER": "true",
}


@sync_to_async
def create_agent() -> None:
    Agent.objects.create(name="Greeter", phone_number="+14155550100", greeting="Hello.")


async def wait_until(predicate, *, timeout: float, what: str):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await sync_to_async(predicate)()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


def stream_client(server: str, call_sid: str, token: str) -> TwilioStreamClient:
    return TwilioStreamClient(
        server.replace("http", "ws") + "/twilio/stream",
        call_sid=call_sid,
        account_sid=ACCOUNT_SID,
        custom_parameters={"token": token},
    )


def show_logs(tmp_path) -> None:
    for name in ("a.log", "b.log"):
        path = tmp_path / name
        if path.exists():
            print(f"--- daphne {name}\n" + path.read_text()[-6000:])


async def kill_server_holding_a_call(tmp_path, rest, realtime, act):
    """Start A and B, stream a call through A, SIGKILL A, then `act(call_sid, killed_at, B)`."""
    peers = {
        **FAST_PERIODS,
        "OPENAI_REALTIME_URL": realtime.url,
        "TWILIO_API_BASE_URL": rest.base_url,
    }
    loop = asyncio.get_running_loop()
    call_sid = new_call_sid()
    rest.register_call(call_sid, "in-progress", account_sid=ACCOUNT_SID)
    with (
        daphne_process(tmp_path / "a.log", **peers) as (server_a, process_a),
        daphne(tmp_path / "b.log", **peers) as server_b,
    ):
        client = stream_client(server_a, call_sid, await answer(server_a, call_sid))
        try:
            await client.start()
            await client.wait_for(lambda: client.media_received >= 5, timeout=10)
            stream = await wait_until(
                lambda: (
                    MediaStream.objects.filter(call__sid=call_sid, process__isnull=False)
                    .select_related("process")
                    .first()
                ),
                timeout=10,
                what="the stream to be recorded against process A",
            )
            first_seen = stream.process.last_seen
            # Longer than a silent process may be: A's heartbeat keeps its stream alive, and
            # no reconciler touches the call.
            await asyncio.sleep(3)
            assert rest.connect_streams(call_sid) == []
            assert [r for r in rest.requests if r.call_sid == call_sid] == []
            process = await ServerProcess.objects.aget(pk=stream.process_id)
            assert process.last_seen > first_seen

            process_a.kill()
            killed_at = loop.time()
            await act(call_sid, killed_at, server_b)
        except Exception:
            show_logs(tmp_path)
            raise
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()
    return call_sid


async def test_a_killed_servers_call_that_twilio_still_has_is_resumed_on_the_same_call(
    tmp_path,
):
    await create_agent()
    greeting = Reply(transcript="Hello.", audio_ms=600)
    async with FakeRealtimeServer(default_reply=greeting) as realtime, TwilioRestEmulator() as rest:

        async def act(call_sid: str, killed_at: float, server_b: str) -> None:
            update = await rest.wait_for_request(
                lambda r: r.call_sid == call_sid and r.stream is not None, timeout=DEADLINE_S
            )
            assert update.time - killed_at < DEADLINE_S
            assert update.status == 200
            assert update.stream.url == "wss://voicebot.example.com/twilio/stream"
            assert (
                update.stream.action == "https://voicebot.example.com/twilio/voice/connect-action"
            )
            # Twilio was asked first, and said the caller is still there.
            fetches = [r for r in rest.requests if r.call_sid == call_sid and r.method == "GET"]
            assert fetches and fetches[0].time < update.time
            call = await Call.objects.aget(sid=call_sid)
            assert call.status == "in-progress" and call.ended_at is None
            assert call.end_reason == ""
            # A fresh single-use token for the same CallSid: the one our records expect.
            token = update.stream.parameters["token"]
            assert security.stream_token_nonce(token, call_sid) == call.stream_nonce
            lost = await MediaStream.objects.aget(call=call)
            assert (lost.status, lost.last_error) == ("error", "server process lost")

            # Twilio opens the new stream (on B): it attaches to the same Call record.
            resumed = stream_client(server_b, call_sid, token)
            try:
                await resumed.start()
                # The resumed session picks up the conversation: the model is given the call
                # so far, and the greeting is not played again.
                await resumed.wait_for(
                    lambda: len(realtime.sessions) == 2
                    and realtime.sessions[-1].messages_created("system"),
                    timeout=10,
                    what="the new model session to be given the call so far",
                )
                assert "Hello." in realtime.sessions[-1].messages_created("system")[0]
                assert resumed.media_received == 0
            finally:
                await resumed.aclose()
            assert await Call.objects.filter(sid=call_sid).acount() == 1
            streams = [s async for s in MediaStream.objects.filter(call=call)]
            assert len(streams) == 2
            kinds = [
                k async for k in CallEvent.objects.filter(call=call).values_list("kind", flat=True)
            ]
            assert "resume_requested" in kinds
            assert kinds.count("stream_connected") == 2
            # Resumed once: no second update while the new stream was coming up.
            assert len(rest.connect_streams(call_sid)) == 1

        await kill_server_holding_a_call(tmp_path, rest, realtime, act)


async def test_a_killed_servers_call_that_twilio_ended_is_closed_with_the_truth(tmp_path):
    await create_agent()
    greeting = Reply(transcript="Hello.", audio_ms=600)
    async with FakeRealtimeServer(default_reply=greeting) as realtime, TwilioRestEmulator() as rest:

        async def act(call_sid: str, killed_at: float, server_b: str) -> None:
            # The caller, hearing silence, hangs up; the status callback went to the dead A.
            rest.set_status(call_sid, "completed", duration=42)
            await wait_until(
                lambda: not Call.objects.get(sid=call_sid).is_live,
                timeout=DEADLINE_S,
                what="the call to be ended",
            )
            assert asyncio.get_running_loop().time() - killed_at < DEADLINE_S
            call = await Call.objects.aget(sid=call_sid)
            assert call.status == "completed"
            assert call.duration_seconds == 42
            assert call.end_reason == "server_lost"
            assert call.get_end_reason_display() == "Ended while the server was down"
            stream = await MediaStream.objects.aget(call=call)
            assert stream.status == "error"
            assert rest.connect_streams(call_sid) == []
            # Twilio's late callback keeps the truth: not "caller hung up".
            await post_status(server_b, call_sid, "completed", duration=42)
            call = await Call.objects.aget(sid=call_sid)
            assert call.end_reason == "server_lost"

        await kill_server_holding_a_call(tmp_path, rest, realtime, act)


async def post_status(server: str, call_sid: str, status: str, *, duration: int) -> None:
    path = "/twilio/voice/status"
    params = {
        "CallSid": call_sid,
        "AccountSid": ACCOUNT_SID,
        "CallStatus": status,
        "CallDuration": str(duration),
    }
    signature = security.compute_signature(security.public_url(path), params)
    async with (
        aiohttp.ClientSession() as http,
        http.post(server + path, data=params, headers={security.SIGNATURE_HEADER: signature}) as r,
    ):
        assert r.status == 204, await r.text()
