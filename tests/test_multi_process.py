"""Call control reaches the process that holds the stream, through Redis.

Two daphne processes share a real redis-server and the database. Twilio's stream is held
by process A; a staff user signed in to process B hangs up and clears. Everything that
crosses between them goes through channels-redis (msgpack), as in production.
"""

import asyncio

import pytest

from calls.models import Call
from calls.simulator.rest import TwilioRestEmulator
from calls.simulator.stream import TwilioStreamClient
from peers.realtime import FakeRealtimeServer, Reply

from .agent_harness import answer
from .servers import daphne
from .staff_http import StaffBrowser, create_world
from .twilio_helpers import ACCOUNT_SID, new_call_sid

pytestmark = [pytest.mark.redis, pytest.mark.realtime, pytest.mark.django_db(transaction=True)]

async def test_hangup_and_clear_from_another_process_reach_the_stream(redis_url, tmp_path):
    await create_world()
    greeting = Reply(transcript="Hello and welcome.", audio_ms=4000)
    async with FakeRealtimeServer(default_reply=greeting) as realtime, TwilioRestEmulator() as rest:
        peers = {
            "REDIS_URL": redis_url,
            "OPENAI_REALTIME_URL": realtime.url,
            "TWILIO_API_BASE_URL": rest.base_url,
        }
        with (
            daphne(tmp_path / "a.log", **peers) as server_a,
            daphne(tmp_path / "b.log", **peers) as server_b,
        ):
            call_sid = new_call_sid()
            token = await answer(server_a, call_sid)
            client = TwilioStreamClient(
                server_a.replace("http", "ws") + "/twilio/stream",
                call_sid=call_sid,
                account_sid=ACCOUNT_SID,
                custom_parameters={"token": token},
            )
            staff = StaffBrowser(server_b)
            try:
                await client.start()
                # The greeting is playing in the caller's ear, sent by process A.
                await client.wait_for(lambda: client.media_received >= 25, timeout=10)
                await staff.login("operator", "operator-password")
                call = await Call.objects.aget(sid=call_sid)

                cleared = await staff.act(str(call.id), "clear")
                assert cleared["ok"] is True
                await client.wait_for(lambda: client.clears, timeout=5, what="a clear")
                # A staff clear is a barge-in: the rest of the greeting is not sent either.
                after_clear = client.media_received
                await asyncio.sleep(0.5)
                assert client.media_received - after_clear <= 5

                hung_up = await staff.act(str(call.id), "hangup")
                assert hung_up == {"ok": True, "message": "Hung up."}
                await client.wait_closed(timeout=5)
                assert client.closed_by_server
                assert [r.call_sid for r in rest.hangups()] == [call_sid]
            except Exception:
                for name in ("a.log", "b.log"):
                    print(f"--- daphne {name}\n" + (tmp_path / name).read_text()[-4000:])
                raise
            finally:
                await staff.close()
                await client.aclose()
    call = await Call.objects.aget(sid=call_sid)
    kinds = [e async for e in call.events.values_list("kind", "user__username")]
    assert ("clear", "operator") in kinds and ("hangup", "operator") in kinds
    assert call.end_reason == "staff_hangup"
