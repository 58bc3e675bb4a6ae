"""Placing calls: Twilio's REST create, with our answer webhook and status callbacks."""

import pytest
from asgiref.sync import sync_to_async
from django.core.management import CommandError, call_command

from calls import services
from calls.models import Call, Direction
from calls.simulator.rest import TwilioRestEmulator

from .twilio_helpers import incoming_params, signed_post

pytestmark = pytest.mark.django_db(transaction=True)


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
