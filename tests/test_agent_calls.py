"""Whole calls through the agent: Twilio's real-time client, our server, the fake model.

Every test drives the real consumer and AgentSession over real sockets (tests/agent_harness.py)
and checks what a caller would hear and what Twilio would be asked to do.
"""

import asyncio
import json
import time
from http import HTTPStatus

import pytest
import websockets
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.test import Client

from agents import assets
from calls.models import EndReason, Speaker
from peers.realtime import tone

# The harness is also loaded as a plugin (its fixtures): have its asserts rewritten first.
pytest.register_assert_rewrite("tests.agent_harness")
from .agent_harness import (  # noqa: E402
    RECEPTION_NUMBER,
    SALES_NUMBER,
    finish,
    make_agent,
    start_call,
)

pytestmark = [pytest.mark.realtime, pytest.mark.django_db(transaction=True)]
pytest_plugins = ["tests.agent_harness"]  # asgi_server, realtime, rest

# The heard position is estimated from Twilio's stream clock, which advances in 20 ms frames
# and reaches the server a frame late; allow three frames either way.
HEARD_TOLERANCE_MS = 60
# Loopback, two socket hops and two event loops in one process: generous, so CI is not flaky.
# The server-side figure (speech_started read -> clear queued) is checked against 5 ms.
END_TO_END_CLEAR_S = 0.05
SERVER_CLEAR_MS = 5
# How far ahead of real time the fake model streams where a test needs Twilio's buffer never
# to run dry: more than the server's thread stalls on a loaded machine.
STREAM_LEAD_MS = 200


@pytest.fixture
def short_clips(monkeypatch):
    """Replace the shipped clips by 300 ms tones where their length only slows a test down."""
    monkeypatch.setattr(assets, "clip", lambda name: tone(300))


def hangups(live):
    return live.rest.hangups(live.call_sid)


def dials(live):
    return [r.dial_numbers for r in live.rest.twiml_updates(live.call_sid)]


# --- barge-in -------------------------------------------------------------------------------


async def test_barge_in_clears_at_once_and_truncates_at_what_the_caller_heard(
    asgi_server, realtime, rest
):
    await make_agent(greeting="Hello, thanks for calling the front desk.")
    # The model sends 3 s of audio at once, far ahead of playback: what was *sent* is not
    # what was *heard*, which is the whole point of the truncate.
    realtime.queue_reply(
        transcript="Hello, thanks for calling the front desk.", audio_ms=3000, pace="burst"
    )
    live = await start_call(asgi_server, rest, realtime)
    model = live.model
    await model.wait_for(lambda: model.responses and model.responses[0].audio_bytes_sent == 24000)
    await live.played_at_least(1000)

    started = time.perf_counter()
    await model.speech_started()
    await live.twilio.wait_for(lambda: live.twilio.clears, 2, "clear")
    end_to_end_s = time.perf_counter() - started
    heard_ms = live.played_ms  # frozen by the clear
    truncation = await model.wait_for(lambda: model.truncations and model.truncations[0])

    assert end_to_end_s < END_TO_END_CLEAR_S
    assert truncation["item_id"] == model.responses[0].item_id
    assert abs(truncation["audio_end_ms"] - heard_ms) <= HEARD_TOLERANCE_MS
    assert 900 < heard_ms < 2000
    # Nothing more of the interrupted answer reaches the caller.
    await asyncio.sleep(0.3)
    assert live.played_ms == heard_ms
    assert live.twilio.buffered_bytes == 0

    [barge_in] = await live.wait_until(lambda: live.events("barge_in"), what="barge_in event")
    assert barge_in.actor == "caller"
    assert barge_in.data["clear_latency_ms"] < SERVER_CLEAR_MS
    assert barge_in.data["heard_ms"] == {truncation["item_id"]: truncation["audio_end_ms"]}
    [line] = await live.wait_until(live.transcript, what="greeting transcript")
    assert (line.speaker, line.interrupted) == (Speaker.AGENT, True)
    assert line.heard_ms == truncation["audio_end_ms"]
    await finish(live)
    assert live.twilio.errors == []


async def test_barge_in_cancels_an_answer_the_model_is_still_streaming(asgi_server, realtime, rest):
    await make_agent()
    live = await start_call(asgi_server, rest, realtime)
    model = live.model
    # A little ahead of real time, as the real service streams: with every delta sent just
    # in time, a hiccup of the server's thread empties Twilio's buffer with audio the server
    # already stamped with the stream time it had not caught up on, a gap no estimate from
    # the stream clock can see before the next mark echoes (see the stalled test below).
    response = await model.reply(
        transcript="Let me tell you a long story.", audio_ms=3000, lead_ms=STREAM_LEAD_MS
    )
    await live.played_at_least(600)

    await model.speech_started(interrupt=False)  # the model would stream on by itself
    await model.wait_for(lambda: model.cancels)
    await live.twilio.wait_for(lambda: live.twilio.clears, 2, "clear")
    await model.wait_for(lambda: model.truncations)
    heard_ms = live.played_ms
    await asyncio.sleep(0.3)

    assert response.status == "cancelled"
    # The cancel names the response, so a late one cannot cut the model's next reply.
    assert [c.get("response_id") for c in model.cancels] == [response.id]
    assert response.audio_ms_sent < 1200
    assert live.played_ms == heard_ms
    assert abs(model.truncations[0]["audio_end_ms"] - heard_ms) <= HEARD_TOLERANCE_MS
    await finish(live)


async def test_barge_in_truncates_an_answer_stalled_after_all_its_audio_so_far_played(
    asgi_server, realtime, rest
):
    # The model fell behind real time: everything it sent has played and Twilio's buffer is
    # empty, but the answer is not over. The model has more of it than the caller heard.
    await make_agent()
    live = await start_call(asgi_server, rest, realtime)
    model = live.model
    response = await model.reply(
        transcript="Let me tell you a long story.", audio_ms=3000, stall_after_ms=400
    )
    await live.played_at_least(400)

    await model.speech_started(interrupt=False)
    await model.wait_for(lambda: model.cancels)
    await live.twilio.wait_for(lambda: live.twilio.clears, 2, "clear")
    [truncation] = await model.wait_for(lambda: model.truncations)

    assert response.status == "cancelled"
    assert truncation["item_id"] == response.item_id
    assert abs(truncation["audio_end_ms"] - live.played_ms) <= HEARD_TOLERANCE_MS
    [line] = await live.wait_until(live.transcript, what="agent transcript")
    assert (line.speaker, line.interrupted) == (Speaker.AGENT, True)
    await finish(live)


async def test_caller_speech_while_the_agent_is_silent_clears_nothing(asgi_server, realtime, rest):
    await make_agent()
    live = await start_call(asgi_server, rest, realtime)
    await live.model.speech_started()
    await live.model.speech_stopped()
    await asyncio.sleep(0.2)
    assert live.twilio.clears == []
    assert live.model.truncations == []
    await finish(live)


# --- end_call -------------------------------------------------------------------------------


async def test_a_goodbye_hangs_up_only_after_its_audio_played(asgi_server, realtime, rest):
    await make_agent()
    live = await start_call(asgi_server, rest, realtime)
    goodbye_ms = 1500
    await live.model.reply(
        transcript="Thanks for calling, goodbye!",
        audio_ms=goodbye_ms,
        pace="burst",
        function_call=("end_call", {"reason": "caller is done"}),
    )

    hangup = await rest.wait_for_request(lambda r: r.is_hangup, timeout=goodbye_ms / 1000 + 3)
    last_echo = live.last("mark_echo", lambda d: d["played"])
    first_audio = live.first("received", lambda d: d.get("event") == "media")
    assert hangup.time >= last_echo
    assert hangup.time - first_audio >= goodbye_ms / 1000 - 0.05
    assert live.played_ms == goodbye_ms
    # The server also closes the stream itself, and says why in the call's record.
    await live.twilio.wait_closed(3)
    assert live.twilio.closed_by_server
    await live.ended()
    call = await live.call()
    assert call.end_reason == EndReason.AGENT_ENDED
    assert len(hangups(live)) == 1
    assert live.model.function_outputs == []
    await live.twilio.aclose()


async def test_an_interrupted_goodbye_does_not_hang_up(asgi_server, realtime, rest):
    await make_agent()
    live = await start_call(asgi_server, rest, realtime)
    await live.model.reply(
        transcript="Well then, goodbye!",
        audio_ms=3000,
        pace="burst",
        function_call=("end_call", {"reason": "caller is done"}),
    )
    await live.played_at_least(500)
    await live.model.speech_started()
    output = await live.model.wait_for(lambda: live.model.function_outputs)

    assert "interrupted" in output[0]["output"]
    await asyncio.sleep(0.5)
    assert hangups(live) == []
    assert not live.twilio.closed
    assert live.model.truncations[0]["audio_end_ms"] < 1000
    assert await live.events("goodbye_interrupted")
    # The caller is talking, so the model answers once they stop (server VAD), not before.
    assert [r.origin for r in live.model.responses] == ["server"]
    await finish(live)
    assert hangups(live) == []
    # It ended when the caller hung up, not when the agent said goodbye.
    assert (await live.call()).end_reason == EndReason.CALLER_HANGUP


# --- transfer -------------------------------------------------------------------------------


async def test_transfer_lets_the_sentence_finish_then_dials_the_target(asgi_server, realtime, rest):
    await make_agent(
        targets=(("reception", RECEPTION_NUMBER, True), ("sales", SALES_NUMBER, False))
    )
    live = await start_call(asgi_server, rest, realtime)
    await live.model.reply(
        transcript="Connecting you to sales now.",
        audio_ms=1200,
        pace="burst",
        function_call=("transfer_to_human", {"target": "sales", "reason": "wants a quote"}),
    )

    update = await rest.wait_for_request(lambda r: r.twiml is not None, timeout=5)
    assert update.dial_numbers == [SALES_NUMBER]
    assert update.time >= live.first("mark_echo", lambda d: d["played"])
    assert live.played_ms == 1200
    await live.ended()  # Twilio ended the stream after the TwiML update
    call = await live.call()
    assert call.end_reason == EndReason.TRANSFERRED
    assert call.transferred_to == SALES_NUMBER
    assert hangups(live) == []  # the stop that follows a transfer is not a hang-up
    [event] = await live.events("transfer")
    assert (event.actor, event.data["target"]) == ("agent", "sales")
    assert live.model.closed
    await live.twilio.aclose()


async def test_a_failed_transfer_is_told_to_the_model_and_the_call_goes_on(
    asgi_server, realtime, rest
):
    await make_agent()
    live = await start_call(asgi_server, rest, realtime, transfer_ends_stream=False)
    rest.fail_next("Calls/", status=500, code=20500, message="Internal Server Error")
    live.model.queue_reply(transcript="I'm sorry, I couldn't connect you.", audio_ms=200)
    await live.model.reply(
        transcript="Let me connect you.",
        audio_ms=400,
        pace="burst",
        function_call=("transfer_to_human", {"target": "reception", "reason": "asked"}),
    )

    [output] = await live.model.wait_for(lambda: live.model.function_outputs)
    assert "transfer failed" in output["output"]
    assert "20500" in output["output"]
    # ...and the model is asked to speak, so the caller hears about it.
    await live.model.wait_for(lambda: len(live.model.responses) == 2)
    assert live.model.responses[1].origin == "client"
    await live.played_at_least(600)
    assert not live.twilio.closed
    assert hangups(live) == []
    assert await live.events("transfer_failed")
    await finish(live)


async def test_an_unknown_transfer_target_is_refused_without_calling_twilio(
    asgi_server, realtime, rest
):
    await make_agent()
    live = await start_call(asgi_server, rest, realtime)
    await live.model.reply(
        transcript="",
        audio_ms=0,
        function_call=("transfer_to_human", {"target": "ceo", "reason": "vip"}),
    )
    [output] = await live.model.wait_for(lambda: live.model.function_outputs)
    assert "reception" in output["output"]
    assert rest.twiml_updates(live.call_sid) == []
    await finish(live)


# --- DTMF -----------------------------------------------------------------------------------


async def test_keys_reach_the_model_and_the_transfer_key_dials_the_default_target(
    asgi_server, realtime, rest
):
    await make_agent(
        targets=(("sales", SALES_NUMBER, False), ("reception", RECEPTION_NUMBER, True))
    )
    live = await start_call(asgi_server, rest, realtime)
    live.twilio.send_dtmf("5")
    live.twilio.send_dtmf("7")
    model = live.model
    await model.wait_for(lambda: len(model.items_created) == 2)
    texts = [item["content"][0]["text"] for item in model.items_created]
    assert "pressed the 5 key" in texts[0] and "pressed the 7 key" in texts[1]
    # One response for keys typed in a row, after a pause.
    await model.wait_for(lambda: model.responses, timeout=3)
    await asyncio.sleep(0.3)
    assert len(model.responses) == 1

    live.twilio.send_dtmf("0")
    update = await rest.wait_for_request(lambda r: r.twiml is not None, timeout=5)
    assert update.dial_numbers == [RECEPTION_NUMBER]
    await live.ended()
    [event] = await live.events("transfer")
    assert (event.actor, event.data["target"]) == ("caller", "reception")
    assert hangups(live) == []
    await live.twilio.aclose()


# --- model failures -------------------------------------------------------------------------


async def fail_model(how: str, live) -> None:
    model = live.model
    await model.wait_for(lambda: model.session_updates)  # mid-call, not while connecting
    if how in ("drop", "session_expired"):
        # A new session would carry the call on: fail only if the service is down too.
        model.server.refuse_with = HTTPStatus.SERVICE_UNAVAILABLE
    if how == "error":
        await model.send_error(None, "The server had an error.", type="server_error")
    elif how == "drop":
        await model.drop()
    elif how == "session_expired":
        await model.expire()


@pytest.mark.parametrize(
    ("how", "has_target"),
    [("error", True), ("drop", False), ("session_expired", True)],
)
async def test_a_failing_model_gets_an_apology_then_a_person_or_a_hang_up(
    asgi_server, realtime, rest, short_clips, how, has_target, settings
):
    settings.MODEL_RECONNECT_TIMEOUT_SECONDS = 1
    targets = (("reception", RECEPTION_NUMBER, True),) if has_target else ()
    await make_agent(targets=targets)
    live = await start_call(asgi_server, rest, realtime)
    await fail_model(how, live)

    if has_target:
        update = await rest.wait_for_request(lambda r: r.twiml is not None, timeout=5)
        assert update.dial_numbers == [RECEPTION_NUMBER]
        assert update.time >= live.first("mark_echo", lambda d: d["played"])
        expected_end = EndReason.TRANSFERRED
    else:
        hangup = await rest.wait_for_request(lambda r: r.is_hangup, timeout=5)
        assert hangup.time >= live.first("mark_echo", lambda d: d["played"])
        expected_end = EndReason.FAILED
    assert bytes(live.twilio.played) == tone(300)  # the apology, all of it
    await live.ended()
    assert (await live.call()).end_reason == expected_end
    [event] = await live.events("agent_error")
    assert event.data["failure"] == {"drop": "dropped", "session_expired": "dropped"}.get(
        how, "error"
    )
    if how == "session_expired":
        assert event.data["detail"].startswith("session_expired")
    await live.twilio.aclose()


async def test_a_refused_model_connection_plays_the_shipped_apology_then_transfers(
    asgi_server, rest, settings
):
    from peers.ports import free_port

    settings.OPENAI_REALTIME_URL = f"ws://127.0.0.1:{free_port()}/v1/realtime"
    await make_agent()
    live = await start_call(asgi_server, rest, None)

    apology = assets.clip("apology")
    update = await rest.wait_for_request(
        lambda r: r.twiml is not None, timeout=len(apology) / 8000 + 3
    )
    assert update.dial_numbers == [RECEPTION_NUMBER]
    assert bytes(live.twilio.played) == apology
    await live.ended()
    [event] = await live.events("agent_error")
    assert event.data["failure"] == "connect"
    await live.twilio.aclose()


async def test_a_non_fatal_model_error_does_not_end_the_call(asgi_server, realtime, rest):
    await make_agent()
    live = await start_call(asgi_server, rest, realtime)
    await live.model.send_error("invalid_value", "Something we sent was odd.")
    await asyncio.sleep(0.3)
    assert not live.twilio.closed
    assert await live.events("agent_error") == []
    await finish(live)


# --- limits ---------------------------------------------------------------------------------


async def test_the_call_ends_politely_at_max_call_seconds(asgi_server, realtime, rest):
    await make_agent(max_call_seconds=2, idle_timeout_seconds=60)
    live = await start_call(asgi_server, rest, realtime)
    await live.model.speech_started()  # the caller talks on and on: not idle, still limited

    goodbye = assets.clip("goodbye")
    hangup = await rest.wait_for_request(lambda r: r.is_hangup, timeout=2 + len(goodbye) / 8000 + 3)
    assert bytes(live.twilio.played) == goodbye
    assert hangup.time >= live.first("mark_echo", lambda d: d["played"])
    await live.ended()
    assert (await live.call()).end_reason == EndReason.TIMEOUT
    [event] = await live.events("limit_reached")
    assert event.data == {"limit": "max_call_seconds", "seconds": 2}
    assert live.model.closed
    await live.twilio.aclose()


async def test_the_call_ends_after_idle_seconds_of_nobody_speaking(
    asgi_server, realtime, rest, short_clips
):
    await make_agent(idle_timeout_seconds=1)
    live = await start_call(asgi_server, rest, realtime)
    loop = asyncio.get_running_loop()
    started = loop.time()
    # The agent speaks for 1.5 s: that is activity, so idle time counts from its end.
    await live.model.reply(transcript="Hello? Is anyone there?", audio_ms=1500, pace="burst")

    hangup = await rest.wait_for_request(lambda r: r.is_hangup, timeout=6)
    assert hangup.time - started >= 1.5 + 1 + 0.3 - 0.1  # speech, idle, the goodbye tone
    assert bytes(live.twilio.played) == tone(1500) + tone(300)
    await live.ended()
    assert (await live.call()).end_reason == EndReason.TIMEOUT
    [event] = await live.events("limit_reached")
    assert event.data["limit"] == "idle_timeout_seconds"
    await live.twilio.aclose()


# --- transcripts ----------------------------------------------------------------------------


async def test_transcripts_are_kept_in_order_and_nothing_is_lost_at_hang_up(
    asgi_server, realtime, rest
):
    await make_agent(greeting="Hi, front desk.")
    realtime.queue_reply(transcript="Hi, front desk.", audio_ms=400, pace="burst")
    live = await start_call(asgi_server, rest, realtime)
    model = live.model
    await live.played_at_least(400)

    await live.twilio.wait_for(lambda: live.twilio.stream_ms() > 700, 2)
    await model.speech_started()
    await asyncio.sleep(0.2)
    await model.speech_stopped()
    # The answer starts before the caller's transcription arrives, as it does for real.
    await model.reply(transcript="Sure, a taxi.", audio_ms=300, pace="burst")
    await asyncio.sleep(0.1)
    await model.caller_transcript("I need a taxi.")
    await live.played_at_least(700)
    # A long answer, cut short by the caller hanging up half a second in.
    await model.reply(transcript="It will be there in ten minutes, and the driver", audio_ms=3000)
    await asyncio.sleep(0.5)
    await live.twilio.stop()
    await live.ended()

    lines = await live.transcript()
    assert [(line.speaker, line.text) for line in lines] == [
        (Speaker.AGENT, "Hi, front desk."),
        (Speaker.CALLER, "I need a taxi."),
        (Speaker.AGENT, "Sure, a taxi."),
        (Speaker.AGENT, lines[3].text),
    ]
    partial = lines[3]
    assert "It will be there".startswith(partial.text[:10]) and partial.text
    assert partial.interrupted
    assert 200 < partial.heard_ms < 900
    assert [line.interrupted for line in lines[:3]] == [False, False, False]
    offsets = [line.offset_ms for line in lines]
    assert offsets == sorted(offsets) and offsets[0] < offsets[1] < offsets[2]
    await live.twilio.aclose()


async def test_the_model_session_is_configured_in_the_ga_shape(asgi_server, realtime, rest):
    agent = await make_agent(voice="cedar")
    live = await start_call(asgi_server, rest, realtime)
    model = live.model
    [update] = await model.wait_for(lambda: model.session_updates)

    assert model.model == "gpt-realtime"
    assert model.headers["Authorization"] == "Bearer sk-test"
    assert "OpenAI-Beta" not in model.headers
    assert update["instructions"] == agent.instructions
    assert update["output_modalities"] == ["audio"]
    assert update["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert update["audio"]["output"] == {"format": {"type": "audio/pcmu"}, "voice": "cedar"}
    assert update["audio"]["input"]["turn_detection"] == {
        "type": "server_vad",
        "interrupt_response": True,
    }
    assert update["audio"]["input"]["transcription"] == {"model": "gpt-4o-transcribe"}
    tools = {tool["name"]: tool for tool in update["tools"]}
    assert tools["transfer_to_human"]["parameters"]["properties"]["target"]["enum"] == ["reception"]
    assert "end_call" in tools
    # Caller audio flows to the model untouched.
    await model.wait_for(lambda: model.appended_bytes >= 20 * 160)
    assert model.errors_sent == []
    await finish(live)


# --- the live view's "who is speaking" -------------------------------------------------------


@sync_to_async
def staff_session_cookie() -> str:
    staff = User.objects.create_user("watcher", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_call"))
    browser = Client()
    browser.force_login(staff)
    return browser.cookies[settings.SESSION_COOKIE_NAME].value


async def test_the_live_view_hears_who_is_speaking_as_it_changes(asgi_server, realtime, rest):
    await make_agent()
    cookie = await staff_session_cookie()
    origin = asgi_server.http_url
    async with websockets.connect(
        origin.replace("http", "ws") + "/ws/calls/live",
        additional_headers={"Cookie": f"{settings.SESSION_COOKIE_NAME}={cookie}", "Origin": origin},
    ) as feed:
        live = await start_call(asgi_server, rest, realtime)
        model = live.model
        await model.reply(transcript="Here is a long answer.", audio_ms=1500)
        await live.played_at_least(300)
        await model.speech_started()
        await model.speech_stopped()

        speakers = []
        while speakers[-2:] != ["caller", ""]:
            message = json.loads(await asyncio.wait_for(feed.recv(), 5))
            if message.get("event") == "speaking":
                assert message["call_id"] == str((await live.call()).pk)
                speakers.append(message["speaker"])
        # Sent when it changes, not per audio frame.
        assert speakers == ["agent", "caller", ""]
        await finish(live)


def test_session_events_are_recorded_by_call_id_and_skipped_once_the_call_is_gone():
    from calls.models import CallEvent
    from calls.session.recorder import _event_record

    from .dashboard_helpers import make_call

    call = make_call(None)
    _event_record(call_id=str(call.id), kind="barge_in", actor="caller", data={"heard_ms": 900})
    assert list(call.events.values_list("kind", "data")) == [("barge_in", {"heard_ms": 900})]

    call_id = str(call.id)
    call.delete()
    _event_record(call_id=call_id, kind="barge_in", actor="caller", data={})  # no error
    assert not CallEvent.objects.filter(call_id=call_id).exists()
