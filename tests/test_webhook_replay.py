"""A finished call stays finished: a replayed voice webhook never reopens it."""

import logging
import xml.etree.ElementTree as ET

import pytest
from asgiref.sync import sync_to_async

from agents.models import Agent
from callmedia import protocol
from calls.models import Call, CallEvent, CallStatus, MediaStream, TranscriptEntry

from .stream_helpers import TwilioTestStream
from .twilio_helpers import ACCOUNT_SID, incoming_params, new_call_sid, signed_post

pytestmark = pytest.mark.django_db(transaction=True)
pytest_plugins = ["tests.agent_harness"]  # realtime

INCOMING = "/twilio/voice/incoming"


@pytest.fixture
async def quiet_agent(db) -> Agent:
    return await Agent.objects.acreate(name="Quiet", phone_number="+14155550100", greeting="")


@sync_to_async
def post(client, path: str, params: dict) -> tuple[int, str]:
    response = signed_post(client, path, params)
    return response.status_code, response.content.decode()


def stream_token(document: str) -> str | None:
    parameter = ET.fromstring(document).find("./Connect/Stream/Parameter[@name='token']")
    return None if parameter is None else parameter.get("value")


async def finished_call(client) -> tuple[dict, str]:
    """A call answered (its token never used) and then completed; its params and token."""
    params = incoming_params(new_call_sid(), "+14155550100")
    status, document = await post(client, INCOMING, params)
    assert status == 200
    token = stream_token(document)
    assert token
    completed = {
        "CallSid": params["CallSid"],
        "AccountSid": ACCOUNT_SID,
        "CallStatus": "completed",
        "SequenceNumber": "3",
        "CallDuration": "12",
    }
    assert (await post(client, "/twilio/voice/status", completed))[0] == 204
    return params, token


async def test_a_replayed_voice_webhook_hangs_up_a_finished_call(client, quiet_agent, caplog):
    params, _ = await finished_call(client)
    with caplog.at_level(logging.WARNING, logger="calls.services"):
        status, document = await post(client, INCOMING, params)
    assert status == 200
    assert [child.tag for child in ET.fromstring(document)] == ["Hangup"]
    call = await Call.objects.aget(sid=params["CallSid"])
    assert call.status == CallStatus.COMPLETED
    event = await CallEvent.objects.aget(call=call, kind="answer_refused")
    assert event.data == {"status": "completed"}
    assert f"Call {params['CallSid']} has ended" in caplog.text
    assert not await CallEvent.objects.filter(kind="answer_retried").aexists()


async def test_a_replayed_voice_webhook_opens_no_stream_and_no_model_session(
    client, quiet_agent, realtime
):
    params, _ = await finished_call(client)
    _, document = await post(client, INCOMING, params)
    twilio = TwilioTestStream(call_sid=params["CallSid"], token=stream_token(document))
    await twilio.open()
    assert await twilio.closed() == protocol.CLOSE_STREAM_REFUSED
    assert realtime.sessions == []
    assert not await MediaStream.objects.aexists()
    assert not await TranscriptEntry.objects.aexists()


async def test_a_token_issued_before_the_call_ended_opens_no_stream(client, quiet_agent, realtime):
    params, token = await finished_call(client)
    twilio = TwilioTestStream(call_sid=params["CallSid"], token=token)
    await twilio.open()
    assert await twilio.closed() == protocol.CLOSE_STREAM_REFUSED
    assert realtime.sessions == []
    event = await CallEvent.objects.aget(kind="stream_refused")
    assert event.data["reason"] == "the call has ended"
