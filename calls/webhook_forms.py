"""What each of Twilio's webhooks may carry: the fields we use, checked for shape, length and range.

A valid signature says who sent a request, not that its values fit our tables, so every value
is checked here before it reaches the database, where SQLite and PostgreSQL would each fail in
their own way (a CHECK constraint, an integer overflow, a NUL byte, a value too long). The
limits follow the model fields the values are stored in. Twilio sends many more fields than
these; the others are ignored.
"""

import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from .models import Call, CallStatus, Recording

# The largest integer an IntegerField/PositiveIntegerField holds on PostgreSQL; SQLite's limit
# is higher, and one limit for both keeps them answering alike.
INT32_MAX = 2**31 - 1
# Twilio's stream error messages are a sentence; this bounds what one callback can store.
STREAM_ERROR_MAX_CHARS = 1000
# Unicode control characters (C0, DEL, C1): never part of a number, an identity or a status.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")

# Twilio's documented values of the fields we branch on.
DIRECTIONS = ("inbound", "outbound-api", "outbound-dial", "trunking-originating",
              "trunking-terminating")  # fmt: skip
STREAM_EVENTS = ("stream-started", "stream-stopped", "stream-error")
CALL_STATUSES = tuple(CallStatus.values)
RECORDING_STATUSES = ("in-progress", "completed", "absent", "failed")
DIAL_CALL_STATUSES = ("completed", "answered", "busy", "no-answer", "failed", "canceled")


def _no_control_characters(value: str) -> None:
    if _CONTROL_CHARACTERS.search(value):
        raise ValidationError("contains a control character")


def _sid(prefix: str, *, required: bool = True) -> forms.CharField:
    """A Twilio resource SID: its two-letter prefix and 32 hex digits, as Twilio issues them."""
    return forms.RegexField(
        regex=rf"\A{prefix}[0-9a-fA-F]{{32}}\Z",
        required=required,
        error_messages={"invalid": f"must be {prefix} followed by 32 hex digits"},
    )


def _text(max_length: int, *, plain: bool = True) -> forms.CharField:
    """Optional text up to `max_length` characters; `plain` also refuses control characters.

    CharField itself refuses NUL, which PostgreSQL cannot store in text or JSON.
    """
    return forms.CharField(
        max_length=max_length,
        required=False,
        validators=[_no_control_characters] if plain else [],
    )


def _choice(values: tuple[str, ...], *, required: bool = True) -> forms.ChoiceField:
    return forms.ChoiceField(
        choices=[(value, value) for value in values],
        required=required,
        # The default message quotes the value, which may be megabytes long.
        error_messages={"invalid_choice": "is not a value Twilio sends"},
    )


def _count(*, required: bool = False) -> forms.IntegerField:
    """A non-negative integer that fits the database's integer columns."""
    return forms.IntegerField(min_value=0, max_value=INT32_MAX, required=required)


def _max_length(field_name: str) -> int:
    return Call._meta.get_field(field_name).max_length


class TwilioTimestampField(forms.Field):
    """Twilio's `Timestamp`: RFC 2822 in UTC, e.g. "Tue, 10 Dec 2019 21:14:05 +0000"."""

    def to_python(self, value: Any) -> datetime | None:
        if value in self.empty_values:
            return None
        if len(value) > 64:
            raise ValidationError("is not an RFC 2822 date")
        try:
            parsed = parsedate_to_datetime(value)
            if parsed.tzinfo is None:  # "-0000": UTC, says RFC 2822
                parsed = parsed.replace(tzinfo=UTC)
            return parsed.astimezone(UTC)
        except (TypeError, ValueError, OverflowError):
            raise ValidationError("is not an RFC 2822 date") from None


class WebhookForm(forms.Form):
    """Fields every call webhook carries."""

    CallSid = _sid("CA")
    AccountSid = _sid("AC", required=False)

    def reason(self) -> str:
        """Why the request was refused, in a line: each bad field and its first error."""
        return "; ".join(f"{field}: {errors[0]}" for field, errors in self.errors.items())


class IncomingCallForm(WebhookForm):
    """The voice webhook: Twilio asks how to answer a call."""

    AccountSid = _sid("AC")
    From = _text(_max_length("from_number"))
    To = _text(_max_length("to_number"))
    Direction = _choice(DIRECTIONS, required=False)
    CallStatus = _choice(CALL_STATUSES, required=False)


class CallStatusForm(WebhookForm):
    """The call's status callback."""

    CallStatus = _choice(CALL_STATUSES)
    CallDuration = _count()
    SequenceNumber = _count()
    Timestamp = TwilioTimestampField(required=False)


class StreamStatusForm(WebhookForm):
    """The media stream's status callback."""

    StreamSid = _sid("MZ")
    StreamEvent = _choice(STREAM_EVENTS)
    StreamError = _text(STREAM_ERROR_MAX_CHARS, plain=False)


class ConnectActionForm(WebhookForm):
    """<Connect action>: the stream has ended."""


class DialActionForm(WebhookForm):
    """<Dial action>: a transfer has ended."""

    DialCallStatus = _choice(DIAL_CALL_STATUSES, required=False)
    DialCallDuration = _count()


class AmdForm(WebhookForm):
    """Asynchronous answering-machine detection's verdict (AsyncAmdStatusCallback).

    AnsweredBy stays free text of bounded size: a value Twilio adds later is recorded as
    `unknown` by the service rather than refused, so the call is still greeted.
    """

    AnsweredBy = _text(32)
    MachineDetectionDuration = _count()


class WarmTransferForm(WebhookForm):
    """A warm transfer's request for the person called: the whisper, its answer, the dial result.

    `call` is our Call's id, from the query string we put in the URL (signed by Twilio with
    the rest of the URL); the CallSid of a whisper request is the person's leg, not the caller's.
    """

    call = forms.UUIDField(error_messages={"invalid": "must be a call id"})


class WhisperAnswerForm(WarmTransferForm):
    """The whisper's Gather: the key the person called pressed (none on a timeout)."""

    Digits = forms.RegexField(
        regex=r"\A[0-9*#]{0,20}\Z",
        required=False,
        error_messages={"invalid": "must be keys 0-9, * and #"},
    )


class WarmDialResultForm(WarmTransferForm):
    """<Dial action> of a warm transfer: how the person's leg ended."""

    DialCallStatus = _choice(DIAL_CALL_STATUSES, required=False)
    DialCallDuration = _count()


class RecordingStatusForm(WebhookForm):
    """A recording's status callback (in-progress, completed, absent)."""

    RecordingSid = _sid("RE")
    RecordingStatus = _choice(RECORDING_STATUSES)
    RecordingDuration = _count()
    RecordingChannels = forms.IntegerField(min_value=1, max_value=2, required=False)
    RecordingUrl = forms.URLField(
        max_length=Recording._meta.get_field("media_url").max_length,
        required=False,
        assume_scheme="https",
    )
