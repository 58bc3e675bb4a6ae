"""A whole campaign: 50 numbers, mixed outcomes, 5 calls at once, two server processes.

Two daphne processes share the database (the suite's; PostgreSQL when DATABASE_URL points at
it) and a real redis-server, and each runs the dialler loop. Twilio and the phones are
`OutboundPhones` (it sees every call, so its count of calls up at once is the truth); the
model is the fake Realtime server. AMD verdicts go round-robin to either process, so most
reach the stream through Redis.
"""

import asyncio
from collections import Counter
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from asgiref.sync import sync_to_async

from agents.models import Agent, AnsweringMachine
from calls.models import CallEvent
from calls.simulator.outbound import BUSY, FAILED, NO_ANSWER, Answer, OutboundPhones
from campaigns import services
from campaigns.models import Campaign, Contact, ContactState, DoNotCall
from peers.realtime import FakeRealtimeServer, Reply

from .servers import daphne, logs_shown_on_failure

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]

LOS_ANGELES = ZoneInfo("America/Los_Angeles")
CONCURRENCY = 5


def la(n: int) -> str:
    return f"+1415555{100 + n:04d}"


def sydney(n: int) -> str:
    return f"+6125550{100 + n:04d}"


HUMAN = Answer("human", amd_delay_s=0.3, talk_s=1.0)
# A machine records until the server hangs up after the voicemail: `talk_s` is only the
# bound, kept well above the message's few seconds so a loaded machine does not cut it off.
MACHINE = Answer("machine", amd_delay_s=0.4, talk_s=20.0)
# 40 numbers in Los Angeles, in calling hours, with these answers; 5 of them... no: 5 more
# on the do-not-call list; 5 in Sydney, outside calling hours.
PLAN = [HUMAN] * 15 + [MACHINE] * 10 + [NO_ANSWER] * 6 + [BUSY] * 5 + [FAILED] * 4
ANSWERS = {la(i): answer for i, answer in enumerate(PLAN)}
DO_NOT_CALL = [la(40 + i) for i in range(5)]
OUT_OF_HOURS = [sydney(i) for i in range(5)]
RETRIED = {"no-answer", "busy"}  # the campaign retries these (max 2 attempts), not machines


@sync_to_async
def create_campaign() -> Campaign:
    agent = Agent.objects.create(
        name="Reminders",
        phone_number="+14155550000",
        greeting="Hello {first_name}, this is the clinic.",
        answering_machine=AnsweringMachine.VOICEMAIL,
        voicemail_message="Hi {first_name}, please call the clinic back.",
    )
    now_la = datetime.now(LOS_ANGELES)
    campaign = Campaign.objects.create(
        name="Reminders",
        agent=agent,
        max_concurrent_calls=CONCURRENCY,
        # Two hours either side of now in Los Angeles: Sydney (17-19 h ahead) is outside.
        calling_hours_start=(now_la - timedelta(hours=2)).time(),
        calling_hours_end=(now_la + timedelta(hours=2)).time(),
        max_attempts=2,
        retry_delay_seconds=1,
        retry_no_answer=True,
        retry_busy=True,
        retry_voicemail=False,
    )
    numbers = [la(i) for i in range(45)] + OUT_OF_HOURS
    rows = ["phone_number,first_name"] + [f"{n},Person {i}" for i, n in enumerate(numbers)]
    result = services.campaign_import_csv(campaign=campaign, data="\n".join(rows))
    assert result.imported == 50
    DoNotCall.objects.bulk_create(DoNotCall(phone_number=n) for n in DO_NOT_CALL)
    services.campaign_transition(campaign_id=campaign.pk, action="start")
    return campaign


@sync_to_async
def progress(campaign: Campaign) -> dict:
    return services.campaign_progress(campaign=Campaign.objects.get(pk=campaign.pk))


@sync_to_async
def contacts(campaign: Campaign) -> dict[str, Contact]:
    return {c.phone_number: c for c in Contact.objects.filter(campaign=campaign)}


@sync_to_async
def events_of(sids: list[str]) -> list[str]:
    events = CallEvent.objects.filter(call__sid__in=sids).select_related("call")
    return [f"{e.created_at:%H:%M:%S.%f} {e.call.sid} {e.kind} {e.actor} {e.data}" for e in events]


@sync_to_async
def voicemails_left() -> int:
    return CallEvent.objects.filter(kind="voicemail_left").count()


async def test_a_campaign_of_50_numbers_across_two_processes(redis_url, tmp_path):
    campaign = await create_campaign()
    greeting = Reply(transcript="Hello.", audio_ms=500)
    phones = OutboundPhones(servers=[], answers=ANSWERS)
    with logs_shown_on_failure(tmp_path / "a.log", tmp_path / "b.log"):
        async with FakeRealtimeServer(default_reply=greeting) as model, phones:
            env = {
                "REDIS_URL": redis_url,
                "OPENAI_REALTIME_URL": model.url,
                "TWILIO_API_BASE_URL": phones.base_url,
                "CAMPAIGN_DIALLER": "true",
                "CAMPAIGN_DIALLER_INTERVAL_SECONDS": "0.3",
                "AMD_WAIT_SECONDS": "4",
                # A failure can reach a server before the dialler has recorded the call (as with
                # Twilio): the reconciler asks Twilio about calls with no news, as in production.
                "CALL_RECONCILER": "true",
                "RECONCILE_INTERVAL_SECONDS": "1",
                "RECONCILE_UNANSWERED_GRACE_SECONDS": "2",
            }
            with (
                daphne(tmp_path / "a.log", **env) as server_a,
                daphne(tmp_path / "b.log", **env) as server_b,
            ):
                phones.servers = [server_a, server_b]
                deadline = asyncio.get_running_loop().time() + 120
                while True:
                    figures = await progress(campaign)
                    # Everyone in hours is done; Sydney waits for its hours.
                    if figures["done"] == 45 and figures["dialling"] == 0:
                        break
                    assert asyncio.get_running_loop().time() < deadline, (figures, phones.peak)
                    await asyncio.sleep(0.5)
                await asyncio.sleep(1.0)  # nothing more is dialled
    calls_by_number = Counter(call.to for call in phones.calls.values())
    by_number = await contacts(campaign)
    outcomes = Counter(call.answer.kind for call in phones.calls.values())
    figures = await progress(campaign)
    pids = sorted({c.claimed_by.split(":")[1] for c in by_number.values() if c.claimed_by})
    print(
        f"\nCampaign run: {len(phones.calls)} calls to {len(calls_by_number)} numbers,"
        f" concurrency peak {phones.peak} (limit {CONCURRENCY}),"
        f" retries {figures['retries']}, calls by answer {dict(outcomes)},"
        f" contacts by outcome {figures['outcomes']},"
        f" dialled by processes {pids}"
    )
    assert all(not call.errors for call in phones.calls.values()), [
        call.errors for call in phones.calls.values() if call.errors
    ]
    # Never more than the limit at once, across both processes; and both dialled.
    assert 2 <= phones.peak <= CONCURRENCY
    holders = {c.claimed_by.rsplit(":", 1)[0] for c in by_number.values() if c.claimed_by}
    assert len(holders) == 2, holders
    # Each number once, except those the retry policy calls again (once more, max 2).
    for number, count in calls_by_number.items():
        expected = 2 if ANSWERS[number].kind in RETRIED else 1
        assert count == expected, (number, ANSWERS[number], count)
    assert set(calls_by_number) == set(ANSWERS)
    # Do-not-call and out-of-hours numbers were never dialled.
    assert not set(calls_by_number) & (set(DO_NOT_CALL) | set(OUT_OF_HOURS))
    assert {by_number[n].outcome for n in DO_NOT_CALL} == {"do_not_call"}
    assert {by_number[n].state for n in OUT_OF_HOURS} == {ContactState.PENDING}
    # Outcomes as the phones answered.
    expected_outcomes = {
        "human": "answered",
        "machine": "voicemail",
        "no-answer": "no_answer",
        "busy": "busy",
        "failed": "failed",
    }
    for number, answer in ANSWERS.items():
        if by_number[number].outcome != expected_outcomes[answer.kind]:
            # What the servers said about that number's calls, to tell why.
            sids = [call.sid for call in phones.calls.values() if call.to == number]
            said = [
                line
                for log in (tmp_path / "a.log", tmp_path / "b.log")
                for line in log.read_text(errors="replace").splitlines()
                if any(sid in line for sid in sids)
            ]
            events = await events_of(sids)
            raise AssertionError(
                f"{number} ({answer}): {by_number[number].outcome}\n"
                + "\n".join(said + ["Its events:"] + events)
            )
    assert figures["outcome_counts"]["voicemail"] == 10
    assert await voicemails_left() == 10
    assert figures["calls"] == len(phones.calls) == 51
    assert figures["retries"] == 11
