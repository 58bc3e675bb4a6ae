import pytest

from calls.models import Call, CallStatus, EndReason, MediaStream, StreamStatus

from .twilio_helpers import ACCOUNT_SID, incoming_params, new_call_sid, signed_post

pytestmark = pytest.mark.django_db


@pytest.fixture
def call_sid(client, agent) -> str:
    sid = new_call_sid()
    signed_post(client, "/twilio/voice/incoming", incoming_params(sid, "+14155550100"))
    return sid


def status(client, call_sid: str, value: str, sequence: int, **extra) -> None:
    params = {
        "CallSid": call_sid,
        "AccountSid": ACCOUNT_SID,
        "CallStatus": value,
        "SequenceNumber": str(sequence),
        **extra,
    }
    assert signed_post(client, "/twilio/voice/status", params).status_code == 204


def test_it_records_answer_and_completion(client, call_sid):
    status(client, call_sid, "in-progress", 1)
    status(client, call_sid, "completed", 2, CallDuration="42")
    call = Call.objects.get(sid=call_sid)
    assert call.status == CallStatus.COMPLETED
    assert call.duration_seconds == 42
    assert call.answered_at is not None and call.ended_at is not None
    assert call.end_reason == EndReason.CALLER_HANGUP


def test_a_finished_call_never_goes_back_to_ringing(client, call_sid):
    status(client, call_sid, "completed", 3, CallDuration="10")
    status(client, call_sid, "ringing", 1)
    status(client, call_sid, "in-progress", 2)
    call = Call.objects.get(sid=call_sid)
    assert call.status == CallStatus.COMPLETED
    assert call.duration_seconds == 10


def test_an_older_sequence_number_is_ignored(client, call_sid):
    status(client, call_sid, "in-progress", 5)
    status(client, call_sid, "ringing", 4)
    assert Call.objects.get(sid=call_sid).status == CallStatus.IN_PROGRESS


def test_a_late_callback_still_fills_in_the_duration(client, call_sid):
    status(client, call_sid, "completed", 2)
    status(client, call_sid, "completed", 2, CallDuration="17")
    assert Call.objects.get(sid=call_sid).duration_seconds == 17


def test_a_failed_outcome_keeps_an_end_reason_set_earlier(client, call_sid):
    Call.objects.filter(sid=call_sid).update(end_reason=EndReason.TRANSFERRED)
    status(client, call_sid, "completed", 9)
    assert Call.objects.get(sid=call_sid).end_reason == EndReason.TRANSFERRED


def test_each_applied_status_is_logged(client, call_sid):
    status(client, call_sid, "in-progress", 1)
    status(client, call_sid, "ringing", 0)
    call = Call.objects.get(sid=call_sid)
    assert list(call.events.filter(kind="status").values_list("data__status", flat=True)) == [
        "in-progress"
    ]


def test_an_unknown_call_is_ignored(client, db):
    status(client, new_call_sid(), "completed", 1)
    assert Call.objects.count() == 0


def test_stream_status_callbacks_are_recorded(client, call_sid):
    base = {
        "CallSid": call_sid,
        "AccountSid": ACCOUNT_SID,
        "StreamSid": "MZ" + "a" * 32,
        "StreamName": "s",
        "Timestamp": "2026-11-22T10:00:00Z",
    }
    signed_post(client, "/twilio/stream/status", {**base, "StreamEvent": "stream-started"})
    stream = MediaStream.objects.get(sid=base["StreamSid"])
    assert stream.status == StreamStatus.STARTED
    signed_post(
        client,
        "/twilio/stream/status",
        {**base, "StreamEvent": "stream-error", "StreamError": "boom"},
    )
    signed_post(client, "/twilio/stream/status", {**base, "StreamEvent": "stream-stopped"})
    stream.refresh_from_db()
    assert stream.status == StreamStatus.STOPPED and stream.last_error == "boom"
    kinds = list(stream.call.events.values_list("kind", flat=True))
    assert kinds[-3:] == ["stream-started", "stream-error", "stream-stopped"]


def test_the_dial_action_records_how_the_transfer_ended_and_hangs_up(client, call_sid):
    response = signed_post(
        client,
        "/twilio/voice/dial-action",
        {"CallSid": call_sid, "DialCallStatus": "completed", "DialCallDuration": "61"},
    )
    assert b"<Hangup />" in response.content
    call = Call.objects.get(sid=call_sid)
    event = call.events.get(kind="transfer_ended")
    assert event.data == {"dial_status": "completed", "duration_seconds": 61}
    assert call.status == CallStatus.COMPLETED


def test_the_connect_action_ends_the_call_when_no_transfer_replaced_it(client, call_sid):
    response = signed_post(client, "/twilio/voice/connect-action", {"CallSid": call_sid})
    assert b"<Hangup />" in response.content
    call = Call.objects.get(sid=call_sid)
    assert (call.status, call.end_reason) == (CallStatus.COMPLETED, EndReason.AGENT_ENDED)
    # Twilio's own callback still fills in the duration afterwards.
    status(client, call_sid, "completed", 7, CallDuration="33")
    assert Call.objects.get(sid=call_sid).duration_seconds == 33
