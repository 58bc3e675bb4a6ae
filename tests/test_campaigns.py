"""Campaigns: CSV import, prompt variables, calling hours, claims, and the staff actions."""

from datetime import UTC, datetime, time, timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone

from agents.prompt import prompt_fill
from calls.models import Call, CallStatus, EndReason
from calls.services import HANG_UP_RECORD_WAIT_S
from campaigns import dialler, services
from campaigns.hours import within_calling_hours
from campaigns.models import (
    Campaign,
    CampaignEvent,
    CampaignStatus,
    Contact,
    ContactState,
    DoNotCall,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def campaign(agent) -> Campaign:
    agent.greeting = "Hello {first_name}, about your {appointment}."
    agent.save()
    return Campaign.objects.create(name="Reminders", agent=agent, max_concurrent_calls=2)


def test_a_csv_with_bad_rows_imports_nothing_and_names_each_line(campaign):
    data = (
        "phone_number,first_name\n"
        "+14155550101,Ada\n"
        "4155550102,Bob\n"  # not international
        "+1415555,Cy\n"  # too short
        "+14155550101,Ada again\n"  # a duplicate
        "+14155550105\n"  # a missing column
        "+442079460123,Eve\n"
    )
    with pytest.raises(services.CampaignImportError) as raised:
        services.campaign_import_csv(campaign=campaign, data=data)
    errors = raised.value.errors
    assert [error.split(":")[0] for error in errors] == ["Line 3", "Line 4", "Line 5", "Line 6"]
    assert "already on line 2" in errors[2]
    assert not Contact.objects.exists()


def test_a_good_csv_is_imported_with_variables_and_time_zones(campaign):
    data = "Phone Number,First Name\n+1 415 555 0101,Ada\n\n+442079460123,Eve\n"
    result = services.campaign_import_csv(campaign=campaign, data=data.encode())
    assert result.imported == 2
    assert result.unknown_variables == ["appointment"]  # flagged: no column for it
    ada, eve = Contact.objects.order_by("line")
    assert (ada.phone_number, ada.variables, ada.timezones) == (
        "+14155550101",
        {"first_name": "Ada"},
        ["America/Los_Angeles"],
    )
    assert (eve.line, eve.timezones) == (4, ["Europe/London"])
    assert CampaignEvent.objects.get(kind="imported").data["contacts"] == 2


def test_variables_are_substituted_safely_and_unknown_ones_left_visible():
    text = "Hi {first_name}! {missing} {first_name.__class__} {0} {{literal}}"
    filled, missing = prompt_fill(text, {"first_name": "Ada {evil}"})
    assert filled == "Hi Ada {evil}! {missing} {first_name.__class__} {0} {literal}"
    assert missing == {"missing"}


@pytest.mark.parametrize(
    ("start", "end", "utc", "expected"),
    [
        (time(9), time(17), datetime(2025, 1, 15, 17, 0, tzinfo=UTC), True),  # 09:00 in LA
        (time(9), time(17), datetime(2025, 1, 15, 16, 59, tzinfo=UTC), False),  # 08:59
        (time(9), time(17), datetime(2025, 1, 16, 1, 0, tzinfo=UTC), False),  # 17:00
        (time(22), time(2), datetime(2025, 1, 15, 7, 0, tzinfo=UTC), True),  # 23:00, overnight
    ],
)
def test_calling_hours_are_the_callees_local_time(start, end, utc, expected):
    zones = ["America/Los_Angeles"]
    assert (
        within_calling_hours(timezones=zones, fallback="UTC", start=start, end=end, now=utc)
        is expected
    )


def _started(campaign: Campaign, numbers: list[str]) -> None:
    rows = "phone_number\n" + "\n".join(numbers)
    services.campaign_import_csv(campaign=campaign, data=rows)
    services.campaign_transition(campaign_id=campaign.pk, action="start")
    campaign.calling_hours_start, campaign.calling_hours_end = time(0), time(0)  # all day
    Campaign.objects.filter(pk=campaign.pk).update(
        calling_hours_start=time(0), calling_hours_end=time(23, 59, 59)
    )


def test_claims_never_exceed_the_limit_and_skip_do_not_call_numbers(campaign):
    numbers = [f"+1415555{100 + i:04d}" for i in range(6)]
    DoNotCall.objects.create(phone_number=numbers[0])
    _started(campaign, numbers)
    first = dialler.contacts_claim(campaign_id=campaign.pk, holder="a")
    second = dialler.contacts_claim(campaign_id=campaign.pk, holder="b")
    assert [claim.phone_number for claim in first] == numbers[1:3]
    assert second == []  # two dialling already: the limit
    assert Contact.objects.get(phone_number=numbers[0]).outcome == "do_not_call"


def test_a_failed_placement_is_settled_and_frees_its_slot(campaign):
    _started(campaign, [f"+1415555{100 + i:04d}" for i in range(3)])
    [one, _] = dialler.contacts_claim(campaign_id=campaign.pk, holder="a")
    dialler.contact_place_failed(contact_id=one.contact_id, error="Geo permission denied")
    assert Contact.objects.get(pk=one.contact_id).outcome == "failed"
    [third] = dialler.contacts_claim(campaign_id=campaign.pk, holder="b")
    assert third.phone_number == "+14155550102"


def _hung_up_on_a_machine(campaign: Campaign, now: datetime) -> int:
    """A contact's call that ended by our hang-up, whose reason is not recorded yet."""
    _started(campaign, ["+14155550101"])
    [claim] = dialler.contacts_claim(campaign_id=campaign.pk, holder="a")
    call = Call.objects.create(
        sid="CA" + "1" * 32,
        agent=campaign.agent,
        direction="outbound-api",
        status=CallStatus.COMPLETED,
        answered_by="machine_end_beep",
        hangup_requested_at=now,
        ended_at=now,
    )
    dialler.contact_call_record(contact_id=claim.contact_id, call_id=call.pk)
    return claim.contact_id


def test_a_call_ended_by_our_own_hang_up_is_settled_with_the_hang_ups_reason(campaign):
    # Twilio's "completed" for our hang-up can land before the hang-up records why it hung
    # up (a voicemail left): the contact waits for that reason, not "answering machine".
    now = timezone.now()
    contact_id = _hung_up_on_a_machine(campaign, now)
    assert dialler.contacts_settle(now=now) == 0
    assert Contact.objects.get(pk=contact_id).state == ContactState.DIALLING
    Call.objects.update(end_reason=EndReason.VOICEMAIL)
    assert dialler.contacts_settle(now=now) == 1
    assert Contact.objects.get(pk=contact_id).outcome == "voicemail"


def test_a_hang_up_that_never_recorded_its_reason_is_settled_after_a_while(campaign):
    # The process hanging up died before it could record why: the call is settled anyway.
    now = timezone.now()
    contact_id = _hung_up_on_a_machine(campaign, now)
    assert dialler.contacts_settle(now=now + timedelta(seconds=5)) == 0
    later = now + timedelta(seconds=HANG_UP_RECORD_WAIT_S + 1)
    assert dialler.contacts_settle(now=later) == 1
    assert Contact.objects.get(pk=contact_id).outcome == "machine"


def test_start_pause_resume_cancel_need_the_permission_and_are_audited(client, campaign):
    services.campaign_import_csv(campaign=campaign, data="phone_number\n+14155550101\n")
    user = User.objects.create(username="op", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(codename__in=["view_campaign", "change_campaign"])
    )
    client.force_login(user)
    url = reverse("admin:campaign_action", args=[campaign.pk, "start"])
    assert client.post(url).status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="run_campaign"))
    user = User.objects.get(pk=user.pk)
    client.force_login(user)
    for action, status in [
        ("start", "running"),
        ("pause", "paused"),
        ("resume", "running"),
        ("cancel", "cancelled"),
    ]:
        response = client.post(reverse("admin:campaign_action", args=[campaign.pk, action]))
        assert response.status_code == 302
        assert Campaign.objects.get(pk=campaign.pk).status == status
    assert list(CampaignEvent.objects.values_list("kind", "user__username"))[1:] == [
        ("start", "op"),
        ("pause", "op"),
        ("resume", "op"),
        ("cancel", "op"),
    ]
    assert Contact.objects.get().outcome == "cancelled"
    progress = client.get(reverse("admin:campaign_progress", args=[campaign.pk])).json()
    assert progress["status"] == CampaignStatus.CANCELLED and progress["total"] == 1
    page = client.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))
    assert b"campaign-progress" in page.content


def test_the_upload_reports_bad_rows_by_line(client, admin_user, campaign):
    from django.core.files.uploadedfile import SimpleUploadedFile

    client.force_login(admin_user)
    upload = SimpleUploadedFile("c.csv", b"phone_number\n+14155550101\nnope\n")
    response = client.post(
        reverse("admin:campaign_upload", args=[campaign.pk]), {"contacts": upload}, follow=True
    )
    text = response.content.decode()
    assert "Line 3" in text and "Nothing was imported" in text
    assert not Contact.objects.exists()


