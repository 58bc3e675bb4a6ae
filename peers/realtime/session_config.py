"""The GA `session` object a session starts with, and how `session.update` changes it."""

from __future__ import annotations

import time
from typing import Any

SESSION_MAX_S = 60 * 60
# Only these containers merge key by key; any other field (`format`, `turn_detection`, ...)
# is replaced whole, so a pcmu format does not inherit pcm's `rate`.
SESSION_MERGED_KEYS = frozenset({"audio", "input", "output"})


def initial_session(*, session_id: str, model: str | None) -> dict[str, Any]:
    """The session as `session.created` reports it: the service's defaults."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model or "gpt-realtime",
        "output_modalities": ["audio"],
        "instructions": "",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": int(time.time()) + SESSION_MAX_S,
        "include": None,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 500,
                    "idle_timeout_ms": None,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "voice": "marin",
                "speed": 1.0,
            },
        },
    }


def merge_session(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if (
            key in SESSION_MERGED_KEYS
            and isinstance(value, dict)
            and isinstance(base.get(key), dict)
        ):
            merged[key] = merge_session(base[key], value)
        else:
            merged[key] = value
    return merged


class SessionConfig:
    """The session's current configuration, as `session.updated` reports it."""

    def __init__(self, *, session_id: str, model: str | None) -> None:
        self.current: dict[str, Any] = initial_session(session_id=session_id, model=model)

    def update(self, update: dict[str, Any]) -> None:
        self.current = merge_session(self.current, update)

    @property
    def output_audio(self) -> dict[str, Any]:
        return self.current.get("audio", {}).get("output", {})


def interrupt_response_update(update: dict[str, Any]) -> bool | None:
    """The `interrupt_response` an update sets, or None when it leaves it alone."""
    turn_detection = (update.get("audio") or {}).get("input", {}).get("turn_detection")
    if isinstance(turn_detection, dict) and "interrupt_response" in turn_detection:
        return bool(turn_detection["interrupt_response"])
    return None
