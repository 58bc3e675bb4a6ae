"""The console's words for calls, transcript lines and events, as staff read them.

Both the call's page and the live feed use these, so the two say the same thing; the live
page's script shows what the feed sends and formats nothing of its own.
"""

import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from django.utils import timezone

from .models import Call, Direction, EndReason, TranscriptEntry

# Who is audible on a call, as the live page says it; "" is nobody.
SPEAKING_LABELS = {
    "caller": "Caller is speaking",
    "agent": "Agent is speaking",
    "": "Nobody is speaking",
}


def offset_label(offset_ms: int) -> str:
    """Milliseconds from the start of the call as m:ss.s (h:mm:ss.s past an hour)."""
    tenths = offset_ms // 100
    minutes, tenths = divmod(tenths, 600)
    hours, minutes = divmod(minutes, 60)
    seconds = f"{tenths // 10:02d}.{tenths % 10}"
    return f"{hours}:{minutes:02d}:{seconds}" if hours else f"{minutes}:{seconds}"


def time_label(
    at: datetime | None, *, zone: ZoneInfo | None = None, with_date: bool = False
) -> str:
    """A moment as the staff member's clock shows it: "14:03:07" (or "2026-11-30 14:03:07"),
    in `zone`, else the zone active for the request (their own, see calls.middleware)."""
    if at is None:
        return ""
    local = timezone.localtime(at, zone)
    return local.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")


def time_zone_label(zone: ZoneInfo | None = None) -> str:
    """ "Europe/Paris (CET)": the zone's name and its abbreviation now; "UTC" alone."""
    zone = zone or timezone.get_current_timezone()
    abbreviation = timezone.now().astimezone(zone).tzname() or ""
    name = str(getattr(zone, "key", zone))
    if not abbreviation or abbreviation == name or abbreviation.lstrip("+-").isdigit():
        return name
    return f"{name} ({abbreviation})"


def seconds_label(ms: int | None) -> str:
    return "" if ms is None else f"{ms / 1000:.1f} s"


def duration_label(call: Call) -> str:
    seconds = call.duration_seconds
    if seconds is None and call.ended_at:
        seconds = int((call.ended_at - (call.answered_at or call.created_at)).total_seconds())
    if seconds is None:
        return ""
    minutes, seconds = divmod(max(0, seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def caller_label(call: Call) -> str:
    """The person at the other end: who rang us, or whom we rang."""
    number = call.from_number if call.direction == Direction.INBOUND else call.to_number
    return number or "unknown"


def agent_label(call: Call) -> str:
    """ "Front desk (+14155550100)": the agent, and the number of ours the call is on."""
    number = call.to_number if call.direction == Direction.INBOUND else call.from_number
    name = call.agent.name if call.agent_id else "No agent"
    return f"{name} ({number})" if number else name


def speaker_label(entry: TranscriptEntry) -> str:
    """"Caller", "Agent", or "Agent (said for alice)" for a sentence staff typed."""
    if entry.said_for:
        return f"{entry.get_speaker_display()} (said for {entry.said_for})"
    return entry.get_speaker_display()


def interruption_label(entry: TranscriptEntry) -> str:
    """ "Interrupted: caller heard 1.3 s" for an agent line cut off; "" for a whole one."""
    if not entry.interrupted:
        return ""
    heard = seconds_label(entry.heard_ms)
    return f"Interrupted: caller heard {heard}" if heard else "Interrupted"


def ended_label(call: Call) -> str:
    """ "Ended: staff hung up", as the live page says a call is over and why."""
    reason = call.get_end_reason_display()
    if not reason:
        return "Ended"
    if reason.startswith("Ended"):  # "Ended while the server was down" says it already
        return reason
    return f"Ended: {reason[:1].lower()}{reason[1:]}"


def transferred_label(call: Call) -> str:
    if not call.transferred_to:
        return ""
    return f"Transferred to {call.transferred_to}; the agent has left the call."


# What happened, as staff read it in a call's log. A kind not listed here (a new one) reads
# as its words, e.g. "stream_started" -> "Stream started".
EVENT_LABELS = {
    "answered": "Call answered",
    "answer_retried": "Twilio asked again for the call's answer",
    "outbound_placed": "Call placed",
    "unrouted": "No agent answers this number",
    "status": "Twilio status",
    "stream_connected": "Audio connected",
    "stream_refused": "Audio connection refused",
    "stream-started": "Audio stream started",
    "stream-stopped": "Audio stream stopped",
    "stream-error": "Audio stream error",
    "stream_bad_message": "Twilio sent a message we could not read",
    "stream_closed": "Audio closed",
    "barge_in": "Caller interrupted the agent",
    "agent_cut_off": "Agent cut off",
    "dtmf_transfer_cut_off": "Agent cut off by the transfer key",
    "limit_cut_off": "Agent cut off at the limit",
    "transfer_unavailable": "Transfer key pressed, nobody to transfer to",
    "goodbye_interrupted": "Caller interrupted the goodbye",
    "agent_error": "The agent's model failed",
    "limit_reached": "Limit reached",
    "clear": "Cleared the audio",
    "play": "Played a recording",
    "say": "Asked the agent to say",
    "staff_say_spoken": "The agent said it aloud",
    "transfer": "Transferred",
    "transfer_failed": "Transfer failed",
    "transfer_ended": "The person's call ended",
    "hangup": "Hung up",
    "hangup_failed": "Hang-up failed",
    "hangup_skipped": "Hang-up not needed",
    "ended": "Call ended",
    "resume_requested": "Reconnecting the call's audio",
    "resume_failed": "Could not reconnect the call's audio",
    "reconciled": "Closed after the server was down",
    "marked_ended": "Marked ended",
    "mark_ended_refused": "Not marked ended: Twilio says it is live",
}

# Why the model failed (calls.session.endings), in words.
MODEL_FAILURES = {
    "connect": "could not connect to the model",
    "dropped": "the model's connection dropped",
    "error": "the model reported an error",
    "crash": "the agent stopped working",
    "no_agent": "the agent could not be loaded",
}
LIMITS = {
    "max_call_seconds": "the longest a call may last",
    "idle_timeout_seconds": "the longest nobody may speak",
}
# Raw network errors (from aiohttp and the OS) as staff can act on them.
_NETWORK_ERRORS = (
    (
        re.compile(r"Cannot connect to host ([^\s:]+):(\d+)"),
        "Nothing answered at {0} (port {1}): the service is down or unreachable",
    ),
    (
        re.compile(r"Server disconnected|Connection reset|ConnectionResetError"),
        "The connection was cut",
    ),
    (re.compile(r"TimeoutError|timed out", re.IGNORECASE), "It did not answer in time"),
    (
        re.compile(r"WSServerHandshakeError|Invalid response status"),
        "It refused the connection (check the API key)",
    ),
)


def event_label(kind: str) -> str:
    return EVENT_LABELS.get(kind) or re.sub(r"[_-]+", " ", kind).capitalize()


def error_label(text: str) -> str:
    """An error as staff read it: a raw network error in words; our own messages as they are."""
    for pattern, words in _NETWORK_ERRORS:
        match = pattern.search(text)
        if match:
            return words.format(*match.groups())
    return text


def reason_label(reason: str) -> str:
    """A reason recorded with an event: an end reason's label, a model failure in words."""
    if reason in EndReason.values:
        label = EndReason(reason).label
        return label[:1].lower() + label[1:]
    if reason.startswith("model failure: "):
        failure = reason.removeprefix("model failure: ")
        return "the model failed: " + MODEL_FAILURES.get(failure, failure.replace("_", " "))
    return reason


def event_details(
    data: dict[str, Any], *, kind: str = "", value_max_chars: int | None = None
) -> str:
    """An event's data in words, "name: value · name: value"; each value cut to
    `value_max_chars`.

    Identifiers and measurements staff cannot act on (stream SIDs, latencies, sequence
    numbers) stay in the stored data and are left out here.
    """
    pairs = (
        _detail(key, value, data)
        for key, value in data.items()
        if value not in (None, "", [], {}) and key not in _HIDDEN_DETAILS
    )
    return " · ".join(
        f"{name}: {_shortened(text, value_max_chars)}" for name, text in pairs if text
    )


_HIDDEN_DETAILS = frozenset(
    {"stream_sid", "clear_latency_ms", "sequence", "number", "seconds", "lost_streams", "staff"}
)
# A detail's name in words, where the stored key is not already one.
_DETAIL_NAMES = {
    "heard_ms": "caller heard",
    "duration_seconds": "duration",
    "dial_status": "person's line",
    "twilio_status": "Twilio says",
    "status": "Twilio status",
    "digit": "key",
    "ms": "length",
    "label": "recording",
    "text": "words",
}


def _detail(key: str, value: Any, data: dict[str, Any]) -> tuple[str, str]:
    name = _DETAIL_NAMES.get(key, key.replace("_", " "))
    if key == "heard_ms":
        heard = sum(value.values()) if isinstance(value, dict) else value
        return name, seconds_label(int(heard))
    if key == "target":
        number = data.get("number")
        return name, f"{value} ({number})" if number else str(value)
    if key == "reason":
        return name, reason_label(str(value))
    if key in ("error", "detail"):
        return name, error_label(str(value))
    if key == "failure":
        return name, MODEL_FAILURES.get(str(value), str(value).replace("_", " "))
    if key == "limit":
        limit = LIMITS.get(str(value), str(value).replace("_", " "))
        seconds = data.get("seconds")
        return name, f"{limit} ({duration_words(int(seconds))})" if seconds else limit
    if key == "text":
        return name, f"“{value}”"
    if key == "duration_seconds":
        return name, duration_words(int(value))
    if key in ("status", "dial_status", "twilio_status"):
        return name, str(value).replace("-", " ")
    if key == "ms":
        return name, seconds_label(int(value))
    return name, _detail_value(value)


def duration_words(seconds: int) -> str:
    """900 -> "15 min", 90 -> "1 min 30 s", 30 -> "30 s"."""
    minutes, seconds = divmod(max(0, seconds), 60)
    if not minutes:
        return f"{seconds} s"
    return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"


def _detail_value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(_detail_value(item) for item in value.values())
    if isinstance(value, list):
        return ", ".join(_detail_value(item) for item in value)
    return str(value)


def _shortened(text: str, max_chars: int | None) -> str:
    if max_chars is None or len(text) <= max_chars:
        return text
    return text[: max_chars - 1] + "…"
