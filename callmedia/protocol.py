"""Twilio Media Streams messages: parse what Twilio sends, build what we send.

This module is the only place our server writes stream JSON, so the exact shapes
Twilio accepts are enforced in one spot. Pure: no Django, no I/O. Twilio's half of
the protocol (its messages, and its checks on ours) is the emulator's:
calls/simulator/wire.py.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

# Twilio's own frames are well under 1 KiB; anything near this is not Twilio.
MAX_MESSAGE_BYTES = 64 * 1024

# A str of at most this many characters cannot exceed MAX_MESSAGE_BYTES in UTF-8,
# which spares the hot path an encode() just to measure it.
_MAX_CHARS_WITHOUT_ENCODING = MAX_MESSAGE_BYTES // 4

# Bounds on every field, so that nothing out of shape reaches the session or the database
# (docs/twilio-media-streams.md#field-bounds). Twilio's own values are far inside them.
# Counters: 50 messages a second for a day is 4.3 million; this also fits any int column.
MAX_COUNTER = 2**31 - 1
# media.timestamp is ms since the stream started: twice Twilio's longest call (24 h).
MAX_TIMESTAMP_MS = 48 * 3600 * 1000
_MAX_COUNTER_DIGITS = len(str(MAX_COUNTER))
# SIDs: two capital letters and 32 hex digits from Twilio; anything like it, short, passes.
MAX_SID_CHARS = 64
_SID_RE = re.compile(r"[A-Z]{2}[0-9A-Za-z]{1,62}")
# Track names ("inbound", "outbound", "inbound_track") and protocol words ("Call", "1.0.0").
MAX_WORD_CHARS = 32
_WORD_RE = re.compile(r"[A-Za-z0-9_.\-]{1,32}")
MAX_TRACKS = 4
# Our mark names are short ("seg-12", "play-announcement-3"); Twilio echoes them as sent.
MAX_MARK_NAME_CHARS = 256
# Twilio: each <Parameter>'s name and value together stay under 500 characters.
MAX_CUSTOM_PARAMETERS = 32
MAX_CUSTOM_PARAMETER_CHARS = 500
# mediaFormat is {"encoding", "sampleRate", "channels"}: a few short scalars.
MAX_MEDIA_FORMAT_KEYS = 8
MAX_MEDIA_FORMAT_VALUE_CHARS = 64
# One inbound frame is 20 ms = 160 bytes = 216 base64 characters; a second of audio is
# 10,668. More than that in one frame is not Twilio.
MAX_MEDIA_PAYLOAD_CHARS = 10_668
# The keys of a phone keypad: all Twilio reports in a `dtmf` event.
DTMF_DIGITS = frozenset("0123456789*#")


# Close codes for a stream we end for our own reasons (docs/twilio-media-streams.md#close-codes).
# Servers may only send 1000 or 3000-4999 (RFC 6455, section 7.4.2): daphne's WebSocket
# library refuses 1008, and the close used to fail with a traceback and a 1011.
CLOSE_STREAM_REFUSED = 4001  # the `start` had no valid stream token for its call
CLOSE_START_TIMEOUT = 4002  # no valid `start` within STREAM_START_TIMEOUT_SECONDS
CLOSE_START_FAILED = 4003  # the `start` could not be recorded (e.g. the database is down)


ProtocolErrorReason = Literal[
    "binary", "too_large", "not_json", "not_object", "unknown_event", "missing_field", "bad_value"
]


class ProtocolError(ValueError):
    """An inbound frame that is not a valid Twilio Media Streams message."""

    def __init__(self, reason: ProtocolErrorReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# --- Inbound events (Twilio -> us) ------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class Start:
    sequence_number: int
    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    custom_parameters: dict[str, str]
    media_format: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Media:
    sequence_number: int
    stream_sid: str
    track: str
    chunk: int
    timestamp_ms: int
    # Kept as base64 text: it is forwarded to the model as is, never decoded here.
    payload: str


@dataclass(frozen=True, slots=True)
class Dtmf:
    sequence_number: int
    stream_sid: str
    track: str
    digit: str


@dataclass(frozen=True, slots=True)
class Mark:
    sequence_number: int
    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class Stop:
    sequence_number: int
    stream_sid: str
    call_sid: str
    account_sid: str


TwilioEvent = Connected | Start | Media | Dtmf | Mark | Stop


def parse(text: str | bytes) -> TwilioEvent:
    """Parse one WebSocket frame from Twilio; raise ProtocolError if it is not valid."""
    if not isinstance(text, str):
        if isinstance(text, bytes | bytearray | memoryview):
            # Twilio only ever sends text frames.
            raise ProtocolError("binary", "binary frame; Twilio sends JSON text frames only")
        raise TypeError(f"expected str or bytes, got {type(text).__name__}")
    if len(text) > _MAX_CHARS_WITHOUT_ENCODING:
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_MESSAGE_BYTES:
            raise ProtocolError(
                "too_large", f"message of {size} bytes exceeds {MAX_MESSAGE_BYTES} bytes"
            )
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("not_json", "message is not valid JSON") from None
    if type(msg) is not dict:
        raise ProtocolError("not_object", f"message is a JSON {type(msg).__name__}, not an object")

    if msg.get("event") == "media":
        # Hot path (50 frames/s per call): plain key access and cheap checks, and only when
        # something is wrong fall back to the slow parser, which says exactly what.
        try:
            media = msg["media"]
            event = Media(
                _to_int(msg["sequenceNumber"]),
                msg["streamSid"],
                media["track"],
                _to_int(media["chunk"]),
                _to_int(media["timestamp"]),
                media["payload"],
            )
        except (KeyError, TypeError, ValueError):
            return _parse_media(msg)
        payload = event.payload
        if (
            type(payload) is str
            and type(event.stream_sid) is str
            and type(event.track) is str
            and event.timestamp_ms <= MAX_TIMESTAMP_MS
            and 0 < len(payload) <= MAX_MEDIA_PAYLOAD_CHARS
            and not len(payload) % 4
            and _SID_RE.fullmatch(event.stream_sid)
            and _WORD_RE.fullmatch(event.track)
            and _BASE64_RE.fullmatch(payload)
        ):
            return event
        return _parse_media(msg)

    if "event" not in msg:
        raise ProtocolError("missing_field", "message has no 'event'")
    parser = _PARSERS.get(msg["event"]) if type(msg["event"]) is str else None
    if parser is None:
        raise ProtocolError("unknown_event", f"unknown event {msg['event']!r}")
    return parser(msg)


def _to_int(value: object) -> int:
    # Twilio sends counters as decimal strings; accept real ints too, never bools or floats.
    # Both are bounded before int() is asked to convert them (a 30-digit timestamp once
    # reached the database and overflowed it).
    if type(value) is str:
        if len(value) <= _MAX_COUNTER_DIGITS and value.isdigit() and value.isascii():
            number = int(value)
            if number <= MAX_COUNTER:
                return number
    elif type(value) is int and 0 <= value <= MAX_COUNTER:
        return value
    raise ValueError(value)


def _brief(value: object) -> str:
    # Errors get logged; a bad multi-kilobyte payload should not flood the log.
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field(obj: dict[str, Any], key: str, where: str) -> Any:
    try:
        return obj[key]
    except KeyError:
        raise ProtocolError("missing_field", f"missing field '{where}{key}'") from None


def _str_field(obj: dict[str, Any], key: str, where: str = "") -> str:
    value = _field(obj, key, where)
    if type(value) is not str:
        raise ProtocolError(
            "bad_value", f"field '{where}{key}' must be a string, got {_brief(value)}"
        )
    return value


def _int_field(
    obj: dict[str, Any], key: str, where: str = "", *, maximum: int = MAX_COUNTER
) -> int:
    value = _field(obj, key, where)
    try:
        number = _to_int(value)
    except ValueError:
        number = -1
    if not 0 <= number <= maximum:
        raise ProtocolError(
            "bad_value",
            f"field '{where}{key}' must be a decimal integer from 0 to {maximum}, "
            f"got {_brief(value)}",
        )
    return number


def _shaped_field(
    obj: dict[str, Any], key: str, where: str, shape: re.Pattern[str], what: str
) -> str:
    value = _str_field(obj, key, where)
    if not shape.fullmatch(value):
        raise ProtocolError(
            "bad_value", f"field '{where}{key}' must be {what}, got {_brief(value)}"
        )
    return value


def _sid_field(obj: dict[str, Any], key: str, where: str = "") -> str:
    return _shaped_field(obj, key, where, _SID_RE, f"a SID of at most {MAX_SID_CHARS} letters")


def _word_field(obj: dict[str, Any], key: str, where: str = "") -> str:
    return _shaped_field(obj, key, where, _WORD_RE, f"a word of at most {MAX_WORD_CHARS} chars")


def _obj_field(obj: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
    value = _field(obj, key, where)
    if type(value) is not dict:
        raise ProtocolError(
            "bad_value", f"field '{where}{key}' must be an object, got {_brief(value)}"
        )
    return value


def _custom_parameters(start: dict[str, Any]) -> dict[str, str]:
    # Twilio always sends customParameters, but an absent one means "no parameters".
    params = start.get("customParameters", {})
    if (
        type(params) is not dict
        or len(params) > MAX_CUSTOM_PARAMETERS
        or not all(
            type(value) is str
            and len(name) + len(value) < MAX_CUSTOM_PARAMETER_CHARS
            # Stored as JSON, and PostgreSQL's jsonb has no NUL character.
            and "\x00" not in name
            and "\x00" not in value
            for name, value in params.items()
        )
    ):
        raise ProtocolError(
            "bad_value",
            f"field 'start.customParameters' must map at most {MAX_CUSTOM_PARAMETERS} names "
            f"to strings, each pair under {MAX_CUSTOM_PARAMETER_CHARS} characters, "
            f"got {_brief(params)}",
        )
    return params


def _media_format(start: dict[str, Any]) -> dict[str, Any]:
    media_format = _obj_field(start, "mediaFormat", "start.")
    if len(media_format) > MAX_MEDIA_FORMAT_KEYS or not all(
        _WORD_RE.fullmatch(name)
        and (
            (
                type(value) is str
                and len(value) <= MAX_MEDIA_FORMAT_VALUE_CHARS
                and "\x00" not in value  # stored as JSON: PostgreSQL's jsonb has no NUL
            )
            or (type(value) is int and 0 <= value <= MAX_COUNTER)
        )
        for name, value in media_format.items()
    ):
        raise ProtocolError(
            "bad_value",
            "field 'start.mediaFormat' must hold a few short strings and integers, "
            f"got {_brief(media_format)}",
        )
    return media_format


def _parse_connected(msg: dict[str, Any]) -> Connected:
    return Connected(protocol=_word_field(msg, "protocol"), version=_word_field(msg, "version"))


def _parse_start(msg: dict[str, Any]) -> Start:
    start = _obj_field(msg, "start")
    tracks = _field(start, "tracks", "start.")
    if (
        type(tracks) is not list
        or len(tracks) > MAX_TRACKS
        or not all(type(t) is str and _WORD_RE.fullmatch(t) for t in tracks)
    ):
        raise ProtocolError(
            "bad_value",
            f"field 'start.tracks' must be a list of at most {MAX_TRACKS} track names, "
            f"got {_brief(tracks)}",
        )
    return Start(
        sequence_number=_int_field(msg, "sequenceNumber"),
        stream_sid=_sid_field(msg, "streamSid"),
        call_sid=_sid_field(start, "callSid", "start."),
        account_sid=_sid_field(start, "accountSid", "start."),
        tracks=tuple(tracks),
        custom_parameters=_custom_parameters(start),
        media_format=_media_format(start),
    )


def _parse_media(msg: dict[str, Any]) -> Media:
    media = _obj_field(msg, "media")
    event = Media(
        sequence_number=_int_field(msg, "sequenceNumber"),
        stream_sid=_sid_field(msg, "streamSid"),
        track=_word_field(media, "track", "media."),
        chunk=_int_field(media, "chunk", "media."),
        timestamp_ms=_int_field(media, "timestamp", "media.", maximum=MAX_TIMESTAMP_MS),
        payload=_str_field(media, "payload", "media."),
    )
    payload = event.payload
    if (
        not 0 < len(payload) <= MAX_MEDIA_PAYLOAD_CHARS
        or len(payload) % 4
        or not _BASE64_RE.fullmatch(payload)
    ):
        raise ProtocolError(
            "bad_value",
            f"field 'media.payload' must be base64 of 1 to {MAX_MEDIA_PAYLOAD_CHARS} "
            f"characters, got {_brief(payload)}",
        )
    return event


def _parse_dtmf(msg: dict[str, Any]) -> Dtmf:
    dtmf = _obj_field(msg, "dtmf")
    event = Dtmf(
        sequence_number=_int_field(msg, "sequenceNumber"),
        stream_sid=_sid_field(msg, "streamSid"),
        track=_word_field(dtmf, "track", "dtmf."),
        digit=_str_field(dtmf, "digit", "dtmf."),
    )
    if event.digit not in DTMF_DIGITS:
        raise ProtocolError(
            "bad_value", f"field 'dtmf.digit' must be one of 0-9 * #, got {_brief(event.digit)}"
        )
    return event


def _parse_mark(msg: dict[str, Any]) -> Mark:
    mark = _obj_field(msg, "mark")
    event = Mark(
        sequence_number=_int_field(msg, "sequenceNumber"),
        stream_sid=_sid_field(msg, "streamSid"),
        name=_str_field(mark, "name", "mark."),
    )
    if not 0 < len(event.name) <= MAX_MARK_NAME_CHARS:
        raise ProtocolError(
            "bad_value",
            f"field 'mark.name' must have 1 to {MAX_MARK_NAME_CHARS} characters, "
            f"got {_brief(event.name)}",
        )
    return event


def _parse_stop(msg: dict[str, Any]) -> Stop:
    stop = _obj_field(msg, "stop")
    return Stop(
        sequence_number=_int_field(msg, "sequenceNumber"),
        stream_sid=_sid_field(msg, "streamSid"),
        call_sid=_sid_field(stop, "callSid", "stop."),
        account_sid=_sid_field(stop, "accountSid", "stop."),
    )


_PARSERS = {
    "connected": _parse_connected,
    "start": _parse_start,
    "media": _parse_media,
    "dtmf": _parse_dtmf,
    "mark": _parse_mark,
    "stop": _parse_stop,
}


# --- Outbound messages (us -> Twilio) ----------------------------------------

# A cheap shape check for base64 (alphabet and padding; length is checked apart).
# Decoding would cost more than building the message.
_BASE64_RE = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def _check_stream_sid(stream_sid: object) -> None:
    # Sending before `start` arrived gives streamSid null, which Twilio rejects (31951).
    if type(stream_sid) is not str or not stream_sid:
        raise ValueError(f"stream_sid must be a non-empty string, got {stream_sid!r}")


@functools.lru_cache(maxsize=1024)
def _media_prefix(stream_sid: str) -> str:
    return '{"event":"media","streamSid":' + json.dumps(stream_sid) + ',"media":{"payload":"'


@functools.lru_cache(maxsize=1024)
def _mark_prefix(stream_sid: str) -> str:
    return '{"event":"mark","streamSid":' + json.dumps(stream_sid) + ',"mark":{"name":'


def media_message(stream_sid: str, payload_b64: str) -> str:
    """Audio for Twilio to play: base64 mu-law 8 kHz mono, no file header."""
    _check_stream_sid(stream_sid)
    # The template is only correct if the payload needs no JSON escaping, which the
    # base64 alphabet guarantees; the regex is much cheaper than decoding.
    if (
        type(payload_b64) is not str
        or not payload_b64
        or len(payload_b64) % 4
        or not _BASE64_RE.fullmatch(payload_b64)
    ):
        raise ValueError("payload_b64 must be a non-empty base64 string")
    return _media_prefix(stream_sid) + payload_b64 + '"}}'


def mark_message(stream_sid: str, name: str) -> str:
    """A mark Twilio echoes back once all audio sent before it has played."""
    _check_stream_sid(stream_sid)
    if type(name) is not str or not name:
        raise ValueError(f"mark name must be a non-empty string, got {name!r}")
    return _mark_prefix(stream_sid) + json.dumps(name) + "}}"


def clear_message(stream_sid: str) -> str:
    """Tell Twilio to drop all buffered audio now (it then echoes every pending mark)."""
    _check_stream_sid(stream_sid)
    return '{"event":"clear","streamSid":' + json.dumps(stream_sid) + "}"
