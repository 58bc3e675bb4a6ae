"""Property: whatever a signed webhook's fields hold, the answer is never a 500, and the next
valid webhook is still handled (on PostgreSQL a database error would also have broken the
transaction the test runs in, so the next request would fail too).

Each example answers a fresh call with a valid voice webhook, then sends one endpoint a signed
request in which one to three fields are hostile (missing, repeated, empty, NUL and other
control characters, any Unicode, kilobytes long, huge or negative integers, near-miss SIDs,
odd dates) and the others valid, with extra fields, in any order; then that endpoint gets a
valid request for the fresh call. Run with `--hypothesis-show-statistics` to see how often
each status came back.
"""

from dataclasses import dataclass
from datetime import UTC
from email.utils import format_datetime

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from calls.models import CallStatus

from .conftest import under_ci
from .twilio_helpers import (
    ACCOUNT_SID,
    incoming_params,
    new_call_sid,
    signed_post,
    signed_post_fields,
)

pytestmark = pytest.mark.django_db

AGENT_NUMBER = "+14155550100"
EXAMPLES_PER_WEBHOOK = 150 if under_ci() else 60

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES_PER_WEBHOOK,
    deadline=None,
    database=None,
    # Explaining a failure replays it hundreds of times; the shrunk example says enough.
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=[
        # The client and the agent are shared by the examples on purpose: state carries over.
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

# --- values ---------------------------------------------------------------------------------

UNICODE = st.characters(codec="utf-8")  # anything a form-encoded body can carry
TEXT = st.text(UNICODE, max_size=80)
CONTROL = st.text(st.sampled_from("\x00\x01\x08\t\n\r\x1b\x7f\x85\u2028\ufeff"), min_size=1)
LONG = st.builds(
    lambda unit, count: unit * count,
    st.sampled_from(["x", "9", "é", "\x00", "😀", "CA", " ", "+1"]),
    st.integers(30, 3000),
)
EDGE_INTEGERS = [-1, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, -(2**31)]
NUMBERS = st.one_of(
    st.sampled_from(EDGE_INTEGERS).map(str),
    st.integers().map(str),
    st.sampled_from(["9" * 5000, "1e9", "0x10", "+5", " 7 ", "3.0", "١٢", "NaN", "-0", "٣\x00"]),
)
NEAR_SIDS = st.builds(
    lambda prefix, digits: prefix + digits,
    st.sampled_from(["CA", "AC", "MZ", "ca", "", "CA "]),
    st.text("0123456789abcdefABCDEFg\x00", max_size=70),
)
# Twilio's call status callbacks date themselves in RFC 2822, its stream callbacks in ISO 8601.
RFC_2822_TIMES = st.builds(
    format_datetime, st.datetimes(timezones=st.just(UTC)), usegmt=st.just(True)
)
ISO_TIMES = st.datetimes(timezones=st.just(UTC)).map(lambda at: at.isoformat())
ODD_TIMES = st.one_of(
    ISO_TIMES,
    st.sampled_from(
        [
            "Mon, 01 Jan 0001 00:00:00 +0100",
            "Fri, 31 Dec 9999 23:59:59 -2359",
            "Sat, 01 Jan 0000 00:00:00 +0000",
            "Tue, 10 Dec 2019 21:14:05 -0000",
            "Tue, 10 Dec 2019 21:14:05",
            "Tue, 32 Dec 2019 21:14:05 +0000",
            "Tue, 10 Dec 99999999999999999999 21:14:05 +0000",
        ]
    ),
)
ANY_HOSTILE = st.one_of(st.just(""), TEXT, CONTROL, LONG, NUMBERS, NEAR_SIDS, ODD_TIMES)

ANY_CALL_SID = st.from_regex(r"\ACA[0-9a-f]{32}\Z")
ANY_STREAM_SID = st.from_regex(r"\AMZ[0-9a-f]{32}\Z")
STREAM_EVENTS = ["stream-started", "stream-stopped", "stream-error"]
EXTRA_NAMES = st.one_of(
    st.sampled_from(["Called", "Caller", "CallerCity", "ApiVersion", "ForwardedFrom", "Digits"]),
    st.text(UNICODE, min_size=1, max_size=20),
)


@dataclass(frozen=True)
class Field:
    valid: st.SearchStrategy[str]
    # What is most likely to break this field's column; any hostile value is tried too.
    hostile: st.SearchStrategy[str]


def sid(valid: st.SearchStrategy[str]) -> Field:
    return Field(valid, st.one_of(NEAR_SIDS, LONG, CONTROL))


def text(valid: st.SearchStrategy[str]) -> Field:
    return Field(valid, st.one_of(LONG, CONTROL, TEXT))


def count() -> Field:
    return Field(st.integers(0, 10_000).map(str), NUMBERS)


@dataclass(frozen=True)
class Webhook:
    path: str
    success: int
    fields: dict[str, Field]


def webhooks(live_sid: str, finished_sid: str) -> dict[str, Webhook]:
    """The webhooks and their fields; a valid CallSid is mostly the live call's, so that the
    request reaches the rows a hostile value could break."""
    known = st.sampled_from([live_sid] * 7 + [finished_sid] * 2)
    call_sid = sid(st.integers(0, 9).flatmap(lambda n: known if n < 9 else ANY_CALL_SID))
    account_sid = sid(st.just(ACCOUNT_SID))
    status = text(st.sampled_from(CallStatus.values))
    return {
        "incoming": Webhook(
            "/twilio/voice/incoming",
            200,
            {
                "CallSid": call_sid,
                "AccountSid": account_sid,
                "From": text(st.sampled_from(["+14155550123", "anonymous", "client:alice", ""])),
                "To": text(st.sampled_from([AGENT_NUMBER, "+14155550111", "sip:a@example.com"])),
                "CallStatus": status,
                "Direction": text(st.sampled_from(["inbound", "outbound-api", "outbound-dial"])),
            },
        ),
        "status": Webhook(
            "/twilio/voice/status",
            204,
            {
                "CallSid": call_sid,
                "AccountSid": account_sid,
                "CallStatus": status,
                "CallDuration": count(),
                "SequenceNumber": count(),
                "Timestamp": Field(RFC_2822_TIMES, ODD_TIMES),
                "CallbackSource": text(st.just("call-progress-events")),
            },
        ),
        "stream-status": Webhook(
            "/twilio/stream/status",
            204,
            {
                "CallSid": call_sid,
                "AccountSid": account_sid,
                "StreamSid": sid(ANY_STREAM_SID),
                "StreamEvent": text(st.sampled_from(STREAM_EVENTS)),
                "StreamError": text(st.text(UNICODE.filter(lambda c: c != "\x00"), max_size=200)),
                "Timestamp": Field(ISO_TIMES, ODD_TIMES),
            },
        ),
        "connect-action": Webhook(
            "/twilio/voice/connect-action",
            200,
            {"CallSid": call_sid, "AccountSid": account_sid},
        ),
        "amd": Webhook(
            "/twilio/voice/amd",
            204,
            {
                "CallSid": call_sid,
                "AccountSid": account_sid,
                "AnsweredBy": text(
                    st.sampled_from(["human", "machine_end_beep", "machine_start", "fax"])
                ),
                "MachineDetectionDuration": count(),
            },
        ),
        "dial-action": Webhook(
            "/twilio/voice/dial-action",
            200,
            {
                "CallSid": call_sid,
                "AccountSid": account_sid,
                "DialCallStatus": text(st.sampled_from(["completed", "busy", "no-answer"])),
                "DialCallDuration": count(),
                "DialCallSid": sid(ANY_CALL_SID),
            },
        ),
    }


def draw_fields(data: st.DataObject, webhook: Webhook) -> list[tuple[str, str]]:
    """Valid fields but one to three, which are hostile, missing or repeated; extra fields;
    any order. Mostly one bad field, so that the others let the request reach the services.
    """
    names = list(webhook.fields)
    first = data.draw(st.sampled_from(names), label="broken field")
    broken = {first, *data.draw(st.lists(st.sampled_from(names), max_size=2), label="more")}
    fields: list[tuple[str, str]] = []
    for name, field in webhook.fields.items():
        if name not in broken:
            fields.append((name, data.draw(field.valid, label=name)))
            continue
        hostile = st.one_of(field.hostile, field.hostile, field.hostile, ANY_HOSTILE)
        how = data.draw(st.sampled_from(["hostile", "hostile", "missing", "repeated"]))
        if how == "hostile":
            fields.append((name, data.draw(hostile, label=name)))
        elif how == "repeated":
            values = data.draw(st.lists(st.one_of(field.valid, hostile), min_size=2, max_size=3))
            fields.extend((name, value) for value in values)
    extra = data.draw(st.lists(st.tuples(EXTRA_NAMES, ANY_HOSTILE), max_size=4), label="extra")
    fields.extend((name, value) for name, value in extra if name not in webhook.fields)
    return data.draw(st.permutations(fields), label="fields")


def valid_fields(data: st.DataObject, webhook: Webhook, live_sid: str) -> list[tuple[str, str]]:
    fields = {name: data.draw(field.valid, label=name) for name, field in webhook.fields.items()}
    return list({**fields, "CallSid": live_sid}.items())


# --- the property ---------------------------------------------------------------------------


@pytest.fixture
def finished_sid(client, agent) -> str:
    sid = new_call_sid()
    assert signed_post(client, "/twilio/voice/incoming", incoming_params(sid, AGENT_NUMBER))
    params = {"CallSid": sid, "AccountSid": ACCOUNT_SID, "CallStatus": "completed"}
    assert signed_post(client, "/twilio/voice/status", params).status_code == 204
    return sid


def answer_fresh_call(client) -> str:
    sid = new_call_sid()
    response = signed_post(client, "/twilio/voice/incoming", incoming_params(sid, AGENT_NUMBER))
    assert response.status_code == 200 and b"<Stream" in response.content, response.content
    return sid


WEBHOOKS = ["incoming", "status", "stream-status", "amd", "connect-action", "dial-action"]


@pytest.mark.parametrize("name", WEBHOOKS)
@FUZZ_SETTINGS
@given(data=st.data())
def test_no_signed_webhook_gets_a_500(client, agent, finished_sid, name, data):
    live_sid = answer_fresh_call(client)
    webhook = webhooks(live_sid, finished_sid)[name]

    response = signed_post_fields(client, webhook.path, draw_fields(data, webhook))
    event(f"status {response.status_code}")
    assert response.status_code in (webhook.success, 400), response.content[:300]
    if response.status_code == 400:
        assert response.content.startswith(b"Invalid webhook: "), response.content[:300]

    # The next valid request is still handled.
    if name == "incoming":
        answer_fresh_call(client)
    else:
        response = signed_post_fields(client, webhook.path, valid_fields(data, webhook, live_sid))
        assert response.status_code == webhook.success, response.content[:300]
