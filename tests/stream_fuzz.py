"""Hypothesis strategies for hostile media stream frames, and what a parsed event must respect.

A hostile frame is anything a socket can carry: binary, text that is not JSON, any JSON
value, and (the ones that reach furthest) Twilio's own messages for the right stream with
one field replaced by an arbitrary value, deleted, or padded out.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from callmedia import protocol
from calls.simulator import wire

# The suite stays fast; CI=true runs more examples (still well under a minute).
_CI = os.environ.get("CI", "").lower() == "true"
FUZZ_EXAMPLES = int(os.environ.get("STREAM_FUZZ_EXAMPLES") or (600 if _CI else 150))

fuzz_settings = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=not _CI,  # the same examples locally, new ones in CI
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

ACCOUNT_SID = "AC" + "1" * 32

huge_numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False),
    st.sampled_from([2**31, 2**63, 10**30, -1, 0, 1e308, 1.5]),
)
digit_strings = st.one_of(
    st.text("0123456789", min_size=1, max_size=40),
    st.integers(min_value=0, max_value=10**40).map(str),
)
long_strings = st.one_of(
    st.text(max_size=40),
    st.integers(min_value=0, max_value=20_000).map(lambda n: "A" * n),
    st.sampled_from(["", "\x00", "٣", "²", "MZ" + "0" * 32, "+/==", "*", "#", "A"]),
)
scalars = st.one_of(
    st.none(), st.booleans(), huge_numbers, digit_strings, long_strings, st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
# What replaces a field: mostly values of the right kind but out of range, sometimes anything.
field_values = st.one_of(digit_strings, huge_numbers, long_strings, json_values)
_counter_values = st.one_of(
    st.integers(min_value=2**31, max_value=10**40).map(str),  # the 30-digit timestamp
    st.sampled_from(["1" * 30, str(2**31), "٣", "-1", "1.5", "0x10", " 1", ""]),
    digit_strings,
    huge_numbers,
    field_values,
)
_FIELD_VALUES = {
    "sequenceNumber": _counter_values,
    "chunk": _counter_values,
    "timestamp": _counter_values,
    "payload": st.one_of(
        st.integers(min_value=0, max_value=12_000).map(lambda n: "A" * n),
        st.text(max_size=30),
        field_values,
    ),
    "digit": st.one_of(st.text(max_size=3), field_values),
    "name": st.one_of(long_strings, field_values),
}


def templates(stream_sid: str, call_sid: str) -> dict[str, dict[str, Any]]:
    """Valid messages of each kind Twilio sends, for the given stream (`stop` aside)."""
    return {
        "connected": json.loads(wire.connected_message()),
        "start": json.loads(
            wire.start_message(
                stream_sid=stream_sid,
                call_sid=call_sid,
                account_sid=ACCOUNT_SID,
                sequence_number=1,
                custom_parameters={"token": "x"},
            )
        ),
        "media": json.loads(
            wire.inbound_media_message(
                stream_sid=stream_sid,
                sequence_number=2,
                chunk=1,
                timestamp_ms=20,
                payload_b64="/////w==",
            )
        ),
        "dtmf": json.loads(wire.dtmf_message(stream_sid=stream_sid, sequence_number=3, digit="5")),
        "mark": json.loads(
            wire.mark_echo_message(stream_sid=stream_sid, sequence_number=4, name="seg-1")
        ),
    }


def _paths(message: dict[str, Any]) -> list[tuple[str, ...]]:
    # Hypothesis favours the first choices: the fields that carry values first (counters,
    # payload, digit, name), the objects that hold them next, the event name last.
    def rank(path: tuple[str, ...]) -> tuple[int, bool, int]:
        first = _INTERESTING.index(path[-1]) if path[-1] in _INTERESTING else len(_INTERESTING)
        return (path == ("event",), isinstance(_at(message, path), dict), first)

    return sorted(_walk(message, ()), key=rank)


_INTERESTING = ["timestamp", "chunk", "sequenceNumber", "payload", "digit", "name"]


def _walk(obj: dict[str, Any], prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
    paths = []
    for key, value in obj.items():
        paths.append((*prefix, key))
        if isinstance(value, dict):
            paths.extend(_walk(value, (*prefix, key)))
    return paths


def _at(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


@st.composite
def mutated_message(draw: st.DrawFn, stream_sid: str, call_sid: str) -> str:
    # Media most often: it is the hot path, parsed by its own fast code.
    kind = draw(st.sampled_from(["media", "media", "media", "mark", "dtmf", "start", "connected"]))
    message = templates(stream_sid, call_sid)[kind]
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = _paths(message)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = message
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(_FIELD_VALUES.get(path[-1], field_values))
        elif action == "delete":
            del parent[path[-1]]
        else:
            parent[draw(st.text(max_size=10))] = draw(json_values)
    return json.dumps(message)


def hostile_frames(stream_sid: str, call_sid: str) -> st.SearchStrategy[str | bytes]:
    """Any frame a socket may carry, biased towards near-valid messages for the stream."""
    return st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300),
        json_values.map(json.dumps),
        st.integers(min_value=60_000, max_value=70_000).map(lambda n: '{"p":"' + "x" * n + '"}'),
        mutated_message(stream_sid, call_sid),
        mutated_message(stream_sid, call_sid),
        mutated_message(stream_sid, call_sid),
    )


def acts_on_the_stream(frame: str | bytes, stream_sid: str) -> bool:
    """A valid `stop` or `dtmf` for the stream: Twilio ending it or a caller's key (which may
    transfer the call), not hostile input."""
    try:
        event = protocol.parse(frame)
    except protocol.ProtocolError:
        return False
    return type(event) in (protocol.Stop, protocol.Dtmf) and event.stream_sid == stream_sid


def bounds_problem(event: protocol.TwilioEvent) -> str | None:
    """Why a parsed event breaks the protocol's bounds, or None if it keeps them."""
    for name in ("sequence_number", "chunk"):
        value = getattr(event, name, 0)
        if type(value) is not int or not 0 <= value <= protocol.MAX_COUNTER:
            return f"{name}={value!r}"
    timestamp = getattr(event, "timestamp_ms", 0)
    if type(timestamp) is not int or not 0 <= timestamp <= protocol.MAX_TIMESTAMP_MS:
        return f"timestamp_ms={timestamp!r}"
    for name in ("stream_sid", "call_sid", "account_sid"):
        value = getattr(event, name, "SID")
        if type(value) is not str or not 2 < len(value) <= protocol.MAX_SID_CHARS:
            return f"{name}={value!r}"
    if type(event) is protocol.Media:
        if not 0 < len(event.payload) <= protocol.MAX_MEDIA_PAYLOAD_CHARS:
            return f"payload of {len(event.payload)} chars"
    if type(event) is protocol.Dtmf and event.digit not in protocol.DTMF_DIGITS:
        return f"digit={event.digit!r}"
    if type(event) is protocol.Mark and not 0 < len(event.name) <= protocol.MAX_MARK_NAME_CHARS:
        return f"mark name of {len(event.name)} chars"
    if type(event) is protocol.Start:
        params = event.custom_parameters
        if len(params) > protocol.MAX_CUSTOM_PARAMETERS or any(
            type(v) is not str or len(k) + len(v) >= protocol.MAX_CUSTOM_PARAMETER_CHARS
            for k, v in params.items()
        ):
            return f"customParameters={params!r:.80}"
    return None
