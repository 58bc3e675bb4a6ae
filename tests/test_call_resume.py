"""One way back onto a new stream for a live call: `call_resume`, and the three that use it."""

import xml.etree.ElementTree as ET

import pytest
from django.utils import timezone

from calls import security, services
from calls.models import CallEvent, CallStatus

from .dashboard_helpers import make_call

pytestmark = pytest.mark.django_db


def stream_parameters(document: str) -> dict[str, str]:
    stream = ET.fromstring(document).find("./Connect/Stream")
    assert stream is not None, document
    return {p.get("name"): p.get("value") for p in stream.iter("Parameter")}


def test_a_live_call_gets_a_fresh_token_its_note_and_its_event():
    call = make_call(None)

    document = services.call_resume(
        call_id=call.pk,
        why="a test",
        note="x" * 500,
        event_kind="test_resume",
        data={"reason": "because"},
    )

    parameters = stream_parameters(document)
    assert parameters[services.RESUME_PARAMETER] == "x" * 400
    call.refresh_from_db()
    assert call.stream_nonce
    assert parameters[security.STREAM_TOKEN_PARAMETER]
    event = CallEvent.objects.get(call=call, kind="test_resume")
    assert event.data == {"reason": "because"}


def test_without_a_note_the_stream_carries_only_its_token():
    call = make_call(None)

    document = services.call_resume(call_id=call.pk, why="a test")

    assert list(stream_parameters(document)) == [security.STREAM_TOKEN_PARAMETER]
    assert CallEvent.objects.filter(call=call, kind="stream_resume").count() == 1


def test_an_ended_call_is_not_resumed_by_any_path():
    call = make_call(None, status=CallStatus.COMPLETED, ended_at=timezone.now())

    assert services.call_resume(call_id=call.pk, why="a test") is None
    assert "<Hangup" in services.call_resume_twiml(call=call, reason="not taken")
    assert services.call_resume_prepare(call_id=str(call.pk)) is None
    assert services.stream_resume_twiml(call_sid=call.sid) is None
    assert not CallEvent.objects.filter(call=call).exists()


def test_a_call_being_hung_up_is_not_resumed_by_any_path():
    call = make_call(None, hangup_requested_at=timezone.now())

    assert services.call_resume(call_id=call.pk, why="a test") is None
    assert "<Hangup" in services.call_resume_twiml(call=call, reason="not taken")
    assert services.call_resume_prepare(call_id=str(call.pk)) is None
    assert services.stream_resume_twiml(call_sid=call.sid) is None
    call.refresh_from_db()
    assert call.stream_nonce == ""
    assert not CallEvent.objects.filter(call=call).exists()
