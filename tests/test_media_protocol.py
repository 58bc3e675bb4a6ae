import base64
import json

import pytest
from hypothesis import given

from callmedia import protocol
from callmedia.protocol import (
    Connected,
    Dtmf,
    Mark,
    Media,
    ProtocolError,
    Start,
    Stop,
    clear_message,
    mark_message,
    media_message,
    parse,
)
from calls.simulator import wire

from .stream_fuzz import bounds_problem, fuzz_settings, hostile_frames

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


def reason_of(text: str | bytes) -> str:
    with pytest.raises(ProtocolError) as excinfo:
        parse(text)
    return excinfo.value.reason


# --- parse: one test per inbound event ---------------------------------------


def test_it_parses_connected():
    event = parse('{"event":"connected","protocol":"Call","version":"1.0.0"}')
    assert event == Connected(protocol="Call", version="1.0.0")


def test_it_parses_start_with_parameters_and_media_format():
    text = wire.start_message(
        stream_sid=STREAM_SID,
        call_sid=CALL_SID,
        account_sid=ACCOUNT_SID,
        sequence_number=1,
        custom_parameters={"token": "abc"},
    )
    assert parse(text) == Start(
        sequence_number=1,
        stream_sid=STREAM_SID,
        call_sid=CALL_SID,
        account_sid=ACCOUNT_SID,
        tracks=("inbound",),
        custom_parameters={"token": "abc"},
        media_format={"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    )


def test_it_parses_media_with_numeric_strings_as_ints_and_keeps_payload_base64():
    event = parse(dumps(media_dict()))
    assert event == Media(
        sequence_number=4,
        stream_sid=STREAM_SID,
        track="inbound",
        chunk=2,
        timestamp_ms=5,
        payload=PAYLOAD,
    )
    assert isinstance(event.payload, str)


def test_it_parses_dtmf():
    text = wire.dtmf_message(stream_sid=STREAM_SID, sequence_number=5, digit="1")
    assert parse(text) == Dtmf(
        sequence_number=5, stream_sid=STREAM_SID, track="inbound_track", digit="1"
    )


def test_it_parses_mark_echo():
    text = wire.mark_echo_message(stream_sid=STREAM_SID, sequence_number=6, name="seg-1")
    assert parse(text) == Mark(sequence_number=6, stream_sid=STREAM_SID, name="seg-1")


def test_it_parses_stop():
    text = wire.stop_message(
        stream_sid=STREAM_SID, sequence_number=7, call_sid=CALL_SID, account_sid=ACCOUNT_SID
    )
    assert parse(text) == Stop(
        sequence_number=7, stream_sid=STREAM_SID, call_sid=CALL_SID, account_sid=ACCOUNT_SID
    )


def test_it_parses_the_exact_samples_from_the_protocol_notes():
    samples = [
        '{"event":"start","sequenceNumber":"1","streamSid":"MZ1","start":{"accountSid":"AC1",'
        '"streamSid":"MZ1","callSid":"CA1","tracks":["inbound"],"customParameters":{"k":"v"},'
        '"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}',
        '{"event":"media","sequenceNumber":"4","streamSid":"MZ1","media":{"track":"inbound",'
        '"chunk":"2","timestamp":"5","payload":"/w=="}}',
        '{"event":"dtmf","sequenceNumber":"5","streamSid":"MZ1","dtmf":{"track":"inbound_track",'
        '"digit":"1"}}',
        '{"event":"mark","sequenceNumber":"6","streamSid":"MZ1","mark":{"name":"label"}}',
        '{"event":"stop","sequenceNumber":"7","streamSid":"MZ1","stop":{"accountSid":"AC1",'
        '"callSid":"CA1"}}',
    ]
    types = [type(parse(sample)) for sample in samples]
    assert types == [Start, Media, Dtmf, Mark, Stop]


def test_it_parses_non_ascii_custom_parameters():
    text = wire.start_message(
        stream_sid=STREAM_SID,
        call_sid=CALL_SID,
        account_sid=ACCOUNT_SID,
        sequence_number=1,
        custom_parameters={"name": "Zoë"},
    )
    assert parse(text).custom_parameters == {"name": "Zoë"}


# --- parse: every ProtocolError reason ---------------------------------------


def test_it_rejects_binary_frames():
    assert reason_of(dumps(media_dict()).encode()) == "binary"


def test_it_rejects_oversized_messages():
    huge = dumps(media_dict(media={"payload": "A" * protocol.MAX_MESSAGE_BYTES}))
    assert reason_of(huge) == "too_large"


def test_it_counts_utf8_bytes_not_characters_for_the_size_limit():
    # 3 bytes per character: under the limit in characters, over it in bytes.
    text = json.dumps(
        {"event": "connected", "protocol": "€" * (protocol.MAX_MESSAGE_BYTES // 3 + 1)},
        ensure_ascii=False,
    )
    assert len(text) < protocol.MAX_MESSAGE_BYTES
    assert reason_of(text) == "too_large"


def test_it_rejects_non_json():
    assert reason_of('{"event": "media",') == "not_json"


def test_it_rejects_deeply_nested_json_as_not_json():
    assert reason_of("[" * 30000 + "]" * 30000) == "not_json"


def test_it_rejects_json_that_is_not_an_object():
    assert reason_of('["media"]') == "not_object"


def test_it_rejects_unknown_events():
    assert reason_of('{"event":"playback"}') == "unknown_event"


def test_it_rejects_a_message_without_event_as_missing_field():
    assert reason_of('{"streamSid":"MZ1"}') == "missing_field"


@pytest.mark.parametrize("key", ["payload", "timestamp", "chunk", "track"])
def test_it_names_the_missing_media_field(key):
    msg = media_dict()
    del msg["media"][key]
    with pytest.raises(ProtocolError) as excinfo:
        parse(dumps(msg))
    assert excinfo.value.reason == "missing_field"
    assert f"media.{key}" in str(excinfo.value)


def test_it_rejects_media_without_stream_sid():
    msg = media_dict()
    del msg["streamSid"]
    with pytest.raises(ProtocolError, match="streamSid") as excinfo:
        parse(dumps(msg))
    assert excinfo.value.reason == "missing_field"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"sequenceNumber": "four"}, "sequenceNumber"),
        ({"sequenceNumber": "-4"}, "sequenceNumber"),
        ({"sequenceNumber": True}, "sequenceNumber"),
        ({"sequenceNumber": 4.5}, "sequenceNumber"),
        ({"streamSid": None}, "streamSid"),
        ({"media": "payload"}, "media"),
        (
            {"media": {"track": "inbound", "chunk": "2", "timestamp": "x", "payload": PAYLOAD}},
            "media.timestamp",
        ),
        (
            {"media": {"track": "inbound", "chunk": "2", "timestamp": "5", "payload": 7}},
            "media.payload",
        ),
    ],
)
def test_it_rejects_media_fields_of_the_wrong_type_naming_the_field(overrides, field):
    with pytest.raises(ProtocolError) as excinfo:
        parse(dumps(media_dict(**overrides)))
    assert excinfo.value.reason == "bad_value"
    assert f"'{field}'" in str(excinfo.value)


def test_it_accepts_integer_counters_as_well_as_strings():
    msg = media_dict(sequenceNumber=4)
    msg["media"]["timestamp"] = 5
    event = parse(dumps(msg))
    assert (event.sequence_number, event.timestamp_ms) == (4, 5)


def test_it_rejects_start_with_non_string_custom_parameter():
    text = wire.start_message(
        stream_sid=STREAM_SID,
        call_sid=CALL_SID,
        account_sid=ACCOUNT_SID,
        sequence_number=1,
        custom_parameters={"n": 1},  # type: ignore[dict-item]
    )
    with pytest.raises(ProtocolError, match="customParameters") as excinfo:
        parse(text)
    assert excinfo.value.reason == "bad_value"


def test_it_rejects_start_without_call_sid():
    msg = json.loads(
        wire.start_message(
            stream_sid=STREAM_SID,
            call_sid=CALL_SID,
            account_sid=ACCOUNT_SID,
            sequence_number=1,
            custom_parameters={},
        )
    )
    del msg["start"]["callSid"]
    with pytest.raises(ProtocolError, match="start.callSid") as excinfo:
        parse(dumps(msg))
    assert excinfo.value.reason == "missing_field"


def test_it_rejects_a_mark_echo_without_name():
    with pytest.raises(ProtocolError, match="mark.name") as excinfo:
        parse('{"event":"mark","sequenceNumber":"6","streamSid":"MZ1","mark":{}}')
    assert excinfo.value.reason == "missing_field"


def test_protocol_error_is_a_value_error():
    assert issubclass(ProtocolError, ValueError)


# --- outbound builders --------------------------------------------------------


def test_media_message_has_exactly_the_shape_twilio_accepts():
    text = media_message(STREAM_SID, PAYLOAD)
    assert json.loads(text) == {
        "event": "media",
        "streamSid": STREAM_SID,
        "media": {"payload": PAYLOAD},
    }
    assert text == dumps(json.loads(text))


def test_mark_message_has_exactly_the_shape_twilio_accepts():
    text = mark_message(STREAM_SID, "seg-17")
    assert json.loads(text) == {
        "event": "mark",
        "streamSid": STREAM_SID,
        "mark": {"name": "seg-17"},
    }
    assert text == dumps(json.loads(text))


def test_clear_message_has_exactly_the_shape_twilio_accepts():
    text = clear_message(STREAM_SID)
    assert json.loads(text) == {"event": "clear", "streamSid": STREAM_SID}
    assert text == dumps(json.loads(text))


def test_templated_builders_match_json_dumps_byte_for_byte():
    sid = 'MZ"odd\\sid'
    name = 'quote " backslash \\ newline \n accent é'
    assert media_message(sid, PAYLOAD) == dumps(
        {"event": "media", "streamSid": sid, "media": {"payload": PAYLOAD}}
    )
    assert mark_message(sid, name) == dumps(
        {"event": "mark", "streamSid": sid, "mark": {"name": name}}
    )
    assert clear_message(sid) == dumps({"event": "clear", "streamSid": sid})


@pytest.mark.parametrize("sid", [None, ""])
def test_builders_refuse_a_missing_stream_sid(sid):
    with pytest.raises(ValueError):
        media_message(sid, PAYLOAD)
    with pytest.raises(ValueError):
        mark_message(sid, "seg-1")
    with pytest.raises(ValueError):
        clear_message(sid)


@pytest.mark.parametrize("payload", ["", "not base64!", 'AA"}', "AAA", b"AAAA", None])
def test_media_message_refuses_a_payload_that_is_not_base64_text(payload):
    with pytest.raises(ValueError):
        media_message(STREAM_SID, payload)


@pytest.mark.parametrize("name", ["", None, 17])
def test_mark_message_refuses_a_name_that_is_not_a_non_empty_string(name):
    with pytest.raises(ValueError):
        mark_message(STREAM_SID, name)


# --- parse: every field bounded before it reaches the session or the database -------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timestamp", "1" * 30),  # once overflowed the transcript's offset column
        ("timestamp", str(protocol.MAX_TIMESTAMP_MS + 1)),
        ("timestamp", 10**30),
        ("chunk", str(2**31)),
        ("chunk", -1),
        ("chunk", "٣"),  # a digit to str.isdigit, not to Twilio
        ("payload", ""),
        ("payload", "not base64!"),
        ("payload", "A" * (protocol.MAX_MEDIA_PAYLOAD_CHARS + 4)),
        ("track", "x" * 33),
        ("track", "in bound"),
    ],
)
def test_it_rejects_media_fields_out_of_range(field, value):
    msg = media_dict()
    msg["media"][field] = value
    with pytest.raises(ProtocolError, match=f"media.{field}") as excinfo:
        parse(dumps(msg))
    assert excinfo.value.reason == "bad_value"


@pytest.mark.parametrize("sid", ["", "MZ", "mz123", "MZ" + "0" * 63, "MZ 1", "MZ\u00e91", "MZ1\n"])
def test_it_rejects_stream_sids_of_the_wrong_shape(sid):
    with pytest.raises(ProtocolError, match="streamSid") as excinfo:
        parse(dumps(media_dict(streamSid=sid)))
    assert excinfo.value.reason == "bad_value"


def test_it_rejects_a_sequence_number_beyond_the_counter_range():
    assert reason_of(dumps(media_dict(sequenceNumber=str(protocol.MAX_COUNTER + 1)))) == "bad_value"
    assert parse(dumps(media_dict(sequenceNumber=str(protocol.MAX_COUNTER)))).sequence_number


@pytest.mark.parametrize("digit", ["", "A", "55", "x", "١"])
def test_it_rejects_a_dtmf_digit_off_the_keypad(digit):
    text = dumps(
        {
            "event": "dtmf",
            "sequenceNumber": "5",
            "streamSid": STREAM_SID,
            "dtmf": {"track": "inbound_track", "digit": digit},
        }
    )
    with pytest.raises(ProtocolError, match="dtmf.digit"):
        parse(text)


@pytest.mark.parametrize("digit", sorted(protocol.DTMF_DIGITS))
def test_it_accepts_every_keypad_digit(digit):
    text = wire.dtmf_message(stream_sid=STREAM_SID, sequence_number=5, digit=digit)
    assert parse(text).digit == digit


@pytest.mark.parametrize("name", ["", "m" * (protocol.MAX_MARK_NAME_CHARS + 1)])
def test_it_rejects_mark_names_empty_or_too_long(name):
    text = wire.mark_echo_message(stream_sid=STREAM_SID, sequence_number=6, name=name)
    with pytest.raises(ProtocolError, match="mark.name"):
        parse(text)


@pytest.mark.parametrize(
    "params",
    [
        {f"p{i}": "v" for i in range(protocol.MAX_CUSTOM_PARAMETERS + 1)},
        {"token": "x" * protocol.MAX_CUSTOM_PARAMETER_CHARS},
        {"token": "a\x00b"},
    ],
)
def test_it_rejects_custom_parameters_beyond_twilio_limits(params):
    text = wire.start_message(
        stream_sid=STREAM_SID,
        call_sid=CALL_SID,
        account_sid=ACCOUNT_SID,
        sequence_number=1,
        custom_parameters=params,
    )
    with pytest.raises(ProtocolError, match="customParameters"):
        parse(text)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("tracks", ["inbound"] * 5),
        ("tracks", ["x" * 40]),
        ("mediaFormat", {"k": "v" * 65}),
        ("mediaFormat", {"sampleRate": 10**20}),
        ("mediaFormat", {"nested": {"a": 1}}),
        ("callSid", "CA" + "1" * 63),
    ],
)
def test_it_rejects_start_fields_out_of_shape(key, value):
    msg = json.loads(
        wire.start_message(
            stream_sid=STREAM_SID,
            call_sid=CALL_SID,
            account_sid=ACCOUNT_SID,
            sequence_number=1,
            custom_parameters={},
        )
    )
    msg["start"][key] = value
    with pytest.raises(ProtocolError, match=f"start.{key}") as excinfo:
        parse(dumps(msg))
    assert excinfo.value.reason == "bad_value"


@fuzz_settings
@given(frame=hostile_frames(STREAM_SID, CALL_SID))
def test_any_frame_parses_within_bounds_or_is_a_protocol_error(frame):
    try:
        event = parse(frame)
    except ProtocolError:
        return
    assert bounds_problem(event) is None
