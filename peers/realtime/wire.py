"""Checks on what a client sends, made the way the GA Realtime service makes them.

Each check returns a `Rejection` (the `error` event the service would answer, with its
code, message and param) or None when the service accepts the event. The checks read the
conversation but never change it: the session applies an event only once it passed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from .conversation import Item

REALTIME_PATH = "/v1/realtime"

# The GA `session` object's top-level keys. Anything else (notably the beta names
# `modalities`, `voice`, `input_audio_format`, `turn_detection`, `temperature`) is
# rejected with `unknown_parameter`, as the real service does.
GA_SESSION_KEYS = frozenset(
    {
        "type",
        "model",
        "output_modalities",
        "instructions",
        "audio",
        "include",
        "tracing",
        "tools",
        "tool_choice",
        "max_output_tokens",
        "truncation",
        "prompt",
        "parallel_tool_calls",
        "reasoning",
    }
)
GA_AUDIO_FORMATS = frozenset({"audio/pcm", "audio/pcmu", "audio/pcma"})
ITEM_TYPES = frozenset({"message", "function_call", "function_call_output"})
# The content a created message may hold, by role (GA names: a replayed agent line is
# `output_text`; the beta's `text` is refused).
MESSAGE_CONTENT_TYPES = {
    "user": frozenset({"input_text", "input_audio"}),
    "assistant": frozenset({"output_text"}),
    "system": frozenset({"input_text"}),
}
BETA_HEADER_VALUE = "realtime=v1"

dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclass(frozen=True)
class Rejection:
    """An `error` event's `error` object, less the client's event id."""

    code: str | None
    message: str
    param: str | None = None
    type: str = "invalid_request_error"


# -- the connection ------------------------------------------------------------------


def handshake_rejection(path: str, authorization: str) -> tuple[HTTPStatus, str] | None:
    """The HTTP status and message refusing the WebSocket upgrade, or None to accept it."""
    if path != REALTIME_PATH:
        return HTTPStatus.NOT_FOUND, "Not found."
    scheme, _, token = authorization.partition(" ")
    if scheme != "Bearer" or not token.strip():
        return HTTPStatus.UNAUTHORIZED, "Missing bearer or basic authentication in header"
    return None


def is_beta_client(beta_headers: list[str]) -> bool:
    return BETA_HEADER_VALUE in ",".join(beta_headers)


BETA_SHAPE_DISABLED = Rejection(
    "beta_api_shape_disabled",
    "The Realtime API beta shape has been disabled. Remove the "
    "'OpenAI-Beta: realtime=v1' header and use the GA interface.",
)


def session_expired(max_s: int) -> Rejection:
    return Rejection(
        "session_expired", f"Your session hit the maximum duration of {max_s // 60} minutes."
    )


# -- framing -------------------------------------------------------------------------


def parse_client_event(raw: str | bytes) -> dict[str, Any] | Rejection:
    if not isinstance(raw, str):
        return Rejection("invalid_json", "Binary frames are not supported.")
    try:
        event = json.loads(raw)
    except ValueError:
        return Rejection("invalid_json", "The event could not be parsed as JSON.")
    if not isinstance(event, dict):
        return Rejection("invalid_json", "The event must be a JSON object.")
    return event


def unknown_event_type(type_: object, supported: list[str]) -> Rejection:
    return Rejection(
        "invalid_value",
        f"Invalid value: '{type_}'. Supported values are: "
        + ", ".join(f"'{name}'" for name in supported)
        + ".",
        param="type",
    )


# -- input_audio_buffer.append (50 per second per call: cheap on purpose) ------------

AUDIO_NOT_A_STRING = Rejection(
    "invalid_type", "Invalid type for 'audio': expected a base64 string.", param="audio"
)


def base64_decoded_size(text: str) -> int:
    """Bytes that base64 text decodes to, without decoding it."""
    padding = (text[-1:] == "=") + (text[-2:-1] == "=")
    return len(text) * 3 // 4 - padding


# -- session.update ------------------------------------------------------------------


def session_update_rejection(update: object) -> Rejection | None:
    if not isinstance(update, dict):
        return Rejection(
            "missing_required_parameter", "Missing required parameter: 'session'.", "session"
        )
    for key in update:
        if key not in GA_SESSION_KEYS:
            return Rejection(
                "unknown_parameter", f"Unknown parameter: 'session.{key}'.", f"session.{key}"
            )
    if "type" not in update:
        return Rejection(
            "missing_required_parameter",
            "Missing required parameter: 'session.type'.",
            "session.type",
        )
    if update["type"] != "realtime":
        return Rejection(
            "invalid_value",
            f"Invalid value: '{update['type']}'. Supported values are: 'realtime'.",
            "session.type",
        )
    audio = update.get("audio") or {}
    for direction in ("input", "output"):
        fmt = (audio.get(direction) or {}).get("format")
        if fmt is None:
            continue
        param = f"session.audio.{direction}.format"
        if not isinstance(fmt, dict):
            return Rejection(
                "invalid_type", f"Invalid type for '{param}': expected an object.", param
            )
        if fmt.get("type") not in GA_AUDIO_FORMATS:
            return Rejection(
                "invalid_value",
                f"Invalid value: '{fmt.get('type')}'. Supported values are: "
                "'audio/pcm', 'audio/pcmu', and 'audio/pcma'.",
                f"{param}.type",
            )
    return None


# -- conversation.item.* -------------------------------------------------------------


def item_create_rejection(item: object, *, call_ids: set[str]) -> Rejection | None:
    if not isinstance(item, dict) or item.get("type") not in ITEM_TYPES:
        return Rejection(
            "invalid_value",
            "Invalid 'item.type'. Supported values are: 'message', 'function_call', "
            "and 'function_call_output'.",
            param="item.type",
        )
    if item["type"] == "message":
        return message_rejection(item)
    if item["type"] != "function_call_output":
        return None
    if not isinstance(item.get("output"), str):
        return Rejection(
            "invalid_type", "Invalid type for 'item.output': expected a string.", "item.output"
        )
    call_id = item.get("call_id")
    if call_id not in call_ids:
        return Rejection(
            "invalid_value",
            f"Tool call ID '{call_id}' not found in conversation.",
            param="item.call_id",
        )
    return None


def message_rejection(item: dict[str, Any]) -> Rejection | None:
    role = item.get("role")
    allowed = MESSAGE_CONTENT_TYPES.get(role) if isinstance(role, str) else None
    if allowed is None:
        return Rejection(
            "invalid_value",
            "Invalid 'item.role'. Supported values are: 'user', 'assistant', and 'system'.",
            param="item.role",
        )
    content = item.get("content")
    if not isinstance(content, list) or not content:
        return Rejection(
            "invalid_type", "Invalid type for 'item.content': expected an array.", "item.content"
        )
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in allowed:
            return Rejection(
                "invalid_value",
                f"Invalid value: '{kind}'. Supported values for a {role} message are: "
                + ", ".join(f"'{name}'" for name in sorted(allowed))
                + ".",
                param=f"item.content[{index}].type",
            )
        text_key = "audio" if kind == "input_audio" else "text"
        if not isinstance(part.get(text_key), str):
            return Rejection(
                "invalid_type",
                f"Invalid type for 'item.content[{index}].{text_key}': expected a string.",
                param=f"item.content[{index}].{text_key}",
            )
    return None


def truncate_rejection(event: dict[str, Any], item: Item | None) -> Rejection | None:
    """`item` is the conversation's item named by the event's `item_id`, if any."""
    audio_end_ms = event.get("audio_end_ms")
    if item is None:
        return item_not_found("item_truncate_invalid_item_id", event.get("item_id"))
    if event.get("content_index") != 0:
        return Rejection(
            "invalid_value",
            "Invalid 'content_index': only 0 is supported for audio.",
            param="content_index",
        )
    if not isinstance(audio_end_ms, int) or audio_end_ms < 0:
        return Rejection(
            "invalid_value",
            "Invalid 'audio_end_ms': expected a non-negative integer.",
            param="audio_end_ms",
        )
    if item.role != "assistant" or not item.has_audio:
        # Also what the real service answers for an assistant message whose
        # audio has not started yet.
        return Rejection(
            "unsupported_content_type", "Only model output audio messages can be truncated"
        )
    if audio_end_ms > item.audio_ms:
        return Rejection(
            "invalid_value",
            f"Audio content of {int(item.audio_ms)}ms is already shorter than {audio_end_ms}ms",
            param="audio_end_ms",
        )
    return None


def item_not_found(code: str, item_id: object) -> Rejection:
    return Rejection(code, f"Item with item_id not found: {item_id}", param="item_id")


# -- response.* ----------------------------------------------------------------------


def already_responding(active_response_id: str) -> Rejection:
    return Rejection(
        "conversation_already_has_active_response",
        f"Conversation already has an active response in progress: {active_response_id}. "
        "Wait until the response is finished before creating a new one.",
    )


NO_ACTIVE_RESPONSE = Rejection(
    "response_cancel_not_active", "Cancellation failed: no active response found"
)
