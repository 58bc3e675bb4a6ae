"""Answering-machine detection on the calls an agent places.

Real parts: our server (daphne in-process), the fake model, and Twilio's side played by
`OutboundPhones` (REST create, answer webhook, media stream, signed AMD and status
callbacks). Each verdict must lead to the right behaviour on the line and in the record.
"""

import asyncio

import pytest
from asgiref.sync import sync_to_async

from agents.models import AnsweringMachine
from calls import services
from calls.models import Call, EndReason
from calls.simulator.outbound import NO_VERDICT, Answer, OutboundPhones
from peers.realtime import FakeRealtimeServer, Reply

pytest.register_assert_rewrite("tests.agent_harness")
from .agent_harness import make_agent  # noqa: E402

pytestmark = pytest.mark.django_db(transaction=True)
pytest_plugins = ["tests.agent_harness"]  # asgi_server

CALLEE = "+14155550142"
GREETING = "Hello, this is the clinic calling about your appointment."
VOICEMAIL = "Hi {first_name}, this is the clinic. Please call us back on 415 555 0100."
GREETING_MS = 600
VOICEMAIL_MS = 1500


@pytest.fixture
async def model(settings):
    """The fake model: every response is 600 ms of audio (the voicemail: 1.5 s)."""
    async with FakeRealtimeServer(
        default_reply=Reply(transcript="Hello there.", audio_ms=GREETING_MS)
    ) as server:
        settings.OPENAI_REALTIME_URL = server.url
        yield server


async def place(asgi_server, settings, mode: str, answer: Answer, *, wait_s: float = 5.0):
    """The agent (in `mode`) calls CALLEE, who answers as `answer`; returns (phone, call)."""
    settings.AMD_WAIT_SECONDS = wait_s
    agent = await make_agent(greeting=GREETING, answering_machine=mode, voicemail_message=VOICEMAIL)
    phones = OutboundPhones(servers=[asgi_server.http_url], answers={CALLEE: answer})
    async with phones:
        settings.TWILIO_API_BASE_URL = phones.base_url
        call = await services.call_place_outbound(
            agent=agent, to_number=CALLEE, variables={"first_name": "Ada"}
        )
        phone = await phones.wait_done(call.sid, timeout=20)
    assert not phone.errors, phone.errors
    # The server finishes with the stream (session stopped, events written) just after.
    for _ in range(100):
        record = await Call.objects.aget(pk=call.pk)
        if record.status == "completed" and record.end_reason:
            break
        await asyncio.sleep(0.05)
    return phones, phone, record


@sync_to_async
def events(call: Call) -> list[tuple[str, dict]]:
    return [(e.kind, e.data) for e in call.events.order_by("created_at", "id")]


def kinds(recorded: list[tuple[str, dict]]) -> list[str]:
    return [kind for kind, _ in recorded]


async def test_a_person_is_greeted_only_once_twilio_says_human(asgi_server, model, settings):
    answer = Answer("human", amd_delay_s=1.0, talk_s=1.5)
    phones, phone, call = await place(asgi_server, settings, AnsweringMachine.VOICEMAIL, answer)
    [create] = phones.rest.creates()
    assert create.form["MachineDetection"] == "DetectMessageEnd"
    assert create.form["AsyncAmd"] == "true"
    assert create.form["AsyncAmdStatusCallback"] == "https://voicebot.example.com/twilio/voice/amd"
    # Nothing was said to the line during the second detection took; the greeting came after.
    assert phone.played_before_amd == 0
    assert phone.first_audio_at is not None and phone.first_audio_at > phone.amd_sent_at
    assert phone.played_bytes > 0
    recorded = await events(call)
    assert ("amd_result", {"answered_by": "human", "detection_ms": 1000}) in [
        (kind, {**data, "detection_ms": round(data.get("detection_ms", 0), -3)})
        for kind, data in recorded
    ]
    assert "voicemail_left" not in kinds(recorded)
    assert call.answered_by == "human"
    assert call.end_reason == EndReason.CALLER_HANGUP
    session = model.sessions[0]
    [greeting] = session.responses
    assert GREETING in greeting.request["instructions"]


@pytest.mark.parametrize("beep", ["machine_end_beep", "machine_end_silence", "machine_end_other"])
async def test_a_machine_gets_the_voicemail_after_the_beep_then_the_call_ends(
    asgi_server, model, settings, beep
):
    model.default_reply = Reply(transcript="Hi Ada, this is the clinic.", audio_ms=VOICEMAIL_MS)
    answer = Answer("machine", amd_delay_s=0.8, answered_by=beep, talk_s=10)
    phones, phone, call = await place(asgi_server, settings, AnsweringMachine.VOICEMAIL, answer)
    # Not greeted: nothing played during the machine's greeting.
    assert phone.played_before_amd == 0
    assert phone.first_audio_at > phone.amd_sent_at
    # The message was said word for word, with the contact's variables filled in.
    [message] = model.sessions[0].responses
    assert "Hi Ada, this is the clinic. Please call us back" in message.request["instructions"]
    # Played fully, then hung up by the server through REST.
    assert phone.ended_by == "server"
    assert phone.unplayed_at_hangup == 0
    assert phone.played_bytes >= VOICEMAIL_MS * 8
    assert len(phones.rest.hangups(call.sid)) == 1
    recorded = await events(call)
    assert kinds(recorded).index("amd_result") < kinds(recorded).index("voicemail_left")
    assert dict(recorded)["amd_result"]["answered_by"] == beep
    assert call.end_reason == EndReason.VOICEMAIL
    assert call.answered_by == beep


@pytest.mark.parametrize(
    ("mode", "verdict"),
    [
        (AnsweringMachine.DETECT, "machine_start"),
        (AnsweringMachine.DETECT, "machine_end_beep"),
        (AnsweringMachine.VOICEMAIL, "fax"),
        (AnsweringMachine.VOICEMAIL, "machine_start"),
    ],
)
async def test_a_machine_without_a_message_to_take_or_a_fax_is_hung_up_on_at_once(
    asgi_server, model, settings, mode, verdict
):
    answer = Answer("machine", amd_delay_s=0.5, answered_by=verdict, talk_s=10)
    phones, phone, call = await place(asgi_server, settings, mode, answer)
    [create] = phones.rest.creates()
    expected = "Enable" if mode == AnsweringMachine.DETECT else "DetectMessageEnd"
    assert create.form["MachineDetection"] == expected
    assert phone.ended_by == "server"
    assert phone.hangup_at - phone.amd_sent_at < 2.0
    assert phone.played_bytes == 0
    assert model.sessions[0].responses == []
    recorded = await events(call)
    assert dict(recorded)["amd_result"]["answered_by"] == verdict
    assert "voicemail_left" not in kinds(recorded)
    assert call.end_reason == EndReason.MACHINE


async def test_unknown_is_greeted_as_a_person(asgi_server, model, settings):
    answer = Answer("human", amd_delay_s=0.3, answered_by="unknown", talk_s=1.5)
    _, phone, call = await place(asgi_server, settings, AnsweringMachine.VOICEMAIL, answer)
    assert phone.played_before_amd == 0
    assert phone.first_audio_at > phone.amd_sent_at
    assert dict(await events(call))["amd_result"]["answered_by"] == "unknown"


async def test_without_a_verdict_the_agent_greets_after_the_bound(asgi_server, model, settings):
    answer = Answer("human", answered_by=NO_VERDICT, talk_s=2.5)
    phones, phone, call = await place(
        asgi_server, settings, AnsweringMachine.VOICEMAIL, answer, wait_s=1.0
    )
    started = phone.stream._start_time
    assert 0.9 <= phone.first_audio_at - started < 2.0
    recorded = await events(call)
    assert "amd_timeout" in kinds(recorded)
    assert "amd_result" not in kinds(recorded)


async def test_with_detection_off_the_agent_greets_at_once(asgi_server, model, settings):
    answer = Answer("human", talk_s=1.5)
    phones, phone, call = await place(asgi_server, settings, AnsweringMachine.OFF, answer)
    [create] = phones.rest.creates()
    assert "MachineDetection" not in create.form
    assert phone.first_audio_at - phone.stream._start_time < 0.9
    assert "amd_result" not in kinds(await events(call))
