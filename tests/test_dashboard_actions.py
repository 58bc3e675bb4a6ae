"""Staff actions on a live call: each checks its own permission and CSRF, calls the service,
reports the outcome in words and is written to the call's log with the staff user."""

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient, Client

from calls import telephony
from calls.models import CallEvent, CallStatus, MediaStream

from .dashboard_helpers import StreamHolder, make_call, make_staff

pytestmark = pytest.mark.django_db(transaction=True)

JSON = {"HTTP_ACCEPT": "application/json"}
PERMISSIONS = {
    "hangup": "hangup_call",
    "clear": "clear_audio",
    "transfer": "transfer_call",
    "say": "say_on_call",
}
FORMS = {"hangup": {}, "clear": {}, "transfer": {"target": "reception"}, "say": {"text": "Hi"}}


@pytest.fixture
def twilio(monkeypatch) -> dict[str, list]:
    """Twilio's REST API as the services reach it, recording what was asked."""
    asked: dict[str, list] = {"complete": [], "twiml": []}

    async def call_complete(call_sid: str) -> bool:
        asked["complete"].append(call_sid)
        return True

    async def call_update_twiml(call_sid: str, twiml: str) -> None:
        asked["twiml"].append((call_sid, twiml))

    monkeypatch.setattr(telephony, "call_complete", call_complete)
    monkeypatch.setattr(telephony, "call_update_twiml", call_update_twiml)
    return asked


@pytest.fixture
def call(agent):
    return make_call(agent)


def post(client: Client, call, action: str, data: dict | None = None, **headers):
    url = f"/admin/calls/call/{call.pk}/{action}/"
    return client.post(url, FORMS[action] if data is None else data, **headers)


def logged_in(client: Client, *codenames: str) -> Client:
    client.force_login(make_staff("operator", "view_call", *codenames))
    return client


# The same, for actions that reach a call's stream: the stream's stand-in (StreamHolder)
# answers in the test's event loop, where the async client runs the view's service too.
JSON_HEADERS = {"Accept": "application/json"}


async def alogged_in(client: AsyncClient, *codenames: str) -> AsyncClient:
    user = await sync_to_async(make_staff)("operator", "view_call", *codenames)
    await client.aforce_login(user)
    return client


async def apost(client: AsyncClient, call, action: str, data: dict | None = None, **kwargs):
    url = f"/admin/calls/call/{call.pk}/{action}/"
    return await client.post(url, FORMS[action] if data is None else data, **kwargs)


@pytest.mark.parametrize("action", PERMISSIONS)
def test_an_action_is_refused_without_its_own_permission(client, call, twilio, action):
    others = [codename for name, codename in PERMISSIONS.items() if name != action]
    logged_in(client, *others, "place_call")
    response = post(client, call, action, **JSON)
    assert response.status_code == 403
    assert "permission" in response.json()["message"]
    assert twilio == {"complete": [], "twiml": []}
    assert not CallEvent.objects.filter(call=call).exists()


@pytest.mark.parametrize("action", PERMISSIONS)
def test_an_action_needs_view_call_as_well_as_its_own_permission(client, call, twilio, action):
    client.force_login(make_staff("blind", *PERMISSIONS.values(), "place_call"))
    assert post(client, call, action, **JSON).status_code == 403
    assert post(client, call, action).status_code == 403
    assert twilio == {"complete": [], "twiml": []}
    assert not CallEvent.objects.filter(call=call).exists()


@pytest.mark.parametrize("action", PERMISSIONS)
def test_a_plain_form_post_without_the_permission_gets_403(client, call, action):
    logged_in(client)
    assert post(client, call, action).status_code == 403


@pytest.mark.parametrize("action", PERMISSIONS)
def test_an_action_needs_the_csrf_token(call, twilio, action):
    client = logged_in(Client(enforce_csrf_checks=True), PERMISSIONS[action])
    response = post(client, call, action, **JSON)
    assert response.status_code == 403
    assert not CallEvent.objects.filter(call=call).exists()


@pytest.mark.parametrize("action", PERMISSIONS)
def test_an_action_is_post_only(client, call, action):
    logged_in(client, PERMISSIONS[action])
    assert client.get(f"/admin/calls/call/{call.pk}/{action}/").status_code == 405


def test_anonymous_visitors_cannot_act(client, call, twilio):
    response = post(client, call, "hangup")
    assert response.status_code == 302
    assert twilio["complete"] == []


def test_hang_up_asks_twilio_and_logs_the_staff_user(client, call, twilio):
    logged_in(client, "hangup_call")
    response = post(client, call, "hangup", **JSON)
    assert response.status_code == 200
    assert response.json() == {"ok": True, "message": "Hung up."}
    assert twilio["complete"] == [call.sid]
    event = CallEvent.objects.get(call=call, kind="hangup")
    assert (event.actor, event.user.username) == ("staff", "operator")
    call.refresh_from_db()
    assert call.end_reason == "staff_hangup"


def test_a_second_hang_up_says_the_call_is_already_going(client, call, twilio):
    logged_in(client, "hangup_call")
    post(client, call, "hangup", **JSON)
    response = post(client, call, "hangup", **JSON)
    assert response.json() == {
        "ok": True,
        "message": "The call had already ended or was being hung up.",
    }
    assert twilio["complete"] == [call.sid]


def test_a_failed_hang_up_says_why(client, call, monkeypatch):
    async def call_complete(call_sid: str) -> bool:
        raise telephony.TelephonyError("Twilio error 20500: Internal Server Error", status=500)

    monkeypatch.setattr(telephony, "call_complete", call_complete)
    logged_in(client, "hangup_call")
    response = post(client, call, "hangup", **JSON)
    assert response.status_code == 409
    assert response.json() == {
        "ok": False,
        "message": "Hang-up failed: Twilio error 20500: Internal Server Error",
    }
    assert CallEvent.objects.filter(call=call, kind="hangup_failed").exists()


async def test_clear_reaches_the_calls_stream_consumer(async_client, call):
    await alogged_in(async_client, "clear_audio")
    async with StreamHolder(call) as holder:
        response = await apost(async_client, call, "clear", headers=JSON_HEADERS)
    assert response.json() == {"ok": True, "message": "Cleared the audio that was playing."}
    assert holder.without_reply_to() == [{"type": "call.clear", "actor": "staff"}]
    event = await CallEvent.objects.select_related("user").aget(call=call, kind="clear")
    assert event.user.username == "operator"


def test_transfer_dials_the_chosen_target(client, agent, call, twilio):
    agent.transfer_targets.create(name="sales", phone_number="+14155550177")
    logged_in(client, "transfer_call")
    response = post(client, call, "transfer", {"target": "sales"}, **JSON)
    assert response.json() == {"ok": True, "message": "Transferred to sales (+14155550177)."}
    [(call_sid, twiml)] = twilio["twiml"]
    assert call_sid == call.sid
    assert "<Dial" in twiml and "+14155550177" in twiml
    event = CallEvent.objects.get(call=call, kind="transfer")
    assert event.user.username == "operator"
    call.refresh_from_db()
    assert call.transferred_to == "+14155550177"


@pytest.mark.parametrize("set_on", ["target", "form"])
def test_staff_can_transfer_warm_with_a_reason_for_the_whisper(client, agent, call, twilio, set_on):
    agent.transfer_targets.create(
        name="sales", phone_number="+14155550177", mode="warm" if set_on == "target" else "cold"
    )
    logged_in(client, "transfer_call")
    data = {"target": "sales", "reason": "Asks about a bulk order"}
    if set_on == "form":
        data["mode"] = "warm"
    response = post(client, call, "transfer", data, **JSON)
    assert response.json()["ok"] is True
    assert "unless they accept" in response.json()["message"]
    [(_, twiml)] = twilio["twiml"]
    assert f"/twilio/voice/whisper?call={call.pk}" in twiml
    assert f"/twilio/voice/dial-result?call={call.pk}" in twiml
    event = CallEvent.objects.get(call=call, kind="transfer")
    assert (event.data["mode"], event.data["reason"]) == ("warm", "Asks about a bulk order")
    call.refresh_from_db()
    assert call.transferred_to == ""  # the person has not taken the call yet


def test_transfer_to_a_target_of_another_agent_is_refused_in_words(client, call, twilio):
    logged_in(client, "transfer_call")
    response = post(client, call, "transfer", {"target": "nobody"}, **JSON)
    assert response.status_code == 409
    assert response.json()["message"] == "This call's agent has no “nobody”."
    assert twilio["twiml"] == []


async def test_say_sends_the_sentence_to_the_agent(async_client, call):
    await alogged_in(async_client, "say_on_call")
    async with StreamHolder(call) as holder:
        data = {"text": "  One moment please.  "}
        response = await apost(async_client, call, "say", data, headers=JSON_HEADERS)
    assert response.json() == {"ok": True, "message": "The agent will say: “One moment please.”"}
    assert holder.without_reply_to() == [
        {
            "type": "call.say",
            "text": "One moment please.",
        }
    ]
    event = await CallEvent.objects.select_related("user").aget(call=call, kind="say")
    assert (event.user.username, event.data) == ("operator", {"text": "One moment please."})


def test_say_needs_something_to_say(client, call):
    logged_in(client, "say_on_call")
    response = post(client, call, "say", {"text": "   "}, **JSON)
    assert response.status_code == 409
    assert response.json()["message"] == "Type something for the agent to say."


def test_acting_on_an_ended_call_says_so(client, agent, twilio):
    ended = make_call(agent, status=CallStatus.COMPLETED)
    logged_in(client, "clear_audio")
    response = post(client, ended, "clear", **JSON)
    assert response.status_code == 409
    assert response.json()["message"] == "The call has already ended (Completed)."


async def test_a_plain_form_post_reports_through_the_admins_messages(async_client, call):
    await alogged_in(async_client, "clear_audio")
    page = f"/admin/calls/call/{call.pk}/change/"
    async with StreamHolder(call):
        response = await apost(async_client, call, "clear", {"next": page}, follow=True)
    assert response.redirect_chain == [(page, 302)]
    assert "Cleared the audio that was playing." in response.content.decode()


def test_a_plain_form_post_never_redirects_off_site(client, call):
    logged_in(client, "clear_audio")
    response = post(client, call, "clear", {"next": "https://evil.example.com/"})
    assert response["Location"] == f"/admin/calls/call/{call.pk}/change/"


@pytest.mark.parametrize(
    ("action", "words"),
    [
        ("clear", "This call has no live audio stream, so there is no audio to clear."),
        ("say", "This call has no live audio stream, so the agent cannot speak on it."),
    ],
)
def test_clear_or_say_on_a_call_with_no_stream_is_refused_in_words(client, call, action, words):
    logged_in(client, PERMISSIONS[action])
    response = post(client, call, action, **JSON)
    assert response.status_code == 409
    assert response.json() == {"ok": False, "message": words}


async def test_an_action_the_stream_never_confirms_says_so_and_is_logged(
    async_client, call, settings
):
    settings.CALL_CONTROL_REPLY_SECONDS = 0.3
    # By our records the stream is open, but no consumer holds it (its process is gone).
    await MediaStream.objects.acreate(call=call, sid="MZ" + "1" * 32)
    await alogged_in(async_client, "clear_audio", "say_on_call")
    response = await apost(async_client, call, "clear", headers=JSON_HEADERS)
    assert response.status_code == 504
    assert response.json() == {
        "ok": False,
        "message": "The call's stream did not answer; it may have ended.",
    }
    response = await apost(async_client, call, "say", headers=JSON_HEADERS)
    assert response.json()["message"] == "The call's stream did not answer; it may have ended."
    events = [e async for e in CallEvent.objects.filter(call=call).values_list("kind", "data")]
    assert [kind for kind, _ in events] == [
        "clear",
        "stream_unanswered",
        "say",
        "stream_unanswered",
    ]
    assert events[1][1]["action"] == "clear"


async def test_a_hang_up_the_stream_never_confirms_is_done_and_says_so(
    async_client, call, twilio, settings
):
    settings.CALL_CONTROL_REPLY_SECONDS = 0.3
    await MediaStream.objects.acreate(call=call, sid="MZ" + "2" * 32)
    await alogged_in(async_client, "hangup_call")
    response = await apost(async_client, call, "hangup", headers=JSON_HEADERS)
    assert response.status_code == 200
    assert response.json() == {
        "ok": True,
        "warning": True,
        "message": "Hung up. The call's stream did not answer; it may have ended.",
    }
    assert twilio["complete"] == [call.sid]


async def test_a_hang_up_is_confirmed_by_the_stream(async_client, call, twilio):
    await alogged_in(async_client, "hangup_call")
    async with StreamHolder(call) as holder:
        response = await apost(async_client, call, "hangup", headers=JSON_HEADERS)
    assert response.json() == {"ok": True, "message": "Hung up."}
    assert holder.without_reply_to() == [{"type": "call.close", "reason": "staff_hangup"}]
    assert holder.received[0]["reply_to"]  # a request: the stream answers on that channel
