"""Warm transfers, whole: the model transfers, Twilio (the emulator) rings the person, runs
the whisper with the key they press, posts the <Dial action>, and the caller either stays
with the person or comes back to the agent on a new stream, with the model told why."""

import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

import aiohttp
import pytest
from asgiref.sync import sync_to_async

from agents.models import Agent, TransferMode, TransferTarget
from calls import security
from calls.models import EndReason, MediaStream, TranscriptEntry
from calls.simulator.dial import dial_run
from calls.simulator.stream import TwilioStreamClient

from .agent_harness import (
    RECEPTION_NUMBER,
    make_agent,
    start_call,
)
from .twilio_helpers import ACCOUNT_SID

pytest_plugins = ["tests.agent_harness"]  # asgi_server, realtime, rest
pytestmark = pytest.mark.django_db(transaction=True)


def poster(server):
    """POST to our server as Twilio does: to its address, signed over the public URL."""

    async def post(url: str, params: dict[str, str]) -> str:
        parts = urlsplit(url)
        target = server.http_url + parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {security.SIGNATURE_HEADER: security.compute_signature(url, params)}
        async with (
            aiohttp.ClientSession() as http,
            http.post(target, data=params, headers=headers) as response,
        ):
            body = await response.text()
            assert response.status == 200, body
            return body

    return post


@sync_to_async
def targets_set(mode: str) -> None:
    TransferTarget.objects.update(mode=mode)


@sync_to_async
def greeting_set(text: str) -> None:
    Agent.objects.update(greeting=text)


async def transfer_to_reception(asgi_server, rest, realtime, outcome: str, mode=TransferMode.WARM):
    await make_agent()
    await targets_set(mode)
    live = await start_call(asgi_server, rest, realtime)
    # A later session would greet with this: a resumed one must not.
    await greeting_set("Hello there.")
    await live.model.caller_transcript("I was charged twice for my order.")
    await live.wait_until(
        lambda: TranscriptEntry.objects.filter(call__sid=live.call_sid).aexists(),
        what="the caller's line written",
    )
    await live.model.reply(
        transcript="Putting you through.",
        audio_ms=300,
        pace="burst",
        function_call=("transfer_to_human", {"target": "reception", "reason": "wants a refund"}),
    )
    update = await rest.wait_for_request(lambda r: r.twiml is not None, timeout=5)
    assert update.dial_numbers == [RECEPTION_NUMBER]
    await live.ended()  # Twilio ends the stream once the <Dial> replaces the TwiML
    run = await dial_run(
        update.twiml,
        post=poster(asgi_server),
        call_sid=live.call_sid,
        account_sid=ACCOUNT_SID,
        outcome_for=lambda number: outcome,
    )
    return live, update, run


async def test_the_person_hears_who_and_why_and_takes_the_call_with_1(asgi_server, realtime, rest):
    live, update, run = await transfer_to_reception(asgi_server, rest, realtime, "accept")

    number = ET.fromstring(update.twiml).find("./Dial/Number")
    assert number.get("url").startswith("https://voicebot.example.com/twilio/voice/whisper?call=")
    said = " ".join(run.whisper_said)
    assert "Front desk" in said and "+14155550123" in said
    assert "wants a refund" in said
    assert "They last said: I was charged twice for my order." in said
    assert "Press 1" in said
    assert run.bridged and run.dial_status == "completed"
    assert [verb.tag for verb in ET.fromstring(run.action_twiml)] == ["Hangup"]
    call = await live.call()
    assert (call.end_reason, call.transferred_to) == (EndReason.TRANSFERRED, RECEPTION_NUMBER)
    assert call.status == "completed"
    kinds = [event.kind for event in await live.events()]
    assert (
        kinds.index("transfer") < kinds.index("transfer_accepted") < kinds.index("transfer_ended")
    )
    await live.twilio.aclose()


@pytest.mark.parametrize(
    ("outcome", "why"),
    [
        ("reject", "they did not accept the call"),
        ("silent", "they did not accept the call"),
        ("no-answer", "nobody answered"),
        ("busy", "the line was busy"),
        ("failed", "the call could not be placed"),
    ],
)
async def test_a_transfer_not_taken_brings_the_caller_back_to_the_agent(
    asgi_server, realtime, rest, outcome, why
):
    live, _, run = await transfer_to_reception(asgi_server, rest, realtime, outcome)
    if outcome in ("reject", "silent"):
        assert run.whisper is not None  # they answered and heard the whisper
    await back_with_the_agent(asgi_server, realtime, live, run, why)


@pytest.mark.parametrize(
    ("outcome", "why"),
    [
        ("no-answer", "nobody answered"),
        ("busy", "the line was busy"),
        ("failed", "the call could not be placed"),
    ],
)
async def test_a_cold_transfer_nobody_answered_brings_the_caller_back_too(
    asgi_server, realtime, rest, outcome, why
):
    live, update, run = await transfer_to_reception(
        asgi_server, rest, realtime, outcome, mode=TransferMode.COLD
    )
    assert ET.fromstring(update.twiml).find("./Dial/Number").get("url") is None  # no whisper
    await back_with_the_agent(asgi_server, realtime, live, run, why)


async def back_with_the_agent(asgi_server, realtime, live, run, why: str) -> None:
    """The `<Dial action>` put the caller back on a new stream, and the model heard why."""
    assert not run.bridged
    root = ET.fromstring(run.action_twiml)
    stream = root.find("./Connect/Stream")
    assert stream is not None, run.action_twiml  # a way back to the agent, not a hang-up
    parameters = {p.get("name"): p.get("value") for p in stream.iter("Parameter")}
    assert why in parameters["resume"]

    # Twilio opens the new stream: it attaches to the same call, and a new model session
    # is told why, with no greeting.
    twilio = TwilioStreamClient(
        asgi_server.stream_url,
        call_sid=live.call_sid,
        account_sid=ACCOUNT_SID,
        custom_parameters=parameters,
    )
    await twilio.start()
    model = await realtime.wait_for_session()
    # The new session is given the call so far, then why the caller is back.
    await model.wait_for(lambda: any(why in str(item) for item in model.items_created))
    told = " ".join(str(item) for item in model.items_created)
    assert "I was charged twice" in told
    assert why in told and "reception" in told
    await model.wait_for(lambda: model.responses)  # the model speaks first, about it
    assert all("Hello there" not in str(item) for item in model.items_created)
    call = await live.call()
    assert call.is_live
    assert call.end_reason == ""
    streams = await sync_to_async(MediaStream.objects.filter(call__sid=live.call_sid).count)()
    assert streams == 2
    kinds = [event.kind for event in await live.events()]
    assert "transfer_returned" in kinds and "resumed" in kinds
    assert "transfer_accepted" not in kinds and "transfer_ended" not in kinds
    await twilio.stop()
    await twilio.aclose()
    await live.twilio.aclose()
