"""A model connection lost mid-call is replaced by a new session that knows the conversation.

The caller hears no apology and no second greeting: the drop, the 60-minute expiry and the
proactive renewal before it all carry the call on, with the transcript so far replayed into
the new session as one packed system message (agents.history).
"""

import asyncio

import pytest

from calls.models import Speaker

pytest.register_assert_rewrite("tests.agent_harness")
from .agent_harness import finish, make_agent, start_call  # noqa: E402

pytestmark = pytest.mark.django_db(transaction=True)
pytest_plugins = ["tests.agent_harness"]

GREETING = "Hello, how can I help?"
RECONNECT_TARGET_S = 2.0


async def converse(live, model, caller: str, agent: str, agent_ms: int = 400) -> None:
    """The caller says `caller`, the model answers `agent`; wait until both are recorded."""
    before = len(await live.transcript())
    await model.speech_started()
    await model.speech_stopped()
    await model.caller_transcript(caller)
    await model.reply(transcript=agent, audio_ms=agent_ms)
    await model.wait_for(lambda: model.active_response is None, timeout=5)

    async def recorded():
        return len(await live.transcript()) >= before + 2

    await live.wait_until(recorded, 5, "both lines recorded")


def greetings(model) -> list[dict]:
    return [
        e
        for e in model.client_events
        if e["type"] == "response.create"
        and GREETING in (e.get("response") or {}).get("instructions", "")
    ]


async def first_exchange(realtime, live) -> None:
    model = live.model
    realtime.script.clear()  # the greeting's reply was for the first session only
    await model.wait_for(lambda: len(model.responses) == 1)
    await live.played_at_least(300)
    await converse(live, model, "I need to move booking 42.", "Sure, to which day?")


@pytest.mark.parametrize("how", ["drop", "session_expired"])
async def test_a_lost_model_session_is_replaced_with_the_history_and_no_apology(
    asgi_server, realtime, rest, how
):
    await make_agent(greeting=GREETING)
    realtime.queue_reply(transcript=GREETING, audio_ms=300)
    live = await start_call(asgi_server, rest, realtime)
    await first_exchange(realtime, live)
    played_before = live.played_ms

    loop = asyncio.get_running_loop()
    lost_at = loop.time()
    await (live.model.drop() if how == "drop" else live.model.expire())
    new = await realtime.wait_for_session(timeout=RECONNECT_TARGET_S)
    await new.wait_for(lambda: new.messages_created("system"), timeout=RECONNECT_TARGET_S)
    took_s = loop.time() - lost_at
    print(f"model {how}: new session with the history after {took_s * 1000:.0f} ms")
    assert took_s < RECONNECT_TARGET_S

    [history] = new.messages_created("system")
    assert f"You: {GREETING}" in history
    assert "Caller: I need to move booking 42." in history
    assert "You: Sure, to which day?" in history
    assert history.index("booking 42") < history.index("to which day")
    assert greetings(new) == []
    # The agent spoke last: the new session waits for the caller.
    assert [e for e in new.client_events if e["type"] == "response.create"] == []
    assert new.session_updates and new.session_updates[0]["instructions"] == (
        live.model.session_updates[0]["instructions"]
    )

    await converse(live, new, "Friday, please.", "Done: booking 42 is on Friday.")
    await live.played_at_least(played_before + 300)
    assert not live.twilio.closed
    assert rest.twiml_updates(live.call_sid) == [] and rest.hangups(live.call_sid) == []
    assert await live.events("agent_error") == []
    [event] = await live.wait_until(
        lambda: live.events("model_reconnected"), 3, "reconnection logged"
    )
    assert event.data["turns"] == 3  # the greeting, the caller, the answer
    lines = [(e.speaker, e.text) for e in await live.transcript()]
    assert lines == [
        (Speaker.AGENT, GREETING),
        (Speaker.CALLER, "I need to move booking 42."),
        (Speaker.AGENT, "Sure, to which day?"),
        (Speaker.CALLER, "Friday, please."),
        (Speaker.AGENT, "Done: booking 42 is on Friday."),
    ]
    await finish(live)


async def test_a_drop_while_the_caller_waits_for_an_answer_is_answered_by_the_new_session(
    asgi_server, realtime, rest
):
    await make_agent(greeting=GREETING)
    realtime.queue_reply(transcript=GREETING, audio_ms=300)
    live = await start_call(asgi_server, rest, realtime)
    await first_exchange(realtime, live)
    model = live.model
    await model.speech_started()
    await model.speech_stopped()
    await model.caller_transcript("And can I bring a dog?")
    await asyncio.sleep(0.2)  # the transcript reaches the session before the drop
    await model.drop()
    new = await realtime.wait_for_session(timeout=RECONNECT_TARGET_S)
    await new.wait_for(lambda: new.responses, timeout=RECONNECT_TARGET_S)
    assert "Caller: And can I bring a dog?" in new.messages_created("system")[0]
    assert greetings(new) == []
    await finish(live)


async def test_the_model_session_is_renewed_before_its_time_limit(
    asgi_server, realtime, rest, settings
):
    await make_agent(greeting=GREETING)
    realtime.queue_reply(transcript=GREETING, audio_ms=300)
    live = await start_call(asgi_server, rest, realtime)
    await first_exchange(realtime, live)
    old = live.model
    settings.REALTIME_SESSION_RENEW_SECONDS = 0  # the session is now "55 minutes" old
    new = await realtime.wait_for_session(timeout=5)
    settings.REALTIME_SESSION_RENEW_SECONDS = 3300  # once is enough
    await old.wait_for(lambda: old.closed, timeout=3)  # we closed it, once the new one was up
    await new.wait_for(lambda: new.messages_created("system"), timeout=3)
    [history] = new.messages_created("system")
    assert f"You: {GREETING}" in history and "You: Sure, to which day?" in history
    assert greetings(new) == []
    [event] = await live.wait_until(lambda: live.events("model_renewed"), 3, "renewal logged")
    assert event.data["turns"] == 3
    assert await live.events("agent_error") == []
    await converse(live, new, "Friday.", "Done.")
    await finish(live)
