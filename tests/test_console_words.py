"""The console speaks words, not internals: events, details, end reasons, the call list,
times in the staff member's own time zone; and call records cannot be deleted."""

from datetime import UTC, datetime

import pytest
from django.contrib.auth.models import User

from calls import labels
from calls.models import Call, CallEvent, CallStatus, EndReason, StaffProfile

from .dashboard_helpers import make_call, make_staff

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/calls/call/"
NOON_UTC = datetime(2026, 1, 15, 12, 0, 0, tzinfo=UTC)


def page_of(client, call: Call) -> str:
    return client.get(f"/admin/calls/call/{call.pk}/change/").content.decode()


# --- words ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        (EndReason.AGENT_ENDED, "Ended: agent said goodbye"),
        (EndReason.TIMEOUT, "Ended: time or silence limit reached"),
        (EndReason.TRANSFERRED, "Ended: transferred to a person"),
        (EndReason.SERVER_LOST, "Ended while the server was down"),
    ],
)
def test_why_a_call_ended_reads_naturally(reason, words):
    assert labels.ended_label(Call(end_reason=reason)) == words


def test_no_end_reason_label_is_a_raw_value():
    for reason in EndReason:
        assert "_" not in reason.label and reason.label != reason.value.capitalize()


def test_event_kinds_are_said_in_words():
    assert labels.event_label("barge_in") == "Caller interrupted the agent"
    assert labels.event_label("agent_error") == "The agent's model failed"
    assert labels.event_label("stream_connected") == "Audio connected"


def test_what_the_caller_heard_is_said_in_seconds():
    details = labels.event_details({"heard_ms": {"item_a": 2700, "item_b": 0}}, kind="barge_in")
    assert details == "caller heard: 2.7 s"


def test_reasons_and_latencies_are_words_or_left_out():
    details = labels.event_details(
        {"reason": "staff_hangup", "clear_latency_ms": 0.42, "stream_sid": "MZ" + "0" * 32}
    )
    assert details == "reason: staff hung up"
    failure = labels.event_details({"reason": "model failure: connect"})
    assert failure == "reason: the model failed: could not connect to the model"


def test_network_errors_are_said_in_words():
    raw = "Cannot connect to host 127.0.0.1:8010 ssl:default [Connect call failed]"
    details = labels.event_details({"error": raw}, kind="hangup_failed")
    assert "ssl:default" not in details and "Cannot connect to host" not in details
    assert details.startswith("error: Nothing answered at 127.0.0.1 (port 8010)")


def test_a_call_never_transferred_says_so(client, agent):
    call = make_call(agent, status=CallStatus.COMPLETED)
    client.force_login(make_staff("viewer", "view_call"))
    page = page_of(client, call)
    assert "Not transferred" in page
    assert "<dd>None</dd>" not in page


# --- the call list --------------------------------------------------------------------------


def test_the_call_list_shows_people_and_outcomes_not_sids(client, agent):
    call = make_call(agent, status=CallStatus.COMPLETED, end_reason=EndReason.AGENT_ENDED)
    client.force_login(make_staff("viewer", "view_call"))
    page = client.get(CHANGELIST).content.decode()
    for column in ("column-caller", "column-agent_name", "column-started", "column-duration"):
        assert column in page
    assert "column-sid" not in page and f">{call.sid}<" not in page
    assert "Agent said goodbye" in page and "+14155550123" in page


# --- no deleting calls ----------------------------------------------------------------------


def test_not_even_a_superuser_can_delete_a_call_or_its_log(client, agent):
    call = make_call(agent, status=CallStatus.COMPLETED)
    event = CallEvent.objects.create(call=call, kind="answered", actor="twilio")
    boss = User.objects.create_superuser("boss", password="a-long-test-password")
    client.force_login(boss)

    assert "delete_selected" not in client.get(CHANGELIST).content.decode()
    assert "delete_selected" not in client.get("/admin/calls/callevent/").content.decode()
    assert client.get(f"/admin/calls/call/{call.pk}/delete/").status_code == 403
    assert client.post(f"/admin/calls/call/{call.pk}/delete/", {"post": "yes"}).status_code == 403
    assert client.get(f"/admin/calls/callevent/{event.pk}/delete/").status_code == 403
    assert Call.objects.filter(pk=call.pk).exists()
    assert CallEvent.objects.filter(pk=event.pk).exists()
    assert f"/admin/calls/call/{call.pk}/delete/" not in page_of(client, call)


# --- one time zone, the staff member's ------------------------------------------------------


def finished_call(agent) -> Call:
    call = make_call(agent, status=CallStatus.COMPLETED)
    Call.objects.filter(pk=call.pk).update(created_at=NOON_UTC)
    CallEvent.objects.create(call=call, kind="answered", actor="twilio")
    CallEvent.objects.filter(call=call).update(created_at=NOON_UTC)
    call.refresh_from_db()
    return call


def test_a_calls_page_shows_times_in_the_staff_members_zone_and_says_which(
    client, agent, settings
):
    settings.TIME_ZONE = "UTC"
    call = finished_call(agent)
    viewer = make_staff("viewer", "view_call")
    StaffProfile.objects.create(user=viewer, time_zone="Asia/Tokyo")
    client.force_login(viewer)
    page = page_of(client, call)
    assert "2026-01-15 21:00:00" in page  # noon UTC is 9 pm in Tokyo
    assert "12:00:00" not in page
    assert "Asia/Tokyo (JST)" in page


def test_without_a_choice_times_are_in_the_servers_zone(client, agent, settings):
    settings.TIME_ZONE = "Europe/Paris"
    call = finished_call(agent)
    client.force_login(make_staff("viewer", "view_call"))
    page = page_of(client, call)
    assert "2026-01-15 13:00:00" in page
    assert "Europe/Paris (CET)" in page


def test_staff_choose_their_zone_on_a_page_linked_from_the_header(client):
    viewer = make_staff("viewer", "view_call")
    client.force_login(viewer)
    assert 'href="/admin/profile/"' in client.get("/admin/").content.decode()

    response = client.post("/admin/profile/", {"time_zone": "America/New_York"}, follow=True)
    assert "America/New_York" in response.content.decode()
    assert StaffProfile.objects.get(user=viewer).time_zone == "America/New_York"
    assert client.post("/admin/profile/", {"time_zone": "Mars/Olympus"}).status_code == 200
    assert StaffProfile.objects.get(user=viewer).time_zone == "America/New_York"


def test_the_call_list_shows_start_times_in_the_staff_members_zone(client, agent):
    finished_call(agent)
    viewer = make_staff("viewer", "view_call")
    StaffProfile.objects.create(user=viewer, time_zone="Asia/Tokyo")
    client.force_login(viewer)
    assert "2026-01-15 21:00:00" in client.get(CHANGELIST).content.decode()
