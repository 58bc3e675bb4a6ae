"""The staff console's pages: the live view, a call's page, and how they are reached."""

import re
from pathlib import Path

import pytest
from django import forms
from django.conf import settings
from django.utils import timezone

from calls.forms import SayForm
from calls.labels import SPEAKING_LABELS
from calls.models import (
    CallEvent,
    CallStatus,
    Direction,
    EndReason,
    MediaStream,
    Speaker,
    TranscriptEntry,
)

from .dashboard_helpers import ACTION_PERMISSIONS, make_call, make_staff

pytestmark = pytest.mark.django_db

LIVE = "/admin/calls/call/live/"
BUTTONS = {
    "hangup": 'class="button live-hangup"',
    "clear": 'class="button live-clear"',
    "transfer": '<form class="live-transfer">',
    "say": '<form class="live-say">',
}


def test_the_live_view_is_linked_from_the_admin_index_and_the_changelist(client):
    client.force_login(make_staff("viewer", "view_call"))
    assert f'href="{LIVE}"' in client.get("/admin/").content.decode()
    assert f'href="{LIVE}"' in client.get("/admin/calls/call/").content.decode()


def test_the_index_links_call_out_only_for_staff_who_may_place_calls(client):
    client.force_login(make_staff("viewer", "view_call"))
    assert "/admin/calls/call/place/" not in client.get("/admin/").content.decode()
    client.force_login(make_staff("caller", "view_call", "place_call"))
    assert 'href="/admin/calls/call/place/"' in client.get("/admin/").content.decode()


def test_the_live_view_sends_anonymous_visitors_to_log_in(client):
    response = client.get(LIVE)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_the_live_view_needs_the_view_permission(client):
    client.force_login(make_staff("nobody"))
    assert client.get(LIVE).status_code == 403


def test_view_only_staff_get_no_action_buttons(client):
    client.force_login(make_staff("viewer", "view_call"))
    response = client.get(LIVE)
    assert response.status_code == 200
    page = response.content.decode()
    for button in BUTTONS.values():
        assert button not in page
    assert "live-actions" not in page
    assert response.context["config"]["can"] == dict.fromkeys(
        ["hangup", "clear", "transfer", "say"], False
    )


def test_staff_get_only_the_buttons_they_may_use(client):
    client.force_login(make_staff("hanger", "view_call", "hangup_call"))
    page = client.get(LIVE).content.decode()
    assert [action for action, button in BUTTONS.items() if button in page] == ["hangup"]


def test_the_live_page_tells_its_script_where_to_connect_and_act(client):
    client.force_login(make_staff("operator", "view_call", *ACTION_PERMISSIONS))
    response = client.get(LIVE)
    config = response.context["config"]
    assert config["socketPath"] == "/ws/calls/live"
    assert config["urls"]["hangup"] == f"/admin/calls/call/{config['placeholder']}/hangup/"
    assert config["urls"]["detail"] == f"/admin/calls/call/{config['placeholder']}/change/"
    assert all(config["can"].values())
    page = response.content.decode()
    assert 'id="live-config"' in page
    assert "csrfmiddlewaretoken" in page
    assert "calls/live.js" in page


# --- a call's page --------------------------------------------------------------------------


@pytest.fixture
def finished_call(agent):
    operator = make_staff("alice", "view_call", "transfer_call")
    call = make_call(
        agent,
        status=CallStatus.COMPLETED,
        ended_at=timezone.now(),
        duration_seconds=75,
        end_reason=EndReason.TRANSFERRED,
        transfer_target=agent.transfer_targets.get(),
        transferred_to="+14155550199",
    )
    TranscriptEntry.objects.create(call=call, speaker="agent", text="Hello there!", offset_ms=400)
    TranscriptEntry.objects.create(
        call=call,
        speaker="agent",
        text="Our opening hours are nine to five on weekdays",
        offset_ms=5200,
        interrupted=True,
        heard_ms=1300,
    )
    TranscriptEntry.objects.create(
        call=call, speaker="caller", text="A person, please", offset_ms=4100
    )
    CallEvent.objects.create(call=call, kind="answered", actor="twilio", data={"agent": agent.name})
    CallEvent.objects.create(
        call=call,
        kind="transfer",
        actor="staff",
        user=operator,
        data={"target": "reception", "number": "+14155550199"},
    )
    MediaStream.objects.create(
        call=call,
        sid="MZ" + "a" * 32,
        status="stopped",
        frames_in=3750,
        frames_out=1234,
        marks_sent=7,
        marks_received=6,
        clears=2,
        bad_messages=1,
    )
    return call


def test_a_calls_page_shows_the_transcript_with_speakers_and_offsets(client, finished_call):
    client.force_login(make_staff("viewer", "view_call"))
    response = client.get(f"/admin/calls/call/{finished_call.pk}/change/")
    assert response.status_code == 200
    page = response.content.decode()
    # In the order they were spoken, not the order they were written.
    assert page.index("Hello there!") < page.index("A person, please") < page.index("opening hours")
    assert "0:00.4" in page and "0:04.1" in page and "0:05.2" in page
    assert 'data-speaker="caller"' in page and 'data-speaker="agent"' in page
    assert "Interrupted: caller heard 1.3 s" in page


def test_a_calls_page_shows_who_did_what_when(client, finished_call):
    client.force_login(make_staff("viewer", "view_call"))
    page = client.get(f"/admin/calls/call/{finished_call.pk}/change/").content.decode()
    assert "staff alice" in page
    assert "Transfer" in page and "target: reception" in page
    assert "Twilio" in page and "Answered" in page


def test_a_calls_page_shows_stream_stats_and_the_transfer(client, finished_call):
    client.force_login(make_staff("viewer", "view_call"))
    response = client.get(f"/admin/calls/call/{finished_call.pk}/change/")
    page = response.content.decode()
    for number in ("3750", "1234", ">7<", ">6<", ">2<", ">1<"):
        assert number in page
    assert "To reception (+14155550199)" in page
    assert "1:15" in page  # the duration
    assert "Steer this call" not in page  # it is over


def test_a_live_calls_page_offers_the_actions_the_user_may_take(client, agent):
    call = make_call(agent)
    client.force_login(make_staff("operator", "view_call", "clear_audio", "transfer_call"))
    page = client.get(f"/admin/calls/call/{call.pk}/change/").content.decode()
    assert "Steer this call" in page
    assert f"/admin/calls/call/{call.pk}/clear/" in page
    assert f"/admin/calls/call/{call.pk}/transfer/" in page
    assert '<option value="reception" selected>' in page
    assert f"/admin/calls/call/{call.pk}/hangup/" not in page
    assert f"/admin/calls/call/{call.pk}/say/" not in page


def test_a_live_calls_page_shows_view_only_staff_no_actions(client, agent):
    call = make_call(agent)
    client.force_login(make_staff("viewer", "view_call"))
    page = client.get(f"/admin/calls/call/{call.pk}/change/").content.decode()
    assert "Steer this call" not in page
    assert "/hangup/" not in page


def test_a_calls_page_needs_the_view_permission(client, agent):
    call = make_call(agent)
    client.force_login(make_staff("nobody"))
    assert client.get(f"/admin/calls/call/{call.pk}/change/").status_code == 403


def test_an_unknown_call_is_not_found(client):
    client.force_login(make_staff("viewer", "view_call"))
    assert client.get("/admin/calls/call/not-a-uuid/change/").status_code == 404


# --- the words and limits come from the server ----------------------------------------------


def test_the_live_script_carries_no_words_of_its_own():
    """The feed's messages and the page's config bring the labels; live.js has no copies."""
    script = (Path(settings.BASE_DIR) / "calls/static/calls/live.js").read_text().lower()
    words = [
        *CallStatus.labels,
        *EndReason.labels,
        *Direction.labels,
        *Speaker.labels,
        *SPEAKING_LABELS.values(),
        "Click again to hang up",
        "Hanging up…",
    ]
    quoted = re.compile("|".join(rf"[\"'`]{re.escape(word.lower())}[\"'`]" for word in words))
    assert quoted.findall(script) == []
    assert [word for word in words if " " in word and word.lower() in script] == []
    assert "maxlength" not in script


def test_both_pages_render_the_action_forms_from_the_django_forms(client, agent, monkeypatch):
    text = forms.CharField(
        max_length=123, widget=forms.TextInput(attrs={"placeholder": "Words for the agent"})
    )
    monkeypatch.setitem(SayForm.base_fields, "text", text)
    expected = str(SayForm(auto_id=False)["text"])
    assert 'maxlength="123"' in expected
    client.force_login(make_staff("operator", "view_call", *ACTION_PERMISSIONS))
    call = make_call(agent)
    for url in (LIVE, f"/admin/calls/call/{call.pk}/change/"):
        response = client.get(url)
        assert "admin/calls/call/call_actions.html" in [t.name for t in response.templates]
        page = response.content.decode()
        assert expected in page
        assert 'maxlength="500"' not in page
