"""A finished call's outcome: derived from how it ended (one test per ending), stored when
the call's record ends, and backfilled by `analyze_calls`."""

import io

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.utils import timezone

from agents.models import Agent
from calls import services
from calls.models import Call, CallAnalysis, CallStatus, EndReason, Outcome
from calls.outcomes import outcome_derive
from calls.session.recorder import Recorder

from .twilio_helpers import ACCOUNT_SID, incoming_params, new_call_sid, signed_post


def derive(status=CallStatus.COMPLETED, end_reason="", events=()):
    return outcome_derive(status=status, end_reason=end_reason, events=list(events))


# --- the derivation, one ending at a time -----------------------------------------------------


def test_a_live_call_has_no_outcome_yet():
    assert derive(status=CallStatus.IN_PROGRESS, end_reason=EndReason.AGENT_ENDED) is None


def test_the_agent_ending_the_call_is_resolved():
    assert derive(end_reason=EndReason.AGENT_ENDED).outcome == Outcome.RESOLVED


def test_a_transfer_the_person_answered():
    derived = derive(
        end_reason=EndReason.TRANSFERRED,
        events=[
            ("transfer", {"target": "sales"}),
            ("transfer_ended", {"dial_status": "completed"}),
        ],
    )
    assert derived.outcome == Outcome.TRANSFERRED
    assert derived.detail == "the person answered"


@pytest.mark.parametrize(
    ("dial_status", "words"),
    [
        ("no-answer", "the person did not answer"),
        ("busy", "the person's line was busy"),
        ("failed", "the person's number could not be reached"),
    ],
)
def test_a_transfer_nobody_answered(dial_status, words):
    derived = derive(
        end_reason=EndReason.TRANSFERRED,
        events=[("transfer", {}), ("transfer_ended", {"dial_status": dial_status})],
    )
    assert (derived.outcome, derived.detail) == (Outcome.TRANSFER_UNANSWERED, words)


def test_a_transfer_nobody_took_does_not_decide_the_outcome_once_the_caller_is_back():
    returned = [
        ("transfer", {"target": "sales"}),
        ("transfer_returned", {"dial_status": "busy"}),
    ]
    assert derive(end_reason=EndReason.AGENT_ENDED, events=returned).outcome == Outcome.RESOLVED
    # Put through again afterwards, and answered: that transfer counts.
    again = [*returned, ("transfer", {}), ("transfer_ended", {"dial_status": "completed"})]
    derived = derive(end_reason=EndReason.TRANSFERRED, events=again)
    assert (derived.outcome, derived.detail) == (Outcome.TRANSFERRED, "the person answered")


def test_a_transfer_whose_dial_result_never_came_says_so():
    derived = derive(end_reason=EndReason.TRANSFERRED, events=[("transfer", {})])
    assert derived.outcome == Outcome.TRANSFERRED
    assert "not known" in derived.detail


def test_the_caller_hanging_up_mid_conversation():
    assert derive(end_reason=EndReason.CALLER_HANGUP).outcome == Outcome.CALLER_HUNG_UP


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (CallStatus.NO_ANSWER, "no answer"),
        (CallStatus.BUSY, "busy"),
        (CallStatus.CANCELED, "canceled"),
    ],
)
def test_no_answer_or_busy(status, words):
    derived = derive(status=status, end_reason=EndReason.FAILED)
    assert derived.outcome == Outcome.NO_ANSWER
    assert derived.detail.startswith(words)


@pytest.mark.parametrize("answered_by", ["machine_end_beep", "machine_start", "fax"])
def test_a_machine_answering_is_voicemail(answered_by):
    derived = derive(
        end_reason=EndReason.AGENT_ENDED, events=[("amd_result", {"answered_by": answered_by})]
    )
    assert (derived.outcome, derived.detail) == (Outcome.VOICEMAIL, f"answered by {answered_by}")


def test_a_person_answering_an_outbound_call_is_not_voicemail():
    derived = derive(
        end_reason=EndReason.AGENT_ENDED, events=[("amd_result", {"answered_by": "human"})]
    )
    assert derived.outcome == Outcome.RESOLVED


def test_a_message_left_is_voicemail():
    derived = derive(end_reason=EndReason.AGENT_ENDED, events=[("voicemail_left", {})])
    assert derived.outcome == Outcome.VOICEMAIL


def test_a_model_failure_is_failed_with_the_failure():
    derived = derive(
        end_reason=EndReason.FAILED,
        events=[("agent_error", {"failure": "connection_refused", "detail": "…"})],
    )
    assert derived.outcome == Outcome.FAILED
    assert derived.detail == "the agent failed: connection_refused"


def test_a_model_failure_handed_to_a_person_counts_as_the_transfer():
    derived = derive(
        end_reason=EndReason.TRANSFERRED,
        events=[
            ("agent_error", {"failure": "session_expired"}),
            ("transfer", {}),
            ("transfer_ended", {"dial_status": "completed"}),
        ],
    )
    assert derived.outcome == Outcome.TRANSFERRED


@pytest.mark.parametrize(
    ("status", "end_reason", "words"),
    [
        (CallStatus.FAILED, EndReason.FAILED, "Twilio could not connect the call"),
        (CallStatus.COMPLETED, EndReason.NO_AGENT, "No agent for the number"),
        (CallStatus.COMPLETED, EndReason.SERVER_LOST, "Ended while the server was down"),
        (CallStatus.COMPLETED, EndReason.UNKNOWN_TO_TWILIO, "Unknown to Twilio"),
    ],
)
def test_other_failures_say_what_failed(status, end_reason, words):
    derived = derive(status=status, end_reason=end_reason)
    assert (derived.outcome, derived.detail) == (Outcome.FAILED, words)


def test_a_time_limit_and_a_staff_hang_up():
    limit = derive(end_reason=EndReason.TIMEOUT, events=[("limit_reached", {"limit": "idle"})])
    assert (limit.outcome, limit.detail) == (Outcome.TIMED_OUT, "idle")
    assert derive(end_reason=EndReason.STAFF_HANGUP).outcome == Outcome.STAFF_ENDED


# --- stored when the call ends ----------------------------------------------------------------


def _post(client, path: str, call_sid: str, **params) -> None:
    response = signed_post(client, path, {"CallSid": call_sid, "AccountSid": ACCOUNT_SID, **params})
    assert response.status_code in (200, 204)


@pytest.fixture
def call_sid(client, agent) -> str:
    sid = new_call_sid()
    signed_post(client, "/twilio/voice/incoming", incoming_params(sid, "+14155550100"))
    _post(client, "/twilio/voice/status", sid, CallStatus="in-progress", SequenceNumber="1")
    return sid


@pytest.mark.django_db
def test_the_status_callback_stores_the_outcome_and_queues_the_analysis(client, call_sid):
    assert Call.objects.get(sid=call_sid).outcome == ""
    _post(client, "/twilio/voice/status", call_sid, CallStatus="completed", SequenceNumber="2")
    call = Call.objects.get(sid=call_sid)
    assert call.outcome == Outcome.CALLER_HUNG_UP
    assert CallAnalysis.objects.get(call=call).status == "pending"


@pytest.mark.django_db
def test_the_dial_result_decides_the_transfers_outcome_even_after_the_call_ended(client, call_sid):
    call = Call.objects.get(sid=call_sid)
    services.call_event_record(call=call, kind="transfer", actor="agent", data={"target": "sales"})
    # Twilio's status callback can come before the <Dial action>.
    _post(client, "/twilio/voice/status", call_sid, CallStatus="completed", SequenceNumber="2")
    assert Call.objects.get(sid=call_sid).outcome == Outcome.TRANSFERRED
    _post(client, "/twilio/voice/dial-action", call_sid, DialCallStatus="no-answer")
    call = Call.objects.get(sid=call_sid)
    assert (call.outcome, call.outcome_detail) == (
        Outcome.TRANSFER_UNANSWERED,
        "the person did not answer",
    )


@pytest.mark.django_db
def test_our_hang_up_decides_the_outcome_even_when_twilios_completed_came_first(client, call_sid):
    # The agent hung up; Twilio's status callback for it landed before the hang-up's record.
    Call.objects.filter(sid=call_sid).update(hangup_requested_at=timezone.now())
    _post(client, "/twilio/voice/status", call_sid, CallStatus="completed", SequenceNumber="2")
    call = Call.objects.get(sid=call_sid)
    assert (call.status, call.outcome) == ("completed", "")  # not "caller hung up" meanwhile
    services.call_end_record(
        call_id=str(call.pk), reason=EndReason.AGENT_ENDED, actor="agent", hung_up=True
    )
    call = Call.objects.get(sid=call_sid)
    assert (call.end_reason, call.outcome) == (EndReason.AGENT_ENDED, Outcome.RESOLVED)


@pytest.mark.django_db(transaction=True)
async def test_a_voicemail_recorded_after_the_call_ended_still_decides_its_outcome(client):
    # The session's event writes are queued: "voicemail_left" can land after Twilio's
    # "completed" gave the call its outcome from the AMD verdict alone.
    agent = await Agent.objects.acreate(name="Reminders", phone_number="+14155550100")
    call = await Call.objects.acreate(
        sid=new_call_sid(), agent=agent, direction="outbound-api", status="in-progress"
    )
    await sync_to_async(services.call_event_record)(
        call=call, kind="amd_result", actor="twilio", data={"answered_by": "machine_end_beep"}
    )
    await sync_to_async(services.call_status_update)(call_sid=call.sid, status="completed")
    call = await Call.objects.aget(pk=call.pk)
    assert call.outcome_detail == "answered by machine_end_beep"
    recorder = Recorder(call_id=str(call.pk), call_sid=call.sid)
    recorder.start()
    recorder.event("voicemail_left", "agent", {"chars": 40})
    await recorder.close()
    call = await Call.objects.aget(pk=call.pk)
    assert (call.outcome, call.outcome_detail) == (Outcome.VOICEMAIL, "a message was left")


@pytest.mark.django_db
def test_the_connect_action_ends_the_call_as_resolved(client, call_sid):
    _post(client, "/twilio/voice/connect-action", call_sid)
    assert Call.objects.get(sid=call_sid).outcome == Outcome.RESOLVED


@pytest.mark.django_db(transaction=True)  # the analysis runs in the thread pool
def test_analyze_calls_backfills_outcomes_of_calls_from_before(client, call_sid, settings):
    _post(client, "/twilio/voice/status", call_sid, CallStatus="completed", SequenceNumber="2")
    Call.objects.filter(sid=call_sid).update(outcome="", outcome_detail="")
    CallAnalysis.objects.all().delete()
    settings.OPENAI_API_KEY = ""  # the deterministic summary: no network
    call_command("analyze_calls", stdout=io.StringIO())
    call = Call.objects.get(sid=call_sid)
    assert call.outcome == Outcome.CALLER_HUNG_UP
    assert call.analysis.status == "done"
