"""The console's words for calls, transcript lines and events, as staff read them.

Both the call's page and the live feed use these, so the two say the same thing; the live
page's script shows what the feed sends and formats nothing of its own.
"""

import re
from typing import Any

from .models import Call, Direction, TranscriptEntry

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
    """"Front desk (+14155550100)": the agent, and the number of ours the call is on."""
    number = call.to_number if call.direction == Direction.INBOUND else call.from_number
    name = call.agent.name if call.agent_id else "No agent"
    return f"{name} ({number})" if number else name


def interruption_label(entry: TranscriptEntry) -> str:
    """"Interrupted: caller heard 1.3 s" for an agent line cut off; "" for a whole one."""
    if not entry.interrupted:
        return ""
    heard = seconds_label(entry.heard_ms)
    return f"Interrupted: caller heard {heard}" if heard else "Interrupted"


def ended_label(call: Call) -> str:
    """"Ended: staff hung up", as the live page says a call is over and why."""
    reason = call.get_end_reason_display()
    return f"Ended: {reason[:1].lower()}{reason[1:]}" if reason else "Ended"


def transferred_label(call: Call) -> str:
    if not call.transferred_to:
        return ""
    return f"Transferred to {call.transferred_to}; the agent has left the call."


def event_label(kind: str) -> str:
    return re.sub(r"[_-]+", " ", kind).capitalize()


def event_details(data: dict[str, Any], *, value_max_chars: int | None = None) -> str:
    """An event's data as "key: value · key: value"; each value cut to `value_max_chars`."""
    values = (
        (key, _detail_value(value)) for key, value in data.items() if value not in (None, "")
    )
    return " · ".join(
        f"{key.replace('_', ' ')}: {_shortened(text, value_max_chars)}" for key, text in values
    )


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
