"""Helpers that act as Twilio does towards our webhooks."""

import secrets
from urllib.parse import urlencode

from django.conf import settings
from django.test import Client
from django.utils.datastructures import MultiValueDict
from twilio.request_validator import RequestValidator

from calls import security

ACCOUNT_SID = "AC" + "1" * 32


def new_call_sid() -> str:
    return "CA" + secrets.token_hex(16)


def signed_post(client: Client, path: str, params: dict[str, str], *, url: str | None = None):
    """POST like Twilio: form-encoded, signed over the public URL (or `url`, a wrong one)."""
    signature = security.compute_signature(url or security.public_url(path), params)
    return client.post(
        path,
        urlencode(params),
        content_type="application/x-www-form-urlencoded",
        HTTP_X_TWILIO_SIGNATURE=signature,
    )


def signed_post_fields(client: Client, path: str, fields: list[tuple[str, str]]):
    """POST like Twilio, with the fields in this order and a name possibly repeated."""
    form = MultiValueDict()
    for name, value in fields:
        form.appendlist(name, value)
    validator = RequestValidator(settings.TWILIO_AUTH_TOKEN)
    signature = validator.compute_signature(security.public_url(path), form)
    return client.post(
        path,
        urlencode(fields),
        content_type="application/x-www-form-urlencoded",
        HTTP_X_TWILIO_SIGNATURE=signature,
    )


def incoming_params(call_sid: str, to: str, *, from_number: str = "+14155550123") -> dict:
    return {
        "CallSid": call_sid,
        "AccountSid": ACCOUNT_SID,
        "From": from_number,
        "To": to,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
    }
