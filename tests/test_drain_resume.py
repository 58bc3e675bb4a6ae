"""A deploy does not drop calls: SIGTERM hands every live call to another process.

Two real daphne processes share a real redis-server and the database; the emulated Twilio
(calls.simulator) carries five calls on process A. The test then does what a deploy does:
the load balancer takes A out of rotation (each emulated call's `server_url`, i.e. where
Twilio's requests for our PUBLIC_URL land, becomes B's address) and A gets SIGTERM. A closes
each call's stream at a quiet moment; Twilio requests `<Connect action>`, which B answers with
a new `<Connect><Stream>`; the call goes on on B, with its history, and no second greeting.
Pointing at a second process rather than restarting A on the same port is the realistic
case: a rolling deploy always has another process up while one drains.
"""

import asyncio
import signal
import time
import xml.etree.ElementTree as ET

import aiohttp
import pytest
from asgiref.sync import sync_to_async

from agents.models import Agent
from calls import security
from calls.consumers.media import HANDOVER_QUIET_WAIT_S
from calls.models import Call, CallEvent, MediaStream, Speaker, TranscriptEntry
from calls.simulator.call import SimulatedCall, share_rest_emulator
from calls.simulator.rest import TwilioRestEmulator
from calls.simulator.stream import TwilioStreamClient
from peers.realtime import FakeRealtimeServer, Reply

from .desks import GREETING_TEXT, desk_of, greetings
from .servers import daphne_process
from .twilio_helpers import ACCOUNT_SID

# Real time: the calls' audio plays at its own pace, and the handover waits for it.
pytestmark = [pytest.mark.redis, pytest.mark.realtime, pytest.mark.django_db(transaction=True)]

CALLS = 5
DRAIN_DEADLINE_S = 10
SILENCE_TARGET_S = 1.5


def number(n: int) -> str:
    return f"+1415555{n:04d}"


@sync_to_async
def create_agents() -> None:
    for n in range(CALLS):
        Agent.objects.create(
            name=f"Desk {n}",
            phone_number=number(n),
            instructions=f"You are desk number {n}.",
            greeting=GREETING_TEXT,
        )


async def sessions_by_desk(realtime, count: int, timeout: float) -> dict[int, object]:
    sessions = {}
    for _ in range(count):
        session = await realtime.wait_for_session(timeout=timeout)
        await session.wait_for(lambda s=session: s.session_updates, timeout=timeout)
        sessions[desk_of(session)] = session
    return sessions


async def exchange(session, caller: str, agent: str) -> None:
    await session.speech_started()
    await session.speech_stopped()
    await session.caller_transcript(caller)
    await session.reply(Reply(transcript=agent, audio_ms=400))
    await session.wait_for(lambda: session.active_response is None, timeout=5)


@sync_to_async
def lines_of(call_sid: str) -> list[tuple[str, str]]:
    entries = TranscriptEntry.objects.filter(call__sid=call_sid).order_by("offset_ms", "id")
    return list(entries.values_list("speaker", "text"))


async def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


async def test_sigterm_hands_every_live_call_to_another_process(redis_url, tmp_path, settings):
    await create_agents()
    realtime = FakeRealtimeServer(default_reply=Reply(transcript=GREETING_TEXT, audio_ms=300))
    rest = TwilioRestEmulator(auth_token=settings.TWILIO_AUTH_TOKEN)
    async with realtime, rest:
        settings.TWILIO_API_BASE_URL = rest.base_url
        peers = {
            "REDIS_URL": redis_url,
            "OPENAI_REALTIME_URL": realtime.url,
            "TWILIO_API_BASE_URL": rest.base_url,
            "DRAIN_DEADLINE_SECONDS": str(DRAIN_DEADLINE_S),
        }
        logs = [tmp_path / "a.log", tmp_path / "b.log"]
        with (
            daphne_process(logs[0], **peers) as (server_a, process_a),
            daphne_process(logs[1], **peers) as (server_b, _process_b),
        ):
            try:
                await run_calls(realtime, rest, server_a, server_b, process_a)
            except BaseException:
                for log in logs:
                    print(f"--- {log.name}\n" + log.read_text()[-6000:])
                raise


async def run_calls(realtime, rest, server_a, server_b, process_a) -> None:
    calls = [
        SimulatedCall(
            server_url=server_a,
            to_number=number(n),
            duration_s=120,
            rest=rest,
            log=lambda line: None,
        )
        for n in range(CALLS)
    ]
    share_rest_emulator(rest, calls)
    runs = [asyncio.create_task(call.run()) for call in calls]
    try:
        first = await sessions_by_desk(realtime, CALLS, timeout=15)
        for n, session in first.items():
            await session.wait_for(lambda s=session: s.responses and s.active_response is None)
            await exchange(session, f"I am calling about booking {n}.", f"Booking {n}: noted.")
        for call in calls:
            await wait_until(
                lambda c=call: _count(lines_of(c.call_sid), 3), 10, "first lines recorded"
            )

        # The deploy: A leaves the load balancer's rotation, then gets SIGTERM.
        for call in calls:
            call.server_url = server_b
        sigterm_at = time.monotonic()
        process_a.send_signal(signal.SIGTERM)
        second = await sessions_by_desk(realtime, CALLS, timeout=DRAIN_DEADLINE_S)
        for session in second.values():
            await session.wait_for(lambda s=session: s.messages_created("system"), timeout=5)
        resumed_s = time.monotonic() - sigterm_at
        await asyncio.to_thread(process_a.wait, DRAIN_DEADLINE_S + 5)
        exited_s = time.monotonic() - sigterm_at
        assert process_a.returncode == 0

        # The calls go on, on B.
        for n, session in second.items():
            history = session.messages_created("system")[0]
            assert f"Caller: I am calling about booking {n}." in history, history
            assert f"You: Booking {n}: noted." in history
            assert greetings(session) == 0
            assert session.config["instructions"] == f"You are desk number {n}."
            await exchange(session, "Can I change it?", f"Yes, booking {n} can be changed.")
        for call in calls:
            heard_before = len(call._old_streams[0].played)
            await call.stream.wait_for(
                lambda c=call: len(c.stream.played) >= 8 * 300, 5, "the answer heard on B"
            )
            assert heard_before > 0
        for call in calls:
            await wait_until(lambda c=call: _count(lines_of(c.call_sid), 5), 10, "lines on B")
            call.hang_up()
        results = await asyncio.gather(*runs)
    finally:
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)

    gaps = [gap for result in results for gap in result.stream_gaps_s]
    print(f"\n{CALLS} calls handed over on SIGTERM:")
    for call, result in zip(calls, results, strict=True):
        longest = max(result.stream_gaps_s, default=0.0)
        print(f"  {call.result.to_number}: longest silence {longest * 1000:.0f} ms")
    print(
        f"all {CALLS} resumed with their history {resumed_s:.2f} s after SIGTERM; "
        f"process A exited after {exited_s:.2f} s; silence max {max(gaps) * 1000:.0f} ms, "
        f"mean {sum(gaps) / len(gaps) * 1000:.0f} ms"
    )
    assert len(gaps) == CALLS and max(gaps) < SILENCE_TARGET_S
    # Each call is handed over at its quiet moment, none held until the cap runs out.
    assert resumed_s < HANDOVER_QUIET_WAIT_S, f"resumed {resumed_s:.2f} s after SIGTERM"
    for result in results:
        assert result.errors == [], result.errors
        assert len(result.streams) == 2

    assert await Call.objects.acount() == CALLS
    for call in calls:
        record = await Call.objects.aget(sid=call.call_sid)
        assert await MediaStream.objects.filter(call=record).acount() == 2
        events = CallEvent.objects.filter(call=record)
        kinds = [kind async for kind in events.values_list("kind", flat=True)]
        assert kinds.count("stream_handover") == 1 and kinds.count("stream_resume") == 1
        lines = await lines_of(call.call_sid)
        assert lines.count((Speaker.AGENT, GREETING_TEXT)) == 1, lines
        assert [s for s, _ in lines] == ["agent", "caller", "agent", "caller", "agent"]
        assert record.status == "completed"

    # A finished call gets no new stream: its action hangs up, its last token is spent.
    call = calls[0]
    document = await post_connect_action(server_b, call)
    assert ET.fromstring(document).find("Hangup") is not None
    token = call._instructions.parameters["token"]
    refused = TwilioStreamClient(
        server_b.replace("http", "ws") + "/twilio/stream",
        call_sid=call.call_sid,
        account_sid=ACCOUNT_SID,
        custom_parameters={"token": token},
    )
    await refused.start()
    refusals = CallEvent.objects.filter(call__sid=call.call_sid, kind="stream_refused")
    await wait_until(refusals.aexists, 5, "the spent token refused")
    await refused.aclose()


async def _count(lines, at_least: int) -> bool:
    return len(await lines) >= at_least


async def post_connect_action(server: str, call: SimulatedCall) -> str:
    public = security.public_url("/twilio/voice/connect-action")
    params = call._call_params("in-progress")
    headers = {security.SIGNATURE_HEADER: security.compute_signature(public, params)}
    async with (
        aiohttp.ClientSession() as http,
        http.post(server + "/twilio/voice/connect-action", data=params, headers=headers) as r,
    ):
        assert r.status == 200
        return await r.text()
