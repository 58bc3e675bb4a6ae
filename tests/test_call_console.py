"""The manager's console: the analytics page's figures against calls with known answers,
the call list's search (PostgreSQL full text, SQLite substring), the outcome in the list,
the call's page and the CSV export."""

import csv
import io
from datetime import date, datetime

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db import connection

from agents.models import Agent
from calls import services
from calls.models import Call, CallAnalysis, CallStatus, Outcome, TranscriptEntry
from calls.services.search import transcript_matches

from .dashboard_helpers import make_call, make_staff

pytestmark = pytest.mark.django_db

ANALYTICS = "/admin/calls/call/analytics/"
CHANGELIST = "/admin/calls/call/"
on_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="needs DATABASE_URL pointing at PostgreSQL"
)


def seeded(agent: Agent | None, at: str, outcome: str = "", duration: int | None = None) -> Call:
    status = CallStatus.IN_PROGRESS if not outcome else CallStatus.COMPLETED
    if outcome == Outcome.NO_ANSWER:
        status = CallStatus.NO_ANSWER
    call = make_call(agent, status=status, outcome=outcome, duration_seconds=duration)
    Call.objects.filter(pk=call.pk).update(created_at=datetime.fromisoformat(at + "+00:00"))
    return call


@pytest.fixture
def week(agent) -> tuple[Agent, Agent]:
    """Calls in the week of Monday 2025-03-03 (UTC), with known figures; and two outside."""
    sales = Agent.objects.create(name="Sales", phone_number="+14155550111")
    seeded(agent, "2025-03-03T09:15", Outcome.RESOLVED, 60)
    seeded(agent, "2025-03-03T09:40", Outcome.RESOLVED, 120)
    seeded(agent, "2025-03-04T14:05", Outcome.TRANSFERRED, 300)
    seeded(agent, "2025-03-04T14:30", Outcome.TRANSFER_UNANSWERED, 30)
    failed = seeded(agent, "2025-03-05T23:59", Outcome.CALLER_HUNG_UP, 10)
    services.call_event_record(call=failed, kind="agent_error", actor="system", data={})
    services.call_event_record(call=failed, kind="agent_error", actor="system", data={})
    seeded(agent, "2025-03-05T10:00", Outcome.NO_ANSWER)
    seeded(agent, "2025-03-06T12:00")  # still live: a call, not yet a conversation
    seeded(sales, "2025-03-08T08:00", Outcome.RESOLVED, 40)
    seeded(sales, "2025-03-09T08:00", Outcome.VOICEMAIL, 20)
    seeded(agent, "2025-03-10T00:00", Outcome.RESOLVED, 999)  # the next week
    seeded(sales, "2025-03-02T23:59", Outcome.RESOLVED, 999)  # the week before
    return agent, sales


def test_the_figures_per_agent_and_in_all(week):
    front, sales = week
    figures = services.calls_analytics(start=date(2025, 3, 3), end=date(2025, 3, 9))
    by_name = {f.name: f for f in figures.agents}
    desk = by_name["Front desk"]
    assert (desk.calls, desk.conversations, desk.resolved) == (7, 5, 2)
    assert (desk.containment, desk.transfer_rate, desk.transfer_answer_rate) == (0.4, 0.4, 0.5)
    assert (desk.abandonment, desk.agent_failures) == (0.2, 1)
    assert (desk.median_seconds, desk.p90_seconds) == (60, 300)
    s = by_name["Sales"]
    assert (s.calls, s.conversations, s.containment, s.transfer_rate) == (2, 1, 1.0, 0.0)
    assert s.transfer_answer_rate is None
    assert (s.median_seconds, s.p90_seconds) == (20, 40)
    total = figures.total
    assert (total.calls, total.conversations, total.resolved, total.agent_failures) == (9, 6, 3, 1)
    assert (total.median_seconds, total.p90_seconds) == (40, 300)
    assert [n for _, n in figures.per_day] == [2, 2, 2, 1, 0, 1, 1]
    hours = figures.per_hour_of_week
    assert (hours[0][9], hours[1][14], hours[2][23], hours[2][10], hours[3][12]) == (2, 2, 1, 1, 1)
    assert (hours[5][8], hours[6][8]) == (1, 1)
    assert sum(map(sum, hours)) == 9

    only_sales = services.calls_analytics(
        start=date(2025, 3, 3), end=date(2025, 3, 9), agent_id=sales.pk
    )
    assert [f.name for f in only_sales.agents] == ["Sales"]
    assert only_sales.total.calls == 2


def test_the_page_shows_the_table_and_needs_view_call(client, week):
    client.force_login(make_staff("nobody"))
    assert client.get(ANALYTICS).status_code == 403
    client.force_login(make_staff("manager", "view_call"))
    page = client.get(ANALYTICS, {"start": "2025-03-03", "end": "2025-03-09"}).content.decode()
    assert "<td>Front desk</td><td>7</td><td>5</td>\n          <td>40.0 %</td>" in page
    assert "<th>All agents</th><th>9</th><th>6</th>" in page
    assert 'id="analytics-data"' in page
    assert "calls/vendor/chartjs/chart.umd.min.js" in page
    refused = client.get(ANALYTICS, {"start": "2025-03-09", "end": "2025-03-03"})
    assert "The end date is before the start date." in refused.content.decode()
    assert 'href="/admin/calls/call/analytics/"' in client.get(CHANGELIST).content.decode()


def _said(call: Call, text: str) -> None:
    TranscriptEntry.objects.create(call=call, speaker="caller", text=text, offset_ms=1)


def test_search_finds_calls_by_agent_name_and_by_words_said(client, week):
    front, sales = week
    booking = make_call(front)
    _said(booking, "I would like to change my booking for Friday")
    other = make_call(front)
    _said(other, "What time do you open?")
    client.force_login(make_staff("manager", "view_call"))

    def found(term: str) -> set[str]:
        result = client.get(CHANGELIST, {"q": term}).context["cl"].result_list
        return {call.sid for call in result}

    assert found("booking") == {booking.sid}
    assert found("Sales") == set(Call.objects.filter(agent=sales).values_list("sid", flat=True))
    assert found(booking.sid) == {booking.sid}


@on_postgresql
def test_on_postgresql_the_words_are_matched_by_full_text_with_the_index():
    agent = Agent.objects.create(name="Desk", phone_number="+14155550122")
    call = make_call(agent)
    _said(call, "I would like to change my bookings for Friday")
    matches = services.calls_search(calls=Call.objects.all(), term="booking friday")
    assert list(matches) == [call]  # stemmed: "bookings" matches "booking"
    assert not services.calls_search(calls=Call.objects.all(), term='"friday bookings"').exists()
    sql, params = transcript_matches(term="booking").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "transcript_text_search" in plan


def test_the_list_filters_by_outcome_and_the_page_and_export_show_it(client, agent):
    resolved = make_call(agent, status=CallStatus.COMPLETED, outcome=Outcome.RESOLVED)
    failed = make_call(
        agent,
        status=CallStatus.COMPLETED,
        outcome=Outcome.FAILED,
        outcome_detail="the agent failed: session_expired",
        duration_seconds=42,
    )
    _said(failed, "Hello?")
    CallAnalysis.objects.create(
        call=failed,
        status="done",
        source="model",
        summary="The model failed early.",
        fields={"reason": "billing", "follow_up_needed": True},
        run_after=failed.created_at,
    )
    client.force_login(make_staff("manager", "view_call"))
    listed = client.get(CHANGELIST, {"outcome__exact": "failed"}).context["cl"].result_list
    assert [c.sid for c in listed] == [failed.sid]
    assert resolved.sid not in {c.sid for c in listed}

    page = client.get(f"{CHANGELIST}{failed.pk}/change/").content.decode()
    assert "Failed: the agent failed: session_expired" in page
    assert "The model failed early." in page
    assert "<dt>follow up needed</dt><dd>true</dd>" in page

    data = {"action": "export_transcripts", ACTION_CHECKBOX_NAME: [str(failed.pk)]}
    [row] = csv.DictReader(io.StringIO(client.post(CHANGELIST, data).content.decode()))
    assert (row["outcome"], row["outcome_detail"]) == (
        "failed",
        "the agent failed: session_expired",
    )
    assert (row["duration_seconds"], row["summary"]) == ("42", "The model failed early.")
    assert (row["field:reason"], row["field:follow_up_needed"]) == ("billing", "true")
