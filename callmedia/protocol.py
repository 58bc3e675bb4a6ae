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
        # Hot path (50 frames/s per call): plain key access, and only when something
        # is wrong fall back to the slow parser, which says exactly what.
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
        if (
            type(event.payload) is str
            and type(event.stream_sid) is str
            and type(event.track) is str
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
    if type(value) is str and value.isdigit():
        return int(value)
    if type(value) is int:
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


def _int_field(obj: dict[str, Any], key: str, where: str = "") -> int:
    value = _field(obj, key, where)
    try:
        return _to_int(value)
    except ValueError:
        raise ProtocolError(
            "bad_value", f"field '{where}{key}' must be a decimal integer, got {_brief(value)}"
        ) from None


def _obj_field(obj: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
    value = _field(obj, key, where)
    if type(value) is not dict:
        raise ProtocolError(
            "bad_value", f"field '{where}{key}' must be an object, got {_brief(value)}"
        )
    return value


def _parse_connected(msg: dict[str, Any]) -> Connected:
    return Connected(protocol=_str_field(msg, "protocol"), version=_str_field(msg, "version"))


def _parse_start(msg: dict[str, Any]) -> Start:
    start = _obj_field(msg, "start")
    tracks = _field(start, "tracks", "start.")
    if type(tracks) is not list or not all(type(t) is str for t in tracks):
        raise ProtocolError(
            "bad_value", f"field 'start.tracks' must be a list of strings, got {_brief(tracks)}"
        )
    # Twilio always sends customParameters, but an absent one means "no parameters".
    params = start.get("customParameters", {})
    if type(params) is not dict or not all(type(v) is str for v in params.values()):
        raise ProtocolError(
            "bad_value",
            f"field 'start.customParameters' must map names to strings, got {_brief(params)}",
        )
    return Start(
        sequence_number=_int_field(msg, "sequenceNumber"),
        stream_sid=_str_field(msg, "streamSid"),
        call_sid=_str_field(start, "callSid", "start."),
        account_sid=_str_field(start, "accountSid", "start."),
        tracks=tuple(tracks),
        custom_parameters=params,
        media_format=_obj_field(start, "mediaFormat", "start."),
    )


def _parse_media(msg: dict[str, Any]) -> Media:
    media = _obj_field(msg, "media")
    return Media(
        sequence_number=_int_field(msg, "sequenceNumber"),
        stream_sid=_str_field(msg, "streamSid"),
        track=_str_field(media, "track", "media."),
        chunk=_int_field(media, "chunk", "media."),
        timestamp_ms=_int_field(media, "timestamp", "media."),
        payload=_str_field(media, "payload", "media."),
    )


def _parse_dtmf(msg: dict[str, Any]) -> Dtmf:
    dtmf = _obj_field(msg, "dtmf")
    return Dtmf(
        sequence_number=_int_field(msg, "sequenceNumber"),
        stream_sid=_str_field(msg, "streamSid"),
        track=_str_field(dtmf, "track", "dtmf."),
        digit=_str_field(dtmf, "digit", "dtmf."),
    )


def _parse_mark(msg: dict[str, Any]) -> Mark:
    mark = _obj_field(msg, "mark")
    return Mark(
        sequence_number=_int_field(msg, "sequenceNumber"),
        stream_sid=_str_field(msg, "streamSid"),
        name=_str_field(mark, "name", "mark."),
    )


def _parse_stop(msg: dict[str, Any]) -> Stop:
    stop = _obj_field(msg, "stop")
    return Stop(
        sequence_number=_int_field(msg, "sequenceNumber"),
        stream_sid=_str_field(msg, "streamSid"),
        call_sid=_str_field(stop, "callSid", "stop."),
        account_sid=_str_field(stop, "accountSid", "stop."),
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
