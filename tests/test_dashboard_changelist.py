"""The call changelist's actions: hang up the selected calls, export their transcripts."""

import csv
import io

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME

from calls import telephony
from calls.models import CallEvent, CallStatus, TranscriptEntry

from .dashboard_helpers import make_call, make_staff

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "/admin/calls/call/"


@pytest.fixture
def completed(monkeypatch) -> list[str]:
    hung_up: list[str] = []

    async def call_complete(call_sid: str) -> bool:
        hung_up.append(call_sid)
        return True

    monkeypatch.setattr(telephony, "call_complete", call_complete)
    return hung_up


def run_action(client, action: str, calls, **extra):
    data = {"action": action, ACTION_CHECKBOX_NAME: [str(call.pk) for call in calls]}
    return client.post(CHANGELIST, data, **extra)


def test_hang_up_is_offered_only_to_staff_who_may_hang_up(client, agent):
    make_call(agent)
    client.force_login(make_staff("viewer", "view_call"))
    page = client.get(CHANGELIST).content.decode()
    assert "export_transcripts" in page
    assert "hang_up_selected" not in page
    client.force_login(make_staff("operator", "view_call", "hangup_call"))
    assert "hang_up_selected" in client.get(CHANGELIST).content.decode()


def test_view_only_staff_cannot_hang_up_by_posting_the_action(client, agent, completed):
    call = make_call(agent)
    client.force_login(make_staff("viewer", "view_call"))
    run_action(client, "hang_up_selected", [call])
    assert completed == []


def test_it_hangs_up_the_selected_live_calls(client, agent, completed):
    first, second = make_call(agent), make_call(agent)
    over = make_call(agent, status=CallStatus.COMPLETED)
    client.force_login(make_staff("operator", "view_call", "hangup_call"))
    response = run_action(client, "hang_up_selected", [first, second, over], follow=True)
    assert sorted(completed) == sorted([first.sid, second.sid])
    assert "Hung up 2 of the 3 selected calls. 1 was already over." in response.content.decode()
    users = CallEvent.objects.filter(kind="hangup").values_list("user__username", flat=True)
    assert list(users) == ["operator", "operator"]


def test_a_failed_hang_up_is_reported(client, agent, monkeypatch):
    call = make_call(agent)

    async def call_complete(call_sid: str) -> bool:
        raise telephony.TelephonyError("Twilio could not be reached: timed out")

    monkeypatch.setattr(telephony, "call_complete", call_complete)
    client.force_login(make_staff("operator", "view_call", "hangup_call"))
    response = run_action(client, "hang_up_selected", [call], follow=True)
    page = response.content.decode()
    assert "Hang-up failed: Twilio could not be reached: timed out" in page


def test_it_exports_the_selected_calls_transcripts_as_csv(client, agent):
    call, other = make_call(agent), make_call(agent)
    TranscriptEntry.objects.create(call=call, speaker="caller", text="Hi, it's me", offset_ms=2500)
    TranscriptEntry.objects.create(
        call=call, speaker="agent", text="Hello!", offset_ms=300, interrupted=True, heard_ms=250
    )
    TranscriptEntry.objects.create(call=other, speaker="caller", text="Not exported", offset_ms=1)
    client.force_login(make_staff("viewer", "view_call"))
    response = run_action(client, "export_transcripts", [call])
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="transcripts-')
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [(r["speaker"], r["text"], r["offset_ms"]) for r in rows] == [
        ("agent", "Hello!", "300"),
        ("caller", "Hi, it's me", "2500"),
    ]
    assert rows[0]["interrupted"] == "yes" and rows[0]["heard_ms"] == "250"
    assert rows[1]["interrupted"] == "no" and rows[1]["heard_ms"] == ""
    assert {r["call_sid"] for r in rows} == {call.sid}
    assert rows[0]["from"] == "+14155550123" and rows[0]["agent"] == "Front desk"


def test_the_export_defuses_spreadsheet_formulas_in_what_callers_said(client, agent):
    call = make_call(agent, from_number="=HYPERLINK(1)")
    TranscriptEntry.objects.create(
        call=call, speaker="caller", text='=HYPERLINK("http://x")', offset_ms=1
    )
    client.force_login(make_staff("viewer", "view_call"))
    [row] = csv.DictReader(io.StringIO(run_action(client, "export_transcripts", [call]).text))
    assert row["text"] == '\'=HYPERLINK("http://x")'
    assert row["from"] == "'=HYPERLINK(1)"
    assert row["to"] == "+14155550100"  # a phone number is left as it is
