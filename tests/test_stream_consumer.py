"""The media stream consumer speaks Twilio's protocol exactly, and survives bad input."""

import asyncio
import base64
import contextvars
import json

import pytest
from asgiref.sync import SyncToAsync, sync_to_async

from agents.models import Agent
from callmedia import audio, protocol
from calls import drain, services
from calls.consumers import MediaStreamConsumer
from calls.consumers.media import HANDOVER_QUIET_WAIT_S
from calls.models import Call, CallEvent, EndReason, MediaStream, StreamStatus
from calls.simulator import wire

from .stream_helpers import (
    TwilioTestStream,
    answer_call,
    quiet_agent_create,
    quiet_stream,
    upgrade_signature_headers,
)

pytestmark = pytest.mark.django_db(transaction=True)
pytest_plugins = ["tests.agent_harness"]  # realtime, rest


@pytest.fixture
async def quiet_agent(db) -> Agent:
    return await quiet_agent_create()


@pytest.fixture
async def stream(quiet_agent, realtime, rest):
    async with quiet_stream(realtime) as twilio:
        yield twilio


def silent_wav(ms: int) -> bytes:
    return audio.pcm16_to_wav(audio.ulaw_to_pcm16(audio.silence(ms)), 8000)


async def call_of(stream: TwilioTestStream) -> Call:
    return await Call.objects.aget(sid=stream.call_sid)


async def stream_record(stream: TwilioTestStream) -> MediaStream:
    return await MediaStream.objects.aget(sid=stream.stream_sid)


async def event_kinds(stream: TwilioTestStream) -> list[str]:
    call = await call_of(stream)
    return [kind async for kind in call.events.values_list("kind", flat=True)]


async def stop_and_wait(stream: TwilioTestStream) -> MediaStream:
    await stream.stop()
    await stream.closed()
    return await stream_record(stream)


# --- authentication ---------------------------------------------------------------------


async def test_a_stream_with_a_valid_token_is_recorded(stream):
    record = await stream_record(stream)
    assert record.status == StreamStatus.STARTED
    assert record.custom_parameters == {"campaign": "spring"}  # the token is not kept
    assert record.media_format == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    assert "stream_connected" in await event_kinds(stream)
    # Twilio runs the TwiML only once it has answered: the call is in progress.
    call = await call_of(stream)
    assert call.status == "in-progress" and call.answered_at is not None


@pytest.mark.parametrize("token", [None, "", "forged-token"])
async def test_a_stream_without_a_valid_token_is_closed_as_refused(quiet_agent, realtime, token):
    call_sid, _ = await answer_call()
    twilio = TwilioTestStream(call_sid=call_sid, token=token)
    await twilio.open()
    assert await twilio.closed() == protocol.CLOSE_STREAM_REFUSED
    events = [e async for e in CallEvent.objects.filter(kind="stream_refused")]
    assert len(events) == 1 and events[0].data["reason"]
    assert not await MediaStream.objects.aexists()


async def test_a_token_for_another_call_is_refused(quiet_agent, realtime):
    _, token = await answer_call()
    other_sid, _ = await answer_call()
    twilio = TwilioTestStream(call_sid=other_sid, token=token)
    await twilio.open()
    assert await twilio.closed() == protocol.CLOSE_STREAM_REFUSED


async def test_a_token_works_only_once(quiet_agent, realtime):
    call_sid, token = await answer_call()
    first = TwilioTestStream(call_sid=call_sid, token=token)
    await first.open()
    await realtime.wait_for_session()
    replay = TwilioTestStream(call_sid=call_sid, token=token)
    await replay.open()
    assert await replay.closed() == protocol.CLOSE_STREAM_REFUSED
    assert await first.nothing_received()
    await first.disconnect()


async def test_an_expired_token_is_refused(quiet_agent, realtime, settings):
    call_sid, token = await answer_call()
    settings.STREAM_TOKEN_MAX_AGE_SECONDS = -1
    twilio = TwilioTestStream(call_sid=call_sid, token=token)
    await twilio.open()
    assert await twilio.closed() == protocol.CLOSE_STREAM_REFUSED
    event = await CallEvent.objects.aget(kind="stream_refused")
    assert event.data["reason"] == "expired stream token"


async def test_a_wrong_upgrade_signature_is_refused(quiet_agent, realtime):
    call_sid, token = await answer_call()
    twilio = TwilioTestStream(
        call_sid=call_sid, token=token, headers=upgrade_signature_headers(valid=False)
    )
    assert not await twilio.connect()


async def test_a_valid_upgrade_signature_is_accepted(quiet_agent, realtime):
    call_sid, token = await answer_call()
    twilio = TwilioTestStream(call_sid=call_sid, token=token, headers=upgrade_signature_headers())
    await twilio.open()
    await realtime.wait_for_session()
    await twilio.disconnect()


# --- sockets that never start --------------------------------------------------------------


async def test_a_socket_that_sends_no_start_is_closed_after_the_timeout(quiet_agent, settings):
    settings.STREAM_START_TIMEOUT_SECONDS = 1
    twilio = TwilioTestStream(call_sid="CA" + "0" * 32, token=None)
    loop = asyncio.get_running_loop()
    opened = loop.time()
    assert await twilio.connect()
    await twilio.send(wire.connected_message())
    await twilio.send("junk before start")
    assert await twilio.closed(timeout=5) == protocol.CLOSE_START_TIMEOUT
    assert 0.9 <= loop.time() - opened < 3


async def test_a_valid_start_is_not_timed_out(quiet_agent, realtime, settings):
    settings.STREAM_START_TIMEOUT_SECONDS = 1
    call_sid, token = await answer_call()
    twilio = TwilioTestStream(call_sid=call_sid, token=token)
    await twilio.open()
    session = await realtime.wait_for_session(configured=True)
    assert await twilio.nothing_received(timeout=1.5)
    await twilio.media(count=2)
    await session.wait_for(lambda: session.appended_bytes >= 2 * audio.FRAME_BYTES)
    await twilio.disconnect()


async def test_sockets_waiting_for_their_start_are_capped(quiet_agent, realtime, settings):
    settings.STREAM_UNAUTHENTICATED_MAX = 2
    call_sid, token = await answer_call()
    started = TwilioTestStream(call_sid=call_sid, token=token)
    await started.open()
    await realtime.wait_for_session()  # authenticated: it no longer counts
    waiting = [TwilioTestStream(call_sid="CA" + "0" * 32, token=None) for _ in range(2)]
    for twilio in waiting:
        assert await twilio.connect()
    over = TwilioTestStream(call_sid="CA" + "0" * 32, token=None)
    assert not await over.connect()  # refused at once, before the upgrade completes
    await waiting[0].disconnect()
    again = TwilioTestStream(call_sid="CA" + "0" * 32, token=None)
    for _ in range(50):  # the freed place is given back once the consumer has unwound
        if await again.connect():
            break
        await asyncio.sleep(0.02)
        again = TwilioTestStream(call_sid="CA" + "0" * 32, token=None)
    else:
        raise AssertionError("no place freed after a waiting socket left")
    for twilio in (waiting[1], again, started):
        await twilio.disconnect()


# --- each message type ------------------------------------------------------------------


async def test_connected_is_accepted_quietly(stream):
    await stream.send(wire.connected_message())
    assert await stream.nothing_received()


async def test_caller_audio_reaches_the_model(stream, realtime):
    session = realtime.sessions[0]
    await stream.media(count=25)
    await session.wait_for(lambda: session.appended_bytes >= 25 * audio.FRAME_BYTES)
    assert session.appended_bytes == 25 * audio.FRAME_BYTES


async def test_counters_are_written_once_when_the_stream_ends(stream, realtime):
    await stream.media(count=30)
    session = realtime.sessions[0]
    await session.wait_for(lambda: session.appended_bytes >= 30 * audio.FRAME_BYTES)
    # No database write per frame: the record still shows nothing while the call runs.
    assert (await stream_record(stream)).frames_in == 0
    record = await stop_and_wait(stream)
    assert (record.frames_in, record.bytes_in) == (30, 30 * audio.FRAME_BYTES)


async def test_dtmf_is_counted(stream):
    await stream.dtmf("5")
    record = await stop_and_wait(stream)
    assert record.dtmf_digits == 1


async def test_a_mark_echo_is_counted(stream):
    await services.call_play_audio(
        call_id=str((await call_of(stream)).id), wav=silent_wav(100), actor="system"
    )
    mark = await stream.receive_event("mark")
    await stream.mark(mark["mark"]["name"])
    record = await stop_and_wait(stream)
    assert (record.marks_sent, record.marks_received) == (1, 1)


async def test_stop_ends_the_stream_without_hanging_up(stream, rest):
    record = await stop_and_wait(stream)
    assert record.status == StreamStatus.STOPPED and record.stopped_at is not None
    assert rest.requests == []
    # With no transfer under way, Twilio's stop means the caller has gone.
    call = await call_of(stream)
    assert (call.status, call.end_reason) == ("completed", EndReason.CALLER_HANGUP)


# --- bad input: logged, counted, and the stream carries on -------------------------------


def _media_with(stream: TwilioTestStream, **changes) -> str:
    message = json.loads(
        wire.inbound_media_message(
            stream_sid=stream.stream_sid,
            sequence_number=99,
            chunk=99,
            timestamp_ms=1980,
            payload_b64="//8=",
        )
    )
    message.update(changes)
    return json.dumps(message)


BAD_INPUTS = {
    "not_json": lambda stream: "{not json",
    "unknown_event": lambda stream: json.dumps({"event": "bogus", "streamSid": stream.stream_sid}),
    "missing_field": lambda stream: _media_with(stream, media={"track": "inbound"}),
    "wrong_stream": lambda stream: _media_with(stream, streamSid="MZ" + "0" * 32),
    "binary": lambda stream: b"\x00\x01binary",
    "too_large": lambda stream: json.dumps({"event": "media", "pad": "x" * 70_000}),
}


@pytest.mark.parametrize("reason", sorted(BAD_INPUTS))
async def test_a_bad_message_is_counted_and_the_stream_survives(stream, realtime, reason):
    bad = BAD_INPUTS[reason](stream)
    if isinstance(bad, bytes):
        await stream.communicator.send_to(bytes_data=bad)
    else:
        await stream.send(bad)
    # The next good message is handled as usual.
    await stream.media(count=3)
    session = realtime.sessions[0]
    await session.wait_for(lambda: session.appended_bytes >= 3 * audio.FRAME_BYTES)
    record = await stop_and_wait(stream)
    assert (record.bad_messages, record.frames_in) == (1, 3)
    event = await CallEvent.objects.aget(kind="stream_bad_message")
    assert event.data["reason"] == reason


async def test_a_repeated_bad_message_is_logged_once_and_counted_each_time(stream):
    for _ in range(5):
        await stream.send("{not json")
    record = await stop_and_wait(stream)
    assert record.bad_messages == 5
    assert await CallEvent.objects.filter(kind="stream_bad_message").acount() == 1


# --- what the server sends ----------------------------------------------------------------


async def test_an_announcement_is_sent_as_headerless_frames_closed_by_one_mark(stream, tmp_path):
    # A WAV file, header and all, as staff might upload it: only its samples may go out.
    wav = silent_wav(1000)
    call = await call_of(stream)
    await services.call_play_audio(call_id=str(call.id), wav=wav, actor="staff")
    mark = await stream.receive_event("mark")
    media = [m for m in stream.received if m["event"] == "media"]
    assert len(media) == 50  # 1 s in 20 ms frames, every one checked by validate_outbound
    assert all(len(base64.b64decode(m["media"]["payload"])) == 160 for m in media)
    assert [m["event"] for m in stream.received].count("mark") == 1
    assert mark["mark"]["name"]


async def test_a_file_that_is_not_a_wav_is_refused_and_nothing_is_sent(stream):
    call = await call_of(stream)
    with pytest.raises(services.CallControlError, match="Cannot play that file"):
        await services.call_play_audio(call_id=str(call.id), wav=b"ID3 an mp3", actor="staff")
    assert await stream.nothing_received()


async def test_audio_produced_before_start_is_queued_not_sent_with_a_null_stream():
    consumer = MediaStreamConsumer()
    consumer.send_audio("item_1", "//8=", 2)
    consumer.end_segment()
    assert not consumer._outbox  # nothing can be addressed before `start` names the stream
    consumer.stream_sid = "MZ" + "a" * 32
    consumer._flush_before_start()
    sent = [json.loads(text) for text in consumer._outbox]
    assert [m["event"] for m in sent] == ["media", "mark"]
    assert all(m["streamSid"] == consumer.stream_sid for m in sent)
    assert all(
        wire.validate_outbound(text, consumer.stream_sid) is None for text in consumer._outbox
    )


# --- call control through the call's channel-layer group ---------------------------------


async def test_clear_reaches_the_stream_and_is_logged(stream):
    call = await call_of(stream)
    await services.call_clear_audio(call_id=str(call.id), actor="staff")
    assert (await stream.receive_event("clear")) == {
        "event": "clear",
        "streamSid": stream.stream_sid,
    }
    record = await stop_and_wait(stream)
    assert record.clears == 1
    assert "clear" in await event_kinds(stream)


async def test_clear_drops_the_audio_still_playing(stream):
    call = await call_of(stream)
    await services.call_play_audio(call_id=str(call.id), wav=silent_wav(2000), actor="staff")
    mark = await stream.receive_event("mark")
    await services.call_clear_audio(call_id=str(call.id), actor="staff")
    await stream.receive_event("clear")
    # Twilio echoes the pending mark after a clear; it must not count as heard.
    await stream.mark(mark["mark"]["name"])
    await stream.media(count=1)
    await stop_and_wait(stream)


async def test_hangup_goes_to_twilio_exactly_once_and_closes_the_stream(stream, rest):
    call = await call_of(stream)
    results = await asyncio.gather(
        services.call_hangup(call_id=str(call.id), actor="staff", reason=EndReason.STAFF_HANGUP),
        services.call_hangup(call_id=str(call.id), actor="agent", reason=EndReason.AGENT_ENDED),
    )
    assert sorted(result.done for result in results) == [False, True]
    assert len(rest.hangups(stream.call_sid)) == 1
    assert await stream.closed() == 1000
    call = await call_of(stream)
    assert call.end_reason in {EndReason.STAFF_HANGUP, EndReason.AGENT_ENDED}
    assert call.status == "completed" and call.ended_at is not None
    kinds = await event_kinds(stream)
    assert kinds.count("hangup") == 1 and kinds.count("hangup_skipped") == 1


async def test_a_hangup_after_the_caller_left_counts_as_done(stream, rest):
    rest.fail_next("POST", status=404, code=20404, message="The requested resource was not found")
    call = await call_of(stream)
    outcome = await services.call_hangup(
        call_id=str(call.id), actor="staff", reason=EndReason.STAFF_HANGUP
    )
    assert outcome.done
    assert await stream.closed() == 1000


async def test_a_failed_hangup_is_reported_and_can_be_retried(stream, rest):
    rest.fail_next("POST", status=500, code=20500, message="Internal Server Error")
    call = await call_of(stream)
    with pytest.raises(services.CallControlError, match="Hang-up failed"):
        await services.call_hangup(call_id=str(call.id), actor="staff", reason="staff_hangup")
    assert await stream.nothing_received()
    outcome = await services.call_hangup(call_id=str(call.id), actor="staff", reason="staff_hangup")
    assert outcome.done
    assert await stream.closed() == 1000
    kinds = await event_kinds(stream)
    assert kinds.index("hangup_failed") < len(kinds) - 1


async def test_a_failed_hangup_leaves_its_reason_off_a_call_the_caller_then_ends(stream, rest):
    rest.fail_next("POST", status=500, code=20500, message="Internal Server Error")
    call = await call_of(stream)
    with pytest.raises(services.CallControlError, match="Hang-up failed"):
        await services.call_hangup(
            call_id=str(call.id), actor="staff", reason=EndReason.STAFF_HANGUP
        )
    assert (await call_of(stream)).end_reason == ""
    await stop_and_wait(stream)  # then the caller hangs up
    call = await call_of(stream)
    assert (call.status, call.end_reason) == ("completed", EndReason.CALLER_HANGUP)


async def test_a_failed_hangup_leaves_its_reason_off_a_call_twilio_reports_ended(stream, rest):
    rest.fail_next("POST", status=500, code=20500, message="Internal Server Error")
    call = await call_of(stream)
    with pytest.raises(services.CallControlError, match="Hang-up failed"):
        await services.call_hangup(
            call_id=str(call.id), actor="staff", reason=EndReason.STAFF_HANGUP
        )
    await sync_to_async(services.call_status_update)(call_sid=stream.call_sid, status="completed")
    call = await call_of(stream)
    assert (call.status, call.end_reason) == ("completed", EndReason.CALLER_HANGUP)


async def test_a_call_that_ends_while_a_failing_hangup_is_in_flight_gets_its_outcome(
    stream, rest
):
    # The caller leaves while our hang-up is with Twilio: the outcome waits for the hang-up,
    # which then fails; the call still gets its reason and its outcome.
    rest.response_delay_s = 0.5
    rest.fail_next("POST", status=500, code=20500, message="Internal Server Error")
    call = await call_of(stream)
    hangup = asyncio.create_task(
        services.call_hangup(call_id=str(call.id), actor="staff", reason=EndReason.STAFF_HANGUP)
    )
    await asyncio.sleep(0.2)
    await sync_to_async(services.call_status_update)(call_sid=stream.call_sid, status="completed")
    assert (await call_of(stream)).outcome == ""  # the hang-up's to decide
    with pytest.raises(services.CallControlError, match="Hang-up failed"):
        await hangup
    call = await call_of(stream)
    assert (call.end_reason, call.outcome) == (EndReason.CALLER_HANGUP, "caller_hung_up")


async def test_a_hangup_keeps_its_reason_when_twilio_reports_the_end_first(stream, rest):
    # Twilio's "completed" callback may beat the REST response that confirms our hang-up.
    call = await call_of(stream)
    rest.on_hangup = lambda sid: reported.set()
    reported = asyncio.Event()
    hangup = asyncio.create_task(
        services.call_hangup(call_id=str(call.id), actor="staff", reason=EndReason.STAFF_HANGUP)
    )
    await reported.wait()
    await sync_to_async(services.call_status_update)(call_sid=stream.call_sid, status="completed")
    assert await hangup
    call = await call_of(stream)
    assert (call.status, call.end_reason) == ("completed", EndReason.STAFF_HANGUP)


async def test_transfer_dials_the_target_and_the_following_stop_is_not_a_hangup(stream, rest):
    call = await call_of(stream)
    outcome = await services.call_transfer(call_id=str(call.id), actor="staff")
    assert outcome.target.name == "reception"
    [update] = rest.twiml_updates(stream.call_sid)
    assert update.dial_numbers == ["+14155550199"]
    # Twilio replaces the TwiML and ends the stream itself.
    await stop_and_wait(stream)
    assert rest.hangups() == []
    call = await call_of(stream)
    assert (call.end_reason, call.transferred_to) == (EndReason.TRANSFERRED, "+14155550199")
    assert call.status == "in-progress"  # the caller is now talking to a person
    assert "transfer" in await event_kinds(stream)


async def test_a_transfer_whose_dial_ends_before_twilio_answers_is_logged_in_order(stream, rest):
    # A busy number: Twilio runs the <Dial action> before its answer to our update arrives.
    # The log still shows the transfer before the caller's return, and the call's outcome
    # is not "transferred".
    call = await call_of(stream)

    async def dial_busy(sid: str, twiml: str) -> None:
        await sync_to_async(services.dial_outcome_record)(
            call_sid=sid, dial_status="busy", duration_seconds=0
        )

    rest.on_twiml = dial_busy
    rest.answer_delay_s = 0.3
    await services.call_transfer(call_id=str(call.id), actor="staff")
    kinds = await event_kinds(stream)
    assert kinds.index("transfer") < kinds.index("transfer_returned"), kinds
    await sync_to_async(services.call_status_update)(call_sid=call.sid, status="completed")
    call = await call_of(stream)
    assert (call.end_reason, call.outcome) == ("caller_hangup", "caller_hung_up")


async def test_a_failed_transfer_is_reported_and_the_call_carries_on(stream, rest):
    rest.fail_next("POST", status=400, code=21220, message="Call is not in-progress")
    call = await call_of(stream)
    with pytest.raises(services.CallControlError, match="Transfer to reception failed"):
        await services.call_transfer(call_id=str(call.id), actor="staff")
    assert await stream.nothing_received()
    call = await call_of(stream)
    assert call.end_reason == "" and call.transferred_to == ""
    assert "transfer_failed" in await event_kinds(stream)


async def test_a_transfer_to_an_unknown_target_is_refused(stream, rest):
    call = await call_of(stream)
    with pytest.raises(services.CallControlError, match="no “sales”"):
        await services.call_transfer(call_id=str(call.id), actor="staff", target_name="sales")
    assert rest.requests == []


async def test_actions_on_a_finished_call_are_refused(stream):
    await stop_and_wait(stream)
    await Call.objects.filter(sid=stream.call_sid).aupdate(status="completed")
    call = await call_of(stream)
    with pytest.raises(services.CallControlError, match="already ended"):
        await services.call_clear_audio(call_id=str(call.id), actor="staff")


# --- draining: the process shuts down, the call moves on --------------------------------


@pytest.fixture
def draining():
    yield
    drain.reset()


async def test_a_drain_started_by_a_signal_mid_database_call_still_hands_over(stream, draining):
    # The signal handler that starts the drain runs in the context it interrupted: here a
    # task in the middle of a database call, whose context says the database thread is
    # taken. The drain must not inherit that, or its own database calls fail.
    interrupted = contextvars.copy_context()
    interrupted.run(SyncToAsync.deadlock_context.set, True)
    drained = interrupted.run(drain.drain_start, deadline_s=10)
    async with asyncio.timeout(HANDOVER_QUIET_WAIT_S + 2):
        assert await drained == 0
        assert await stream.closed() == 1000
    assert "stream_handover" in await event_kinds(stream)


async def test_a_draining_stream_hands_over_once_its_audio_has_played(stream, draining):
    # daphne cancels every connection's application as it shuts down (the drain runs just
    # before): the consumer must go on reading Twilio's messages, or the echo of the audio
    # still playing never arrives and the call waits out the quiet cap.
    call = await call_of(stream)
    await services.call_play_audio(call_id=str(call.id), wav=silent_wav(300), actor="staff")
    mark = await stream.receive_event("mark")
    drained = asyncio.create_task(drain.drain_process(deadline_s=10))
    await asyncio.sleep(0)
    stream.communicator.future.cancel()

    await asyncio.sleep(0.2)
    assert not drained.done(), "handed over while the clip was still playing"
    await stream.media(count=15)  # Twilio's clock goes on; the clip ends
    await stream.mark(mark["mark"]["name"])
    async with asyncio.timeout(HANDOVER_QUIET_WAIT_S / 5):
        assert await drained == 0  # every call handed over
    assert await stream.closed() == 1000
    assert "stream_handover" in await event_kinds(stream)
    record = await stream_record(stream)
    assert record.marks_received == 1
