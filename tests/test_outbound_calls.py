"""Placing calls: Twilio's REST create, with our answer webhook and status callbacks."""

import threading
import time

import pytest
from asgiref.sync import sync_to_async
from django.core.management import CommandError, call_command
from django.db import connection, transaction

from calls import services
from calls.models import Call, Direction
from calls.simulator.rest import TwilioRestEmulator

from .twilio_helpers import ACCOUNT_SID, incoming_params, new_call_sid, signed_post

pytestmark = pytest.mark.django_db(transaction=True)
on_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="needs DATABASE_URL pointing at PostgreSQL"
)


@pytest.fixture
async def rest(settings):
    async with TwilioRestEmulator() as emulator:
        settings.TWILIO_API_BASE_URL = emulator.base_url
        yield emulator


async def place(agent, number: str) -> Call:
    return await services.call_place_outbound(agent=agent, to_number=number)


@sync_to_async
def events_of(call: Call) -> list[str]:
    return list(call.events.values_list("kind", flat=True))


async def test_it_places_a_call_that_fetches_our_answer_webhook(agent, rest):
    call = await place(agent, "+1 415 555 0177")
    [create] = rest.creates()
    assert create.form["To"] == "+14155550177"
    assert create.form["From"] == "+14155550100"
    assert create.form["Url"] == "https://voicebot.example.com/twilio/voice/incoming"
    assert create.form["StatusCallback"] == "https://voicebot.example.com/twilio/voice/status"
    assert call.direction == Direction.OUTBOUND
    assert call.agent_id == agent.id
    assert (call.to_number, call.status) == ("+14155550177", "queued")
    assert "outbound_placed" in await events_of(call)


async def test_when_answered_the_call_streams_to_the_agent_that_placed_it(client, agent, rest):
    call = await place(agent, "+14155550177")
    params = incoming_params(call.sid, "+14155550177", from_number="+14155550100")
    params["Direction"] = "outbound-api"
    response = await sync_to_async(signed_post)(client, "/twilio/voice/incoming", params)
    assert b"<Stream" in response.content
    assert (await Call.objects.aget(sid=call.sid)).agent_id == agent.id


def waiting_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


@on_postgresql
def test_the_answer_webhook_racing_the_record_of_a_placed_call_answers_it(agent):
    """Twilio may fetch a placed call's TwiML while the process that placed it is still
    recording it (it can only once Twilio has given the call's sid): the webhook must answer
    that call, not fail on the row the other transaction is inserting."""
    sid = new_call_sid()
    inserted, release = threading.Event(), threading.Event()
    answered: dict = {}

    def record_placed_call() -> None:
        try:
            with transaction.atomic():
                Call.objects.create(
                    sid=sid,
                    account_sid=ACCOUNT_SID,
                    direction=Direction.OUTBOUND,
                    from_number="+14155550100",
                    to_number="+14155550177",
                    agent=agent,
                )
                inserted.set()
                release.wait(10)
        finally:
            connection.close()

    def answer() -> None:
        try:
            answered["twiml"] = services.call_answer(
                call_sid=sid,
                account_sid=ACCOUNT_SID,
                from_number="+14155550100",
                to_number="+14155550177",
                direction="outbound-api",
                status="in-progress",
            )
        except Exception as error:
            answered["error"] = error
        finally:
            connection.close()

    placer = threading.Thread(target=record_placed_call)
    placer.start()
    assert inserted.wait(10)
    webhook = threading.Thread(target=answer)
    webhook.start()
    # The webhook's insert of the same sid waits for the placing transaction to end.
    deadline = time.monotonic() + 10
    while not waiting_on_a_lock() and webhook.is_alive():
        assert time.monotonic() < deadline, "the webhook never waited for the placed call"
        time.sleep(0.01)
    release.set()
    placer.join(10)
    webhook.join(10)
    assert "error" not in answered, repr(answered.get("error"))
    assert "<Stream" in answered["twiml"]
    call = Call.objects.get(sid=sid)
    assert (call.direction, call.agent_id) == (Direction.OUTBOUND, agent.id)


@pytest.mark.parametrize("number", ["12345", "+1415555", "call me maybe"])
async def test_a_bad_number_is_refused_before_calling_twilio(agent, rest, number):
    with pytest.raises(services.CallControlError, match="phone number"):
        await place(agent, number)
    assert rest.requests == []


async def test_a_twilio_refusal_is_reported_in_words(agent, rest):
    rest.fail_next("Calls.json", status=400, code=21215, message="Geo permission denied")
    with pytest.raises(services.CallControlError, match="Geo permission denied"):
        await place(agent, "+14155550177")
    assert not await Call.objects.aexists()


async def test_the_place_call_command_uses_the_default_agent(agent, rest, capsys):
    agent.is_default = True
    await agent.asave()
    await sync_to_async(call_command)("place_call", "+14155550177")
    assert "Placed CA" in capsys.readouterr().out
    assert rest.creates()[0].form["To"] == "+14155550177"


async def test_the_place_call_command_explains_a_missing_agent(agent, rest):
    with pytest.raises(CommandError, match="No active agent nobody; active agents: Front desk"):
        await sync_to_async(call_command)("place_call", "+14155550177", agent="nobody")
