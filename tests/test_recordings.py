"""Call recordings, whole: started at Twilio (the emulator) when the stream starts, its status
callbacks stored, its audio (both sides, on separate channels) played to staff through our
proxy with Range requests, and deleted after the retention period."""

import asyncio
import io
import threading
import wave
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import urlsplit

import aiohttp
import numpy as np
import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.test import AsyncClient
from django.utils import timezone

from calls import security
from calls.models import Call, CallEvent, Recording
from calls.simulator.rest import TwilioRestEmulator
from peers.realtime.replies import tone

from .agent_harness import make_agent, start_call
from .twilio_helpers import ACCOUNT_SID, new_call_sid

pytest_plugins = ["tests.agent_harness"]  # asgi_server, realtime, rest
pytestmark = pytest.mark.django_db(transaction=True)


def poster(server):
    """POST to our server as Twilio does: to its address, signed over the public URL."""

    async def post(url: str, params: dict[str, str]) -> str:
        parts = urlsplit(url)
        target = server.http_url + parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {security.SIGNATURE_HEADER: security.compute_signature(url, params)}
        async with (
            aiohttp.ClientSession() as http,
            http.post(target, data=params, headers=headers) as response,
        ):
            body = await response.text()
            assert response.status < 300, body
            return body

    return post


def channel_rms(wav_bytes: bytes) -> tuple[float, float]:
    with wave.open(io.BytesIO(wav_bytes)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 8000)
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    left, right = samples[:, 0].astype(float), samples[:, 1].astype(float)
    return float(np.sqrt(np.mean(left**2))), float(np.sqrt(np.mean(right**2)))


async def test_a_recorded_call_is_recorded_in_two_channels_and_stored(asgi_server, realtime, rest):
    rest.post_callback = poster(asgi_server)
    await make_agent(record_calls=True)
    live = await start_call(asgi_server, rest, realtime, record=True)

    create = await rest.wait_for_request(lambda r: r.path.endswith("/Recordings.json"))
    assert create.path == (
        f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{live.call_sid}/Recordings.json"
    )
    assert create.form["RecordingChannels"] == "dual"
    assert create.form["RecordingTrack"] == "both"
    assert create.form["RecordingStatusCallback"] == (
        "https://voicebot.example.com/twilio/recording/status"
    )
    assert create.form_lists["RecordingStatusCallbackEvent"] == [
        "in-progress",
        "completed",
        "absent",
    ]
    recording = await live.wait_until(
        lambda: Recording.objects.filter(call__sid=live.call_sid).afirst(), what="recording row"
    )
    assert recording.status == "in-progress"

    # The agent speaks (a tone), then the caller (another tone, a second later).
    await live.model.reply(transcript="Hello.", audio_ms=1000, pace="burst")
    await live.played_at_least(1000)
    live.twilio.queue_caller_audio(tone(1000))
    await live.twilio.wait_for(lambda: live.twilio.caller_audio_pending == 0, 3, "caller audio")
    await live.twilio.stop()
    await live.ended()
    [finished] = await rest.recordings_finish(live.call_sid)

    await live.wait_until(
        lambda: Recording.objects.filter(sid=finished.sid, status="completed").aexists(),
        what="completed callback stored",
    )
    recording = await Recording.objects.aget(sid=finished.sid)
    assert recording.channels == 2
    assert recording.duration_seconds >= 2
    assert recording.media_url == (
        f"{rest.base_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Recordings/{finished.sid}"
    )
    kinds = [event.kind for event in await live.events()]
    assert {"recording_started", "recording_in_progress", "recording_completed"} <= set(kinds)
    # Caller on the left, what the caller heard (the agent) on the right; each channel
    # holds about a second of tone and silence the rest of the time.
    caller_rms, agent_rms = channel_rms(finished.wav)
    assert caller_rms > 500 and agent_rms > 500
    with wave.open(io.BytesIO(finished.wav)) as wav:
        stereo = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    agent_loud = np.flatnonzero(np.abs(stereo[:, 1]) > 1000)
    caller_loud = np.flatnonzero(np.abs(stereo[:, 0]) > 1000)
    assert agent_loud[0] < caller_loud[0]  # the agent spoke first
    assert len(agent_loud) > 4000 and len(caller_loud) > 4000  # over half a second each
    await live.twilio.aclose()


async def test_no_recording_unless_the_agent_records_its_calls(asgi_server, realtime, rest):
    await make_agent()
    live = await start_call(asgi_server, rest, realtime)
    await live.model.reply(transcript="Hello.", audio_ms=200, pace="burst")
    await live.played_at_least(200)
    await live.twilio.stop()
    await live.ended()
    assert not [r for r in rest.requests if "Recordings" in r.path]
    assert not await Recording.objects.filter(call__sid=live.call_sid).aexists()
    await live.twilio.aclose()


async def test_a_recording_twilio_refuses_is_logged_and_the_call_goes_on(
    asgi_server, realtime, rest
):
    await make_agent(record_calls=True)
    rest.fail_next("Recordings", status=400, code=21220, message="Not eligible")
    live = await start_call(asgi_server, rest, realtime)
    await live.wait_until(
        lambda: CallEvent.objects.filter(call__sid=live.call_sid, kind="recording_failed").aexists()
    )
    assert not live.twilio.closed
    await live.twilio.stop()
    await live.ended()
    await live.twilio.aclose()


# --- playback, for staff only ---------------------------------------------------------------


async def finished_recording(rest: TwilioRestEmulator) -> tuple[Recording, bytes]:
    """A finished recording at the emulator (a 2 s call) and its row here."""
    from calls import telephony

    call_sid = new_call_sid()
    rest.register_call(call_sid, account_sid=ACCOUNT_SID)
    call = await Call.objects.acreate(sid=call_sid, status="in-progress")
    sid = await telephony.recording_start(call_sid, status_callback="https://x.example/cb")
    [emulated] = [r for r in rest.recordings.values() if r.sid == sid]
    emulated.started_at -= 2
    tap = rest.audio_tap_for(call_sid)
    tap("inbound", emulated.started_at, tone(2000))
    await rest.recordings_finish(call_sid)
    recording = await Recording.objects.acreate(
        call=call, sid=sid, status="completed", duration_seconds=2
    )
    return recording, emulated.wav


@sync_to_async
def staff(*codenames: str) -> User:
    user = User.objects.create_user(f"staff{User.objects.count()}", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


async def listen(user: User | None, recording: Recording, **headers):
    client = AsyncClient()
    if user is not None:
        await client.aforce_login(user)
    return await client.get(f"/console/recordings/{recording.sid}.wav", headers=headers)


async def body(response) -> bytes:
    return b"".join([chunk async for chunk in response.streaming_content])


async def test_staff_with_the_permission_hear_the_recording_through_the_project(rest):
    recording, wav = await finished_recording(rest)
    user = await staff("view_call", "listen_recording")

    response = await listen(user, recording)
    assert response.status_code == 200
    assert response.streaming  # passed on in chunks, never read whole
    assert response["Content-Type"] == "audio/x-wav"
    assert response["Accept-Ranges"] == "bytes"
    assert await body(response) == wav
    media = [r for r in rest.requests if r.path.endswith(".wav")]
    assert media[-1].auth == (ACCOUNT_SID, media[-1].auth[1])  # the account's credentials


async def test_a_range_request_gets_206_and_only_those_bytes(rest):
    recording, wav = await finished_recording(rest)
    user = await staff("view_call", "listen_recording")

    response = await listen(user, recording, Range="bytes=1000-1999")
    assert response.status_code == 206
    assert response["Content-Range"] == f"bytes 1000-1999/{len(wav)}"
    assert response["Content-Length"] == "1000"
    assert await body(response) == wav[1000:2000]

    response = await listen(user, recording, Range="bytes=30000-")
    assert response.status_code == 206
    assert response["Content-Range"] == f"bytes 30000-{len(wav) - 1}/{len(wav)}"
    assert await body(response) == wav[30000:]

    response = await listen(user, recording, Range=f"bytes={len(wav) + 10}-")
    assert response.status_code == 416


@pytest.mark.parametrize("codenames", [None, (), ("view_call",), ("listen_recording",)])
async def test_nobody_else_hears_it(rest, codenames):
    recording, _ = await finished_recording(rest)
    user = None if codenames is None else await staff(*codenames)
    before = len(rest.requests)
    response = await listen(user, recording)
    assert response.status_code == 403
    assert len(rest.requests) == before  # Twilio was not even asked


async def test_an_unknown_recording_is_404(rest):
    user = await staff("view_call", "listen_recording")
    response = await listen(user, Recording(sid="RE" + "0" * 32))
    assert response.status_code == 404


# --- retention ------------------------------------------------------------------------------


@pytest.fixture
def rest_in_thread(settings) -> Iterator[TwilioRestEmulator]:
    """The emulator on its own loop, for a command that runs its own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    emulator = TwilioRestEmulator()
    asyncio.run_coroutine_threadsafe(emulator.start(), loop).result(5)
    settings.TWILIO_API_BASE_URL = emulator.base_url
    emulator.loop = loop
    yield emulator
    asyncio.run_coroutine_threadsafe(emulator.stop(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_purge_deletes_old_recordings_at_twilio_and_here(rest_in_thread, settings, capsys):
    settings.RECORDING_RETENTION_DAYS = 30
    loop = rest_in_thread.loop
    old, _ = asyncio.run_coroutine_threadsafe(finished_recording(rest_in_thread), loop).result(5)
    young, _ = asyncio.run_coroutine_threadsafe(finished_recording(rest_in_thread), loop).result(5)
    Recording.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=31))
    # One Twilio no longer has: forgotten here as well.
    gone, _ = asyncio.run_coroutine_threadsafe(finished_recording(rest_in_thread), loop).result(5)
    Recording.objects.filter(pk=gone.pk).update(created_at=timezone.now() - timedelta(days=40))
    del rest_in_thread.recordings[gone.sid]

    call_command("purge_recordings")

    assert "Deleted 2 recording(s) older than 30 day(s)." in capsys.readouterr().out
    assert list(Recording.objects.values_list("sid", flat=True)) == [young.sid]
    assert rest_in_thread.deleted_recordings == {old.sid}
    assert set(rest_in_thread.recordings) == {young.sid}
    deletes = [r for r in rest_in_thread.requests if r.method == "DELETE"]
    assert sorted(r.path for r in deletes) == sorted(
        f"/2010-04-01/Accounts/{ACCOUNT_SID}/Recordings/{sid}.json" for sid in (old.sid, gone.sid)
    )
    event = CallEvent.objects.get(call=old.call, kind="recording_deleted")
    assert event.data == {"recording_sid": old.sid, "was_at_twilio": True}


def test_a_recording_twilio_will_not_delete_is_kept_for_the_next_run(rest_in_thread, settings):
    loop = rest_in_thread.loop
    old, _ = asyncio.run_coroutine_threadsafe(finished_recording(rest_in_thread), loop).result(5)
    Recording.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=100))
    rest_in_thread.fail_next("DELETE", status=500, code=20500, message="Internal Server Error")

    with pytest.raises(Exception, match="could not be deleted"):
        call_command("purge_recordings", "--days", "90")
    assert Recording.objects.filter(pk=old.pk).exists()
    call_command("purge_recordings", "--days", "90")
    assert not Recording.objects.filter(pk=old.pk).exists()


def test_retention_0_keeps_recordings(settings, capsys, db):
    settings.RECORDING_RETENTION_DAYS = 0
    call_command("purge_recordings")
    assert "recordings are kept" in capsys.readouterr().out


# --- the call's page ------------------------------------------------------------------------


@pytest.mark.parametrize("may_listen", [True, False])
def test_the_call_page_plays_the_recording_to_staff_who_may(client, may_listen):
    call = Call.objects.create(sid=new_call_sid(), status="completed")
    call.transcript.create(speaker="caller", text="Hi", offset_ms=4200)
    Recording.objects.create(call=call, sid="RE" + "a" * 32, status="completed", offset_ms=1200)
    codenames = ("view_call", "listen_recording") if may_listen else ("view_call",)
    user = User.objects.create_user("operator", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client.force_login(user)

    page = client.get(f"/admin/calls/call/{call.pk}/change/").content.decode()

    audio = f'src="/console/recordings/RE{"a" * 32}.wav" data-offset-ms="1200"'
    assert (audio in page) is may_listen
    assert ("Left channel: the caller. Right channel: the agent" in page) is may_listen
    assert 'data-offset-ms="4200"' in page  # the line seeks to 3.0 s into the recording
