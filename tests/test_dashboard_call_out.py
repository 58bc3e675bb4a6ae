"""Call out: staff with the place_call permission have an agent call a number."""

import pytest

from calls import telephony
from calls.models import Call, CallEvent

from .dashboard_helpers import make_staff

pytestmark = pytest.mark.django_db(transaction=True)

PLACE = "/admin/calls/call/place/"


@pytest.fixture
def twilio(monkeypatch) -> list[dict]:
    created: list[dict] = []

    async def call_create(**params) -> str:
        created.append(params)
        return "CA" + "9" * 32

    monkeypatch.setattr(telephony, "call_create", call_create)
    return created


@pytest.fixture
def caller(client):
    client.force_login(make_staff("operator", "view_call", "place_call"))
    return client


def test_call_out_needs_its_own_permission(client, agent, twilio):
    client.force_login(make_staff("viewer", "view_call", "hangup_call"))
    assert client.get(PLACE).status_code == 403
    response = client.post(PLACE, {"agent": agent.pk, "to_number": "+14155550111"})
    assert response.status_code == 403
    assert twilio == []


def test_call_out_needs_view_call_as_well(client, agent, twilio):
    client.force_login(make_staff("blind", "place_call"))
    assert client.get(PLACE).status_code == 403
    response = client.post(PLACE, {"agent": agent.pk, "to_number": "+14155550111"})
    assert response.status_code == 403
    assert twilio == []


def test_the_form_offers_active_agents_that_have_a_number(caller, agent):
    agent.__class__.objects.create(name="No number")
    agent.__class__.objects.create(name="Retired", phone_number="+14155550142", is_active=False)
    page = caller.get(PLACE).content.decode()
    assert "Front desk" in page
    assert "No number" not in page and "Retired" not in page


def test_it_places_the_call_and_logs_who_asked(caller, agent, twilio):
    form = {"agent": agent.pk, "to_number": " +1 415 555 0111 "}
    response = caller.post(PLACE, form, follow=True)
    assert response.redirect_chain == [("/admin/calls/call/live/", 302)]
    assert "Front desk is calling +14155550111" in response.content.decode()
    [params] = twilio
    assert (params["to"], params["from_"]) == ("+14155550111", "+14155550100")
    call = Call.objects.get(sid="CA" + "9" * 32)
    assert (call.direction, call.to_number, call.agent) == ("outbound", "+14155550111", agent)
    event = CallEvent.objects.get(call=call, kind="outbound_placed")
    assert (event.actor, event.user.username) == ("staff", "operator")


@pytest.mark.parametrize(
    ("number", "error"),
    [
        ("", "This field is required."),
        ("call me", "is not a phone number; use E.164, e.g. +14155550100."),
        ("+1415", "is not a valid phone number."),
    ],
)
def test_a_bad_number_is_shown_beside_the_field(caller, agent, twilio, number, error):
    response = caller.post(PLACE, {"agent": agent.pk, "to_number": number})
    assert response.status_code == 200
    errors = response.context["form"].errors["to_number"]
    assert len(errors) == 1 and error in errors[0]
    assert 'class="form-row errors field-to_number"' in response.content.decode()
    assert twilio == []


def test_twilios_refusal_is_shown_on_the_form(caller, agent, monkeypatch):
    async def call_create(**params) -> str:
        raise telephony.TelephonyError("Twilio error 21215: Geo permission denied", status=400)

    monkeypatch.setattr(telephony, "call_create", call_create)
    response = caller.post(PLACE, {"agent": agent.pk, "to_number": "+14155550111"})
    assert response.status_code == 200
    page = response.content.decode()
    assert "Twilio did not place the call: Twilio error 21215: Geo permission denied" in page
    assert not Call.objects.exists()
