import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

import pytest

from agents.models import Agent
from calls import security
from calls.models import Call, CallEvent, Direction, EndReason

from .twilio_helpers import incoming_params, new_call_sid, signed_post

pytestmark = pytest.mark.django_db

PATH = "/twilio/voice/incoming"


def answer(client, call_sid: str, to: str = "+14155550100") -> ET.Element:
    response = signed_post(client, PATH, incoming_params(call_sid, to))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/xml")
    return ET.fromstring(response.content)


def test_it_connects_the_call_to_the_media_stream(client, agent):
    root = answer(client, new_call_sid())
    assert root.tag == "Response"
    [connect] = list(root)
    assert connect.tag == "Connect"
    assert connect.get("action") == "https://voicebot.example.com/twilio/voice/connect-action"
    [stream] = list(connect)
    assert stream.tag == "Stream"
    assert stream.get("url") == "wss://voicebot.example.com/twilio/stream"
    assert urlsplit(stream.get("url")).query == ""
    assert stream.get("statusCallback") == "https://voicebot.example.com/twilio/stream/status"
    assert stream.get("statusCallbackMethod") == "POST"
    [parameter] = list(stream)
    assert parameter.tag == "Parameter"
    assert parameter.get("name") == "token"
    assert 0 < len(parameter.get("value")) < 500


def test_the_stream_token_is_bound_to_the_call_and_single_use(client, agent):
    call_sid = new_call_sid()
    token = answer(client, call_sid).find("./Connect/Stream/Parameter").get("value")
    nonce = security.stream_token_nonce(token, call_sid)
    assert Call.objects.get(sid=call_sid).stream_nonce == nonce
    with pytest.raises(security.StreamTokenError):
        security.stream_token_nonce(token, new_call_sid())


def test_it_records_the_call_with_its_agent(client, agent):
    call_sid = new_call_sid()
    answer(client, call_sid)
    call = Call.objects.get(sid=call_sid)
    assert call.agent == agent
    assert call.direction == Direction.INBOUND
    assert (call.from_number, call.to_number) == ("+14155550123", "+14155550100")
    assert call.status == "ringing"
    assert CallEvent.objects.filter(call=call, kind="answered", actor="twilio").exists()


def test_a_retried_webhook_records_one_call_and_reissues_the_token(client, agent):
    call_sid = new_call_sid()
    first = answer(client, call_sid).find("./Connect/Stream/Parameter").get("value")
    second = answer(client, call_sid).find("./Connect/Stream/Parameter").get("value")
    assert Call.objects.filter(sid=call_sid).count() == 1
    assert first != second
    # Only the newest token is live: the first one's nonce was replaced.
    call = Call.objects.get(sid=call_sid)
    assert security.stream_token_nonce(second, call_sid) == call.stream_nonce
    assert security.stream_token_nonce(first, call_sid) != call.stream_nonce
    kinds = list(call.events.values_list("kind", flat=True))
    assert kinds == ["answered", "answer_retried"]


def test_an_inactive_agent_does_not_answer(client, agent):
    agent.is_active = False
    agent.save()
    root = answer(client, new_call_sid())
    assert [child.tag for child in root] == ["Say", "Hangup"]


def test_an_unknown_number_falls_back_to_the_default_agent(client, agent):
    fallback = Agent.objects.create(name="Fallback", is_default=True)
    call_sid = new_call_sid()
    root = answer(client, call_sid, to="+14155550111")
    assert root.find("./Connect/Stream") is not None
    assert Call.objects.get(sid=call_sid).agent == fallback


def test_an_unknown_number_without_a_default_gets_a_polite_goodbye(client, agent):
    call_sid = new_call_sid()
    root = answer(client, call_sid, to="+14155550111")
    say, hangup = list(root)
    assert say.tag == "Say" and "not taking calls" in say.text
    assert hangup.tag == "Hangup"
    call = Call.objects.get(sid=call_sid)
    assert call.agent is None
    assert call.end_reason == EndReason.NO_AGENT
    assert call.events.filter(kind="unrouted").count() == 1


def test_an_outbound_call_keeps_the_agent_it_was_placed_for(client, agent):
    call_sid = new_call_sid()
    params = incoming_params(call_sid, "+14155550177", from_number="+14155550100")
    params["Direction"] = "outbound-api"
    signed_post(client, PATH, params)
    call = Call.objects.get(sid=call_sid)
    assert call.direction == Direction.OUTBOUND
    assert call.agent == agent
