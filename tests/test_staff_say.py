"""A sentence staff type is the agent's line said for them, logged when it is spoken."""

import asyncio

import pytest
from asgiref.sync import sync_to_async

from calls import labels, services
from calls.models import Actor, Call, CallEvent, TranscriptEntry

from .dashboard_helpers import make_staff

pytest.register_assert_rewrite("tests.agent_harness")
from .agent_harness import finish, make_agent, start_call  # noqa: E402

pytestmark = pytest.mark.django_db(transaction=True)
pytest_plugins = ["tests.agent_harness"]  # asgi_server, realtime, rest

GREETING = "Hello, you are through to the front desk."
SAID = "One moment please."
GREETING_MS = 2000


async def test_a_typed_sentence_is_labelled_for_the_staff_member_and_stamped_when_spoken(
    asgi_server, realtime, rest
):
    await make_agent(greeting=GREETING)
    operator = await sync_to_async(make_staff)("operator", "view_call", "say_on_call")
    realtime.queue_reply(transcript=GREETING, audio_ms=GREETING_MS, pace="realtime")
    realtime.queue_reply(transcript=SAID, audio_ms=500, pace="burst")
    live = await start_call(asgi_server, rest, realtime)
    call = await Call.objects.aget(sid=live.call_sid)

    # Typed while the greeting plays: it is spoken after it, seconds later.
    await services.call_say(call_id=str(call.pk), text=SAID, actor=Actor.STAFF, user=operator)
    for _ in range(100):
        if await TranscriptEntry.objects.filter(call=call, text=SAID).aexists():
            break
        await asyncio.sleep(0.1)
    line = await TranscriptEntry.objects.aget(call=call, text=SAID)
    assert line.said_for == "operator"
    assert labels.speaker_label(line) == "Agent (said for operator)"
    greeting = await TranscriptEntry.objects.aget(call=call, text=GREETING)
    assert labels.speaker_label(greeting) == "Agent"
    assert line.offset_ms >= greeting.offset_ms + GREETING_MS - 200

    asked = await CallEvent.objects.select_related("user").aget(call=call, kind="say")
    spoken = await CallEvent.objects.select_related("user").aget(
        call=call, kind="staff_say_spoken"
    )
    assert spoken.user == operator == asked.user
    assert (spoken.created_at - asked.created_at).total_seconds() >= 1.0
    assert labels.event_label("say") == "Asked the agent to say"
    assert labels.event_label("staff_say_spoken") == "The agent said it aloud"
    await finish(live)


async def test_the_cut_off_a_clear_causes_is_logged_for_the_same_staff_member(
    asgi_server, realtime, rest
):
    await make_agent(greeting=GREETING)
    operator = await sync_to_async(make_staff)("operator", "view_call", "clear_audio")
    realtime.queue_reply(transcript=GREETING, audio_ms=4000, pace="realtime")
    live = await start_call(asgi_server, rest, realtime)
    call = await Call.objects.aget(sid=live.call_sid)
    await live.played_at_least(500)

    await services.call_clear_audio(call_id=str(call.pk), actor=Actor.STAFF, user=operator)
    for _ in range(100):
        if await CallEvent.objects.filter(call=call, kind="agent_cut_off").aexists():
            break
        await asyncio.sleep(0.1)
    events = CallEvent.objects.select_related("user").filter(
        call=call, kind__in=["clear", "agent_cut_off"]
    )
    actors = {event.kind: event.actor_label async for event in events}
    assert actors == {"clear": "staff operator", "agent_cut_off": "staff operator"}
    await finish(live)
