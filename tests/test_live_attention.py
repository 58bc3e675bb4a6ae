"""The live feed points at trouble: each call's summary says, in words, why it needs a look."""

import asyncio
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from calls import feed, services
from calls.models import Call, CallEvent

from .dashboard_helpers import make_call
from .test_live_socket import watcher  # noqa: F401 (a fixture)

pytest.register_assert_rewrite("tests.agent_harness")
from .agent_harness import finish, make_agent, start_call  # noqa: E402

pytestmark = pytest.mark.django_db(transaction=True)
pytest_plugins = ["tests.agent_harness"]  # asgi_server, realtime, rest


def at(seconds: float):
    return timezone.now() + timedelta(seconds=seconds)


def test_a_caller_talking_over_the_agent_three_times_in_a_minute_needs_attention():
    twice = [("barge_in", at(0)), ("barge_in", at(20))]
    assert feed.needs_attention(twice) == []
    spread_out = [*twice, ("barge_in", at(90))]
    assert feed.needs_attention(spread_out) == []
    thrice = [*twice, ("barge_in", at(50))]
    assert feed.needs_attention(thrice) == [feed.INTERRUPTIONS_REASON]
    assert "talking over the agent" in feed.INTERRUPTIONS_REASON


def test_a_failed_model_and_an_unreachable_person_need_attention_once_each():
    events = [
        ("agent_error", at(0)),
        ("transfer_unavailable", at(1)),
        ("transfer_unavailable", at(2)),
        ("answered", at(3)),
    ]
    assert feed.needs_attention(events) == [
        "The agent's model failed",
        "The caller pressed the transfer key; nobody to transfer to",
    ]


async def next_call_message(communicator) -> dict:
    while True:
        message = await communicator.receive_json_from(timeout=5)
        if message["event"] == "call":
            return message["call"]


async def test_the_event_that_causes_it_sends_the_call_again_with_the_reason(agent, watcher):  # noqa: F811
    live = await sync_to_async(make_call)(agent)
    first = await sync_to_async(feed.call_summary)(live)
    assert first["needs_attention"] == []

    await sync_to_async(services.call_event_record)(
        call=live, kind="agent_error", actor="system", data={"failure": "dropped"}
    )
    call = await next_call_message(watcher)
    assert call["id"] == str(live.pk)
    assert call["needs_attention"] == ["The agent's model failed"]


async def test_the_snapshot_carries_the_reasons(agent):
    from .test_live_socket import connect, staff

    live = await sync_to_async(make_call)(agent)
    for _ in range(3):
        await CallEvent.objects.acreate(call=live, kind="barge_in", actor="caller")
    communicator, _ = await connect(await staff("viewer", "view_call"))
    snapshot = await communicator.receive_json_from()
    await communicator.disconnect()
    [call] = snapshot["calls"]
    assert call["needs_attention"] == [feed.INTERRUPTIONS_REASON]


async def test_the_transfer_key_with_nobody_to_reach_is_recorded_and_needs_attention(
    asgi_server, realtime, rest
):
    await make_agent(targets=())
    live = await start_call(asgi_server, rest, realtime)
    live.twilio.send_dtmf("0")
    for _ in range(100):
        if await live.events("transfer_unavailable"):
            break
        await asyncio.sleep(0.1)
    [event] = await live.events("transfer_unavailable")
    assert (event.actor, event.data) == ("caller", {"digit": "0"})
    call = await Call.objects.select_related("agent").aget(sid=live.call_sid)
    summary = await sync_to_async(feed.call_summary)(call)
    assert "The caller pressed the transfer key; nobody to transfer to" in summary[
        "needs_attention"
    ]
    await finish(live)
