"""Twilio's half of the Media Streams protocol, for the emulator that plays Twilio.

The builders write the messages Twilio sends a stream server (`connected`, `start`,
inbound `media`, `dtmf`, mark echoes, `stop`) with Twilio's exact shapes, counters as
decimal strings. `validate_outbound` checks what our server sends the way Twilio does, so
a test fails where production would. The server's half (parsing these messages, building
media/mark/clear) is `callmedia.protocol`.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

# --- Twilio -> the stream server ---------------------------------------------

_MULAW_MEDIA_FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def connected_message() -> str:
    return _dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def start_message(
    *,
    stream_sid: str,
    call_sid: str,
    account_sid: str,
    sequence_number: int,
    custom_parameters: dict[str, str],
    tracks: tuple[str, ...] = ("inbound",),
) -> str:
    return _dumps(
        {
            "event": "start",
            "sequenceNumber": str(sequence_number),
            "streamSid": stream_sid,
            "start": {
                "accountSid": account_sid,
                "streamSid": stream_sid,
                "callSid": call_sid,
                "tracks": list(tracks),
                "customParameters": dict(custom_parameters),
                "mediaFormat": dict(_MULAW_MEDIA_FORMAT),
            },
        }
    )


def inbound_media_message(
    *,
    stream_sid: str,
    sequence_number: int,
    chunk: int,
    timestamp_ms: int,
    payload_b64: str,
    track: str = "inbound",
) -> str:
    return _dumps(
        {
            "event": "media",
            "sequenceNumber": str(sequence_number),
            "streamSid": stream_sid,
            "media": {
                "track": track,
                "chunk": str(chunk),
                "timestamp": str(timestamp_ms),
                "payload": payload_b64,
            },
        }
    )


def dtmf_message(
    *, stream_sid: str, sequence_number: int, digit: str, track: str = "inbound_track"
) -> str:
    return _dumps(
        {
            "event": "dtmf",
            "sequenceNumber": str(sequence_number),
            "streamSid": stream_sid,
            "dtmf": {"track": track, "digit": digit},
        }
    )


def mark_echo_message(*, stream_sid: str, sequence_number: int, name: str) -> str:
    return _dumps(
        {
            "event": "mark",
            "sequenceNumber": str(sequence_number),
            "streamSid": stream_sid,
            "mark": {"name": name},
        }
    )


def stop_message(*, stream_sid: str, sequence_number: int, call_sid: str, account_sid: str) -> str:
    return _dumps(
        {
            "event": "stop",
            "sequenceNumber": str(sequence_number),
            "streamSid": stream_sid,
            "stop": {"accountSid": account_sid, "callSid": call_sid},
        }
    )


# --- The stream server -> Twilio, checked as Twilio checks it ----------------

# What Twilio accepts from a server: event -> required keys, exactly, at each level.
_OUTBOUND_KEYS = {
    "media": {"event", "streamSid", "media"},
    "mark": {"event", "streamSid", "mark"},
    "clear": {"event", "streamSid"},
}
_OUTBOUND_INNER_KEYS = {"media": {"payload"}, "mark": {"name"}}


def validate_outbound(text: str | bytes, active_stream_sid: str) -> str | None:
    """Return why Twilio would reject this server message, or None if it accepts it.

    Mirrors Twilio errors 31950 (binary frame) and 31951 (invalid message).
    """
    if not isinstance(text, str):
        return "31950: binary frame"
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):
        return "31951: not JSON"
    if type(msg) is not dict:
        return "31951: not a JSON object"
    event = msg.get("event")
    if type(event) is not str or event not in _OUTBOUND_KEYS:
        return f"31951: event {event!r} is not media, mark or clear"
    problem = _key_problem(msg, _OUTBOUND_KEYS[event], "")
    if problem:
        return problem
    if msg["streamSid"] != active_stream_sid:
        return f"31951: streamSid {msg['streamSid']!r} is not the active stream"
    if event == "clear":
        return None
    inner = msg[event]
    if type(inner) is not dict:
        return f"31951: {event!r} must be an object"
    problem = _key_problem(inner, _OUTBOUND_INNER_KEYS[event], f"{event}.")
    if problem:
        return problem
    if event == "mark":
        return None if type(inner["name"]) is str else "31951: mark.name must be a string"
    return _payload_problem(inner["payload"])


def _key_problem(obj: dict[str, Any], expected: set[str], where: str) -> str | None:
    # Report both sides: a misspelled key ("playload") is one missing and one extra.
    problems = []
    missing = expected - obj.keys()
    if missing:
        problems.append(f"missing key(s) {', '.join(where + k for k in sorted(missing))}")
    extra = obj.keys() - expected
    if extra:
        problems.append(f"unexpected key(s) {', '.join(where + k for k in sorted(extra))}")
    return "31951: " + "; ".join(problems) if problems else None


def _payload_problem(payload: object) -> str | None:
    if type(payload) is not str:
        return "31951: media.payload must be a base64 string"
    try:
        audio = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return "31951: media.payload is not valid base64"
    if audio.startswith(b"RIFF"):
        # Twilio plays header bytes as a click; a server should only send raw mu-law.
        return "31951: media.payload starts with a RIFF/WAV header"
    return None
