"""The emulator's half of the Media Streams protocol: Twilio's messages, Twilio's checks."""

import base64
import json

import pytest

from callmedia.protocol import clear_message, mark_message, media_message
from calls.simulator import wire
from calls.simulator.wire import validate_outbound

STREAM_SID = "MZ00000000000000000000000000000001"
CALL_SID = "CA00000000000000000000000000000001"
ACCOUNT_SID = "AC00000000000000000000000000000001"
PAYLOAD = base64.b64encode(b"\xff" * 160).decode()


def dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def media_dict(**overrides: object) -> dict:
    msg = {
        "event": "media",
        "sequenceNumber": "4",
        "streamSid": STREAM_SID,
        "media": {"track": "inbound", "chunk": "2", "timestamp": "5", "payload": PAYLOAD},
    }
    msg.update(overrides)
    return msg


# --- Twilio's messages ------------------------------------------------------------


def test_twilio_side_builders_send_counters_as_strings():
    media = json.loads(
        wire.inbound_media_message(
            stream_sid=STREAM_SID, sequence_number=4, chunk=2, timestamp_ms=5, payload_b64=PAYLOAD
        )
    )
    assert media == media_dict()
    start = json.loads(
        wire.start_message(
            stream_sid=STREAM_SID,
            call_sid=CALL_SID,
            account_sid=ACCOUNT_SID,
            sequence_number=1,
            custom_parameters={"k": "v"},
        )
    )
    assert start == {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": STREAM_SID,
        "start": {
            "accountSid": ACCOUNT_SID,
            "streamSid": STREAM_SID,
            "callSid": CALL_SID,
            "tracks": ["inbound"],
            "customParameters": {"k": "v"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }
    assert json.loads(wire.connected_message()) == {
        "event": "connected",
        "protocol": "Call",
        "version": "1.0.0",
    }
    assert json.loads(
        wire.stop_message(
            stream_sid=STREAM_SID, sequence_number=7, call_sid=CALL_SID, account_sid=ACCOUNT_SID
        )
    ) == {
        "event": "stop",
        "sequenceNumber": "7",
        "streamSid": STREAM_SID,
        "stop": {"accountSid": ACCOUNT_SID, "callSid": CALL_SID},
    }


# --- validate_outbound ----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        media_message(STREAM_SID, PAYLOAD),
        mark_message(STREAM_SID, "seg-1"),
        clear_message(STREAM_SID),
    ],
)
def test_validate_outbound_accepts_every_builder_output(text):
    assert validate_outbound(text, STREAM_SID) is None


def test_it_rejects_misspelled_payload_key():
    text = dumps({"event": "media", "streamSid": STREAM_SID, "media": {"playload": PAYLOAD}})
    reason = validate_outbound(text, STREAM_SID)
    assert reason is not None and "31951" in reason and "playload" in reason


def test_it_rejects_an_extra_top_level_field():
    msg = {"event": "clear", "streamSid": STREAM_SID, "track": "outbound"}
    assert "track" in validate_outbound(dumps(msg), STREAM_SID)


def test_it_rejects_an_extra_field_inside_mark():
    msg = {"event": "mark", "streamSid": STREAM_SID, "mark": {"name": "a", "at": 1}}
    assert "mark.at" in validate_outbound(dumps(msg), STREAM_SID)


def test_it_rejects_outbound_sequence_number():
    msg = json.loads(media_message(STREAM_SID, PAYLOAD))
    msg["sequenceNumber"] = "1"
    assert "sequenceNumber" in validate_outbound(dumps(msg), STREAM_SID)


def test_it_rejects_a_missing_stream_sid_key():
    assert "streamSid" in validate_outbound('{"event":"clear"}', STREAM_SID)


@pytest.mark.parametrize("sid", [None, "", "MZ00000000000000000000000000000002"])
def test_it_rejects_a_stream_sid_that_is_not_the_active_one(sid):
    msg = {"event": "media", "streamSid": sid, "media": {"payload": PAYLOAD}}
    assert "not the active stream" in validate_outbound(dumps(msg), STREAM_SID)


def test_it_rejects_a_payload_with_a_wav_header():
    wav_b64 = base64.b64encode(b"RIFF\x24\x00\x00\x00WAVEfmt ").decode()
    reason = validate_outbound(media_message(STREAM_SID, wav_b64), STREAM_SID)
    assert "RIFF" in reason


def test_it_rejects_a_payload_that_is_not_base64():
    msg = {"event": "media", "streamSid": STREAM_SID, "media": {"payload": "not base64!"}}
    assert "base64" in validate_outbound(dumps(msg), STREAM_SID)


def test_it_rejects_binary_frames_as_31950():
    assert validate_outbound(media_message(STREAM_SID, PAYLOAD).encode(), STREAM_SID).startswith(
        "31950"
    )


def test_it_rejects_non_json_outbound():
    assert "not JSON" in validate_outbound("media " + PAYLOAD, STREAM_SID)


@pytest.mark.parametrize("event", ["start", "stop", "dtmf", "Media", None])
def test_it_rejects_events_a_server_may_not_send(event):
    msg = {"event": event, "streamSid": STREAM_SID}
    assert "is not media, mark or clear" in validate_outbound(dumps(msg), STREAM_SID)


def test_it_rejects_json_that_is_not_an_object_outbound():
    assert validate_outbound("[]", STREAM_SID) is not None


def test_it_rejects_a_mark_name_that_is_not_a_string():
    msg = {"event": "mark", "streamSid": STREAM_SID, "mark": {"name": 3}}
    assert validate_outbound(dumps(msg), STREAM_SID) is not None
