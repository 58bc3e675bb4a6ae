"""Signed webhooks with values our tables cannot hold get 400 with the reason, never 500."""

import logging

import pytest

from calls.models import Call, CallEvent, CallStatus, MediaStream

from .stream_helpers import new_stream_sid
from .twilio_helpers import ACCOUNT_SID, incoming_params, new_call_sid, signed_post

pytestmark = pytest.mark.django_db

INCOMING = "/twilio/voice/incoming"
STATUS = "/twilio/voice/status"
STREAM_STATUS = "/twilio/stream/status"
CONNECT_ACTION = "/twilio/voice/connect-action"
DIAL_ACTION = "/twilio/voice/dial-action"
TOO_BIG = str(2**63)


@pytest.fixture
def call_sid(client, agent) -> str:
    sid = new_call_sid()
    assert signed_post(client, INCOMING, incoming_params(sid, "+14155550100")).status_code == 200
    return sid


def status_params(call_sid: str, **extra: str) -> dict:
    base = {"CallSid": call_sid, "AccountSid": ACCOUNT_SID, "CallStatus": "in-progress"}
    return {**base, "SequenceNumber": "1", **extra}


def stream_params(call_sid: str, **extra: str) -> dict:
    base = {"CallSid": call_sid, "AccountSid": ACCOUNT_SID, "StreamSid": new_stream_sid()}
    return {**base, "StreamEvent": "stream-started", **extra}


def refused(response, field: str) -> bool:
    body = response.content.decode()
    return response.status_code == 400 and field in body and body.startswith("Invalid webhook")


@pytest.mark.parametrize(
    "field, value",
    [
        ("CallSid", ""),
        ("CallSid", "CA123"),
        ("CallSid", "CA" + "0" * 32 + "\n"),
        ("CallSid", "CA" + "0" * 63),
        ("CallSid", "CA" + "0" * 31 + "\x00"),
        ("AccountSid", ""),
        ("AccountSid", "AC" + "g" * 32),
        ("From", "+1" * 33),
        ("From", "+1415\x00"),
        ("To", "x" * 65),
        ("To", "+1415\r\n5550100"),
        ("CallStatus", "x" * 41),
        ("Direction", "sideways"),
    ],
)
def test_the_voice_webhook_refuses_bad_values(client, agent, field, value):
    params = {**incoming_params(new_call_sid(), "+14155550100"), field: value}
    response = signed_post(client, INCOMING, params)
    assert refused(response, field), response.content
    assert response["Content-Type"].startswith("text/plain")
    assert Call.objects.count() == 0


@pytest.mark.parametrize(
    "field, value",
    [
        ("CallDuration", "-1"),
        ("CallDuration", TOO_BIG),
        ("CallDuration", str(2**31)),
        ("CallDuration", "twelve"),
        ("SequenceNumber", TOO_BIG),
        ("SequenceNumber", str(2**31)),
        ("SequenceNumber", "-5"),
        ("SequenceNumber", "9" * 5000),
        ("CallStatus", ""),
        ("CallStatus", "answered"),
        ("Timestamp", "yesterday"),
        ("Timestamp", "Mon, 01 Jan 99999 00:00:00 +0000"),
        ("Timestamp", "Mon, 01 Jan 2026 00:00:00 +0000" + " " * 60),
        ("Timestamp", "Fri, 31 Dec 9999 23:59:59 -1400"),
        ("CallSid", "CA" + "0" * 70),
    ],
)
def test_the_status_callback_refuses_bad_values(client, call_sid, field, value):
    response = signed_post(client, STATUS, status_params(call_sid, **{field: value}))
    assert refused(response, field), response.content
    call = Call.objects.get(sid=call_sid)
    assert (call.status, call.duration_seconds) == (CallStatus.RINGING, None)


@pytest.mark.parametrize(
    "field, value",
    [
        ("StreamSid", ""),
        ("StreamSid", "MZ" + "a" * 64),
        ("StreamEvent", "stream-" + "x" * 40),
        ("StreamEvent", ""),
        ("StreamError", "boom\x00"),
        ("StreamError", "e" * 1001),
        ("CallSid", "\x00"),
    ],
)
def test_the_stream_status_callback_refuses_bad_values(client, call_sid, field, value):
    response = signed_post(client, STREAM_STATUS, stream_params(call_sid, **{field: value}))
    assert refused(response, field), response.content
    assert not MediaStream.objects.exists()


@pytest.mark.parametrize(
    "field, value",
    [
        ("DialCallDuration", TOO_BIG),
        ("DialCallDuration", "-1"),
        ("DialCallStatus", "d" * 100),
        ("CallSid", "CA" + "0" * 32 + "\x00"),
    ],
)
def test_the_dial_action_refuses_bad_values(client, call_sid, field, value):
    params = {"CallSid": call_sid, "DialCallStatus": "completed", "DialCallDuration": "3"}
    response = signed_post(client, DIAL_ACTION, {**params, field: value})
    assert refused(response, field), response.content
    assert not CallEvent.objects.filter(kind="transfer_ended").exists()


@pytest.mark.parametrize("value", ["", "CA" + "0" * 2000, "CA\x00"])
def test_the_connect_action_refuses_a_bad_call_sid(client, call_sid, value):
    response = signed_post(client, CONNECT_ACTION, {"CallSid": value})
    assert refused(response, "CallSid"), response.content
    assert Call.objects.get(sid=call_sid).status == CallStatus.RINGING


def test_the_reason_is_logged_without_the_whole_value(client, agent, caplog):
    params = {**incoming_params(new_call_sid(), "+14155550100"), "To": "9" * 10_000}
    with caplog.at_level(logging.WARNING, logger="calls.views"):
        response = signed_post(client, INCOMING, params)
    assert response.status_code == 400
    assert "Refused a signed webhook" in caplog.text and "To: " in caplog.text
    assert "9" * 100 not in caplog.text and b"9" * 100 not in response.content


def test_the_signature_is_checked_before_the_fields(client, agent):
    params = {**incoming_params(new_call_sid(), "+14155550100"), "CallStatus": "nonsense"}
    assert client.post(INCOMING, params).status_code == 403


def test_fields_twilio_adds_are_ignored(client, agent):
    params = {**incoming_params(new_call_sid(), "+14155550100"), "CallerCity": "\x00" * 100}
    params["StirVerstat"] = "TN-Validation-Passed-A" * 500
    assert signed_post(client, INCOMING, params).status_code == 200


def test_a_timestamp_sets_when_the_call_ended(client, call_sid):
    params = status_params(
        call_sid, CallStatus="completed", Timestamp="Tue, 10 Dec 2019 21:14:05 -0000"
    )
    assert signed_post(client, STATUS, params).status_code == 204
    ended_at = Call.objects.get(sid=call_sid).ended_at
    assert ended_at.isoformat() == "2019-12-10T21:14:05+00:00"


def test_the_largest_values_that_fit_are_stored(client, call_sid):
    largest = str(2**31 - 1)
    params = status_params(call_sid, CallDuration=largest, SequenceNumber=largest)
    assert signed_post(client, STATUS, params).status_code == 204
    call = Call.objects.get(sid=call_sid)
    assert (call.duration_seconds, call.status_sequence) == (2**31 - 1, 2**31 - 1)
