"""The reconciler's decisions, its claims, staff's "Mark ended", and the live snapshot.

The reconciler runs here in the test's event loop against the Twilio REST emulator; the
database is the real one. Ghost calls are written as a crash leaves them: a stream
`started` by a process that stopped writing its heartbeat long ago.
"""

import asyncio
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from calls import feed, security, services
from calls.models import Call, CallEvent, MediaStream, ReconcilerLease, ServerProcess
from calls.simulator.rest import TwilioRestEmulator

from .twilio_helpers import ACCOUNT_SID, new_call_sid, signed_post

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def periods(settings):
    settings.STREAM_HEARTBEAT_SECONDS = 1
    settings.STREAM_STALE_SECONDS = 3
    settings.RECONCILE_INTERVAL_SECONDS = 1
    settings.RECONCILE_UNANSWERED_GRACE_SECONDS = 5
    settings.TWILIO_HTTP_TIMEOUT_SECONDS = 5


@pytest.fixture
async def rest(settings):
    async with TwilioRestEmulator() as emulator:
        settings.TWILIO_API_BASE_URL = emulator.base_url
        yield emulator


def process(*, alive: bool) -> ServerProcess:
    seen = timezone.now() - timedelta(seconds=0 if alive else 600)
    return ServerProcess.objects.create(host="web-1", pid=1234, last_seen=seen)


def ghost(
    *,
    status: str = "in-progress",
    age_s: float = 600,
    stream: str | None = "dead",
    direction: str = "inbound",
    sid: str | None = None,
) -> Call:
    """A call as a crash leaves it. `stream`: "dead", "live" (held by a living process),
    "legacy" (started, no process recorded) or None."""
    call = Call.objects.create(
        sid=sid or new_call_sid(),
        account_sid=ACCOUNT_SID,
        direction=direction,
        from_number="+14155550123",
        to_number="+14155550100",
        status=status,
    )
    created = timezone.now() - timedelta(seconds=age_s)
    Call.objects.filter(pk=call.pk).update(created_at=created)
    if stream is not None:
        MediaStream.objects.create(
            call=call,
            sid="MZ" + uuid.uuid4().hex,
            started_at=created,
            process=None if stream == "legacy" else process(alive=stream == "live"),
        )
    return Call.objects.get(pk=call.pk)


def gets(rest: TwilioRestEmulator, call_sid: str) -> list:
    return [r for r in rest.requests if r.call_sid == call_sid and r.method == "GET"]


async def reconcile() -> dict:
    outcomes = await services.calls_reconcile(holder="test")
    assert outcomes is not None
    return dict(outcomes)


# --- what the reconciler decides ------------------------------------------------------------


async def test_a_call_twilio_does_not_know_is_ended_as_unknown_to_twilio(rest):
    call = await sync_to_async(ghost)()
    assert await reconcile() == {"ended": 1}
    call = await Call.objects.aget(pk=call.pk)
    assert (call.status, call.end_reason) == ("completed", "twilio_unknown")
    assert call.get_end_reason_display() == "Unknown to Twilio"
    assert call.ended_at is not None
    stream = await MediaStream.objects.aget(call=call)
    assert stream.status == "error"
    event = await CallEvent.objects.filter(call=call, kind="reconciled").afirst()
    assert event.actor == "system" and event.data["twilio_status"] == "unknown to Twilio"


async def test_a_call_twilio_ended_takes_twilios_status_and_duration(rest):
    call = await sync_to_async(ghost)(stream="legacy")  # from before processes were recorded
    rest.register_call(call.sid, "in-progress", account_sid=ACCOUNT_SID)
    rest.set_status(call.sid, "completed", duration=95)
    assert await reconcile() == {"ended": 1}
    call = await Call.objects.aget(pk=call.pk)
    assert (call.status, call.duration_seconds, call.end_reason) == (
        "completed",
        95,
        "server_lost",
    )


async def test_a_hang_up_in_flight_keeps_its_reason_when_the_reconciler_gets_there_first(rest):
    # Staff hang up; Twilio has done it, and the reconciler reads "completed" before the
    # hang-up records why: the reason is the hang-up's, not "server lost".
    call = await sync_to_async(ghost)(stream="legacy")
    await Call.objects.filter(pk=call.pk).aupdate(hangup_requested_at=timezone.now())
    rest.register_call(call.sid, "in-progress", account_sid=ACCOUNT_SID)
    rest.set_status(call.sid, "completed", duration=20)
    assert await reconcile() == {"ended": 1}
    call = await Call.objects.aget(pk=call.pk)
    assert (call.status, call.end_reason) == ("completed", "")
    await sync_to_async(services.call_end_record)(
        call_id=str(call.pk), reason="staff_hangup", actor="staff", hung_up=True
    )
    call = await Call.objects.aget(pk=call.pk)
    assert (call.end_reason, call.outcome) == ("staff_hangup", "staff_ended")


async def test_a_live_call_on_a_living_process_is_left_alone(rest):
    call = await sync_to_async(ghost)(stream="live")
    rest.register_call(call.sid, "in-progress", account_sid=ACCOUNT_SID)
    assert await reconcile() == {}
    assert gets(rest, call.sid) == []
    assert (await Call.objects.aget(pk=call.pk)).is_live


async def test_calls_left_ringing_or_queued_are_reconciled(rest):
    queued = await sync_to_async(ghost)(status="queued", stream=None, direction="outbound")
    rest.register_call(queued.sid, "queued", account_sid=ACCOUNT_SID)
    rest.set_status(queued.sid, "no-answer")
    forgotten = await sync_to_async(ghost)(status="ringing", stream=None)
    still_ringing = await sync_to_async(ghost)(status="queued", stream=None)
    rest.register_call(still_ringing.sid, "ringing", account_sid=ACCOUNT_SID)
    answered = await sync_to_async(ghost)(status="ringing", stream=None)
    rest.register_call(answered.sid, "in-progress", account_sid=ACCOUNT_SID)
    just_now = await sync_to_async(ghost)(status="ringing", stream=None, age_s=1)
    rest.register_call(just_now.sid, "ringing", account_sid=ACCOUNT_SID)

    assert await reconcile() == {"ended": 2, "still_live": 1, "resumed": 1}

    queued = await Call.objects.aget(pk=queued.pk)
    assert (queued.status, queued.end_reason) == ("no-answer", "failed")
    forgotten = await Call.objects.aget(pk=forgotten.pk)
    assert (forgotten.status, forgotten.end_reason) == ("completed", "twilio_unknown")
    # Still ringing at Twilio: kept, brought up to Twilio's status, no TwiML sent.
    still_ringing = await Call.objects.aget(pk=still_ringing.pk)
    assert still_ringing.status == "ringing" and still_ringing.is_live
    assert rest.twiml_updates(still_ringing.sid) == []
    # Answered but never streamed: the caller is there in silence, so a stream is asked for.
    [update] = rest.connect_streams(answered.sid)
    answered = await Call.objects.aget(pk=answered.pk)
    assert answered.status == "in-progress"
    token = update.stream.parameters["token"]
    assert security.stream_token_nonce(token, answered.sid) == answered.stream_nonce
    # Within the grace period Twilio is not even asked.
    assert gets(rest, just_now.sid) == []
    # Looked at again only after a while: the next pass asks nothing.
    count = len(rest.requests)
    assert await reconcile() == {}
    assert len(rest.requests) == count


async def test_a_transferred_call_with_a_person_is_never_resumed(rest):
    call = await sync_to_async(ghost)()
    await Call.objects.filter(pk=call.pk).aupdate(
        transferred_to="+14155550199", end_reason="transferred"
    )
    rest.register_call(call.sid, "in-progress", account_sid=ACCOUNT_SID)
    assert await reconcile() == {"still_live": 1}
    assert rest.twiml_updates(call.sid) == []
    rest.set_status(call.sid, "completed", duration=300)
    await Call.objects.filter(pk=call.pk).aupdate(reconcile_after=None)
    assert await reconcile() == {"ended": 1}
    call = await Call.objects.aget(pk=call.pk)
    assert (call.status, call.end_reason, call.duration_seconds) == (
        "completed",
        "transferred",
        300,
    )


async def test_twilio_unreachable_leaves_the_call_for_the_next_pass(rest):
    call = await sync_to_async(ghost)()
    rest.fail_next("GET", status=503, code=20503, message="Service Unavailable")
    assert await reconcile() == {"deferred": 1}
    assert (await Call.objects.aget(pk=call.pk)).is_live


# --- one reconciler at a time, one call at a time -------------------------------------------


async def test_two_reconcilers_never_work_the_same_call_at_once(rest):
    calls = [await sync_to_async(ghost)() for _ in range(4)]
    for call in calls:
        rest.register_call(call.sid, "in-progress", account_sid=ACCOUNT_SID)
    rest.response_delay_s = 0.3  # a slow Twilio: both are mid-request together
    outcomes = await asyncio.gather(
        *(services.call_reconcile(call_id=str(call.pk)) for call in calls for _ in range(2))
    )
    assert sorted(outcomes) == sorted(["resumed", "skipped"] * 4)
    for call in calls:
        assert len(gets(rest, call.sid)) == 1
        assert len(rest.connect_streams(call.sid)) == 1


async def test_two_passes_at_once_one_takes_the_lease(rest):
    await sync_to_async(ghost)()
    rest.response_delay_s = 0.3
    first, second = await asyncio.gather(
        services.calls_reconcile(holder="web-1"), services.calls_reconcile(holder="web-2")
    )
    assert sorted([first is None, second is None]) == [False, True]


def test_the_lease_is_held_until_it_expires_or_is_released():
    claim = services.reconcile_lease_claim
    assert claim(holder="web-1", seconds=30)
    assert not claim(holder="web-2", seconds=30)
    assert claim(holder="web-1", seconds=30)  # renewed by its holder
    ReconcilerLease.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert claim(holder="web-2", seconds=30)  # its holder died: taken over
    services.reconcile_lease_release(holder="web-2")
    assert claim(holder="web-1", seconds=30)


def test_a_status_callback_after_a_crash_says_the_server_was_down(client):
    call = ghost()
    response = signed_post(
        client,
        "/twilio/voice/status",
        {"CallSid": call.sid, "AccountSid": ACCOUNT_SID, "CallStatus": "completed"},
    )
    assert response.status_code == 204
    call.refresh_from_db()
    assert (call.status, call.end_reason) == ("completed", "server_lost")
    assert MediaStream.objects.get(call=call).status == "error"


def test_the_command_runs_one_pass(rest_in_thread, capsys):
    from django.core.management import call_command

    ghost()
    call_command("reconcile_calls")
    assert "1 ended" in capsys.readouterr().out
    assert not Call.objects.get().is_live


# --- staff: Mark ended ----------------------------------------------------------------------


@pytest.fixture
def rest_in_thread(settings) -> Iterator[TwilioRestEmulator]:
    """The emulator on its own loop, for code that runs the reconciler's loop itself."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    emulator = TwilioRestEmulator()
    asyncio.run_coroutine_threadsafe(emulator.start(), loop).result(5)
    settings.TWILIO_API_BASE_URL = emulator.base_url
    yield emulator
    asyncio.run_coroutine_threadsafe(emulator.stop(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def staff_client(*codenames: str) -> tuple[Client, User]:
    user = User.objects.create_user("operator", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client, user


def mark_ended(client: Client, call: Call):
    return client.post(f"/admin/calls/call/{call.pk}/mark-ended/", HTTP_ACCEPT="application/json")


def test_mark_ended_needs_its_permission(rest_in_thread):
    call = ghost()
    client, _ = staff_client("view_call", "hangup_call")
    assert b"Mark ended" not in client.get(f"/admin/calls/call/{call.pk}/change/").content
    response = mark_ended(client, call)
    assert response.status_code == 403
    assert response.json()["message"] == "You do not have permission to mark calls ended."
    assert Call.objects.get(pk=call.pk).is_live
    assert rest_in_thread.requests == []


def test_mark_ended_is_offered_only_on_a_call_that_looks_live(rest_in_thread):
    live, over = ghost(), ghost()
    Call.objects.filter(pk=over.pk).update(status="completed", ended_at=timezone.now())
    client, _ = staff_client("view_call", "mark_call_ended")
    assert b"Mark ended" in client.get(f"/admin/calls/call/{live.pk}/change/").content
    assert b"Mark ended" not in client.get(f"/admin/calls/call/{over.pk}/change/").content


def test_mark_ended_closes_a_call_twilio_does_not_know_and_logs_the_user(rest_in_thread):
    call = ghost()
    client, user = staff_client("view_call", "mark_call_ended")
    response = mark_ended(client, call)
    assert response.status_code == 200
    assert response.json() == {
        "ok": True,
        "message": "Marked ended: Twilio does not know this call.",
    }
    call.refresh_from_db()
    assert (call.status, call.end_reason) == ("completed", "twilio_unknown")
    event = CallEvent.objects.get(call=call, kind="marked_ended")
    assert (event.actor, event.user) == ("staff", user)


def test_mark_ended_tells_staff_when_twilio_says_the_call_is_live(rest_in_thread):
    call = ghost()
    rest_in_thread.register_call(call.sid, "in-progress", account_sid=ACCOUNT_SID)
    client, user = staff_client("view_call", "mark_call_ended")
    response = mark_ended(client, call)
    assert response.status_code == 409
    assert "Twilio says this call is still in-progress" in response.json()["message"]
    assert Call.objects.get(pk=call.pk).is_live
    event = CallEvent.objects.get(call=call, kind="mark_ended_refused")
    assert (event.user, event.data) == (user, {"twilio_status": "in-progress"})


def test_mark_ended_takes_twilios_status_and_duration(rest_in_thread):
    call = ghost()
    rest_in_thread.register_call(call.sid, "in-progress", account_sid=ACCOUNT_SID)
    rest_in_thread.set_status(call.sid, "completed", duration=61)
    client, _ = staff_client("view_call", "mark_call_ended")
    response = mark_ended(client, call)
    assert response.json()["message"] == "Marked ended: Twilio says it ended (completed, 61 s)."
    call.refresh_from_db()
    assert (call.status, call.duration_seconds, call.end_reason) == (
        "completed",
        61,
        "server_lost",
    )


# --- the live snapshot ----------------------------------------------------------------------


def test_the_snapshot_shows_the_newest_live_calls_and_none_a_dead_process_held():
    for _ in range(226):
        ghost()  # held by a dead process
    for _ in range(30):
        ghost(stream="legacy")  # started before processes were recorded, long ago
    for _ in range(200):
        ghost(status="ringing", stream=None)  # not yet reconciled
    newest = ghost(stream="live", age_s=1)
    calls = feed.snapshot()["calls"]
    assert calls[0]["sid"] == newest.sid
    assert len(calls) == feed.SNAPSHOT_MAX_CALLS
    shown = {call["sid"] for call in calls}
    dead = Call.objects.filter(streams__status="started").exclude(pk=newest.pk)
    assert shown.isdisjoint(dead.values_list("sid", flat=True))
    created = [call["created_at"] for call in calls]
    assert created == sorted(created, reverse=True)
