"""Who may talk to us: Twilio's request signatures, and the single-use stream token."""

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from django.conf import settings
from django.core import signing
from twilio.request_validator import RequestValidator

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Twilio-Signature"
STREAM_TOKEN_PARAMETER = "token"
_TOKEN_SALT = "voicebot.calls.stream-token"


def public_url(path: str) -> str:
    """The URL Twilio used for `path` (path + query), as seen from outside any proxy."""
    return settings.PUBLIC_URL + path


def stream_url() -> str:
    """The WebSocket address of the media stream, as Twilio reaches it."""
    scheme = "wss" if settings.PUBLIC_URL.startswith("https:") else "ws"
    return f"{scheme}://{settings.PUBLIC_HOST}/twilio/stream"


def signature_is_valid(url: str, params: Mapping[str, str], signature: str | None) -> bool:
    if not signature:
        return False
    # A QueryDict is passed as is: the validator reads every value of repeated keys.
    return RequestValidator(settings.TWILIO_AUTH_TOKEN).validate(url, params, signature)


def compute_signature(url: str, params: Mapping[str, str]) -> str:
    """What Twilio would send for this request; used by the simulator and the tests."""
    return RequestValidator(settings.TWILIO_AUTH_TOKEN).compute_signature(url, dict(params))


def stream_token_issue(call_sid: str) -> tuple[str, str]:
    """A fresh token for the stream of `call_sid`, and the nonce to store on the call.

    The signature binds it to the CallSid and dates it; the nonce, stored on the Call and
    consumed atomically on use, makes it single-use.
    """
    nonce = secrets.token_urlsafe(16)
    token = signing.TimestampSigner(salt=_TOKEN_SALT).sign_object({"c": call_sid, "n": nonce})
    return token, nonce


@dataclass(frozen=True)
class StreamTokenError(Exception):
    reason: str

    def __str__(self) -> str:
        return self.reason


def stream_token_nonce(token: str | None, call_sid: str) -> str:
    """The nonce inside a valid, unexpired token for `call_sid`; StreamTokenError otherwise."""
    if not token:
        raise StreamTokenError("missing stream token")
    signer = signing.TimestampSigner(salt=_TOKEN_SALT)
    try:
        payload = signer.unsign_object(token, max_age=settings.STREAM_TOKEN_MAX_AGE_SECONDS)
    except signing.SignatureExpired:
        raise StreamTokenError("expired stream token") from None
    except signing.BadSignature:
        raise StreamTokenError("invalid stream token") from None
    if not isinstance(payload, dict) or payload.get("c") != call_sid:
        raise StreamTokenError("stream token is for another call")
    return str(payload.get("n", ""))
