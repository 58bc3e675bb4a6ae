"""Twilio's webhooks. Each one checks the signature, parses the form and calls one service."""

import functools
import logging
from collections.abc import Callable
from datetime import datetime
from email.utils import parsedate_to_datetime

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from . import security, services

logger = logging.getLogger(__name__)

View = Callable[[HttpRequest], HttpResponse]


def twilio_webhook(view: View) -> View:
    """Accept only POSTs signed by Twilio for the public URL they were sent to."""

    @csrf_exempt
    @require_POST
    @functools.wraps(view)
    def wrapper(request: HttpRequest) -> HttpResponse:
        url = security.public_url(request.get_full_path())
        if settings.TWILIO_SKIP_SIGNATURE_VALIDATION:
            logger.warning("Signature check is OFF (development setting) for %s", url)
            return view(request)
        signature = request.headers.get(security.SIGNATURE_HEADER)
        if not security.signature_is_valid(url, request.POST, signature):
            logger.warning(
                "Rejected %s signature on %s from %s (CallSid %s)",
                "a wrong" if signature else "a missing",
                url,
                request.META.get("REMOTE_ADDR"),
                request.POST.get("CallSid", "?"),
            )
            return HttpResponseForbidden("Invalid Twilio signature")
        return view(request)

    return wrapper


def _twiml(document: str) -> HttpResponse:
    return HttpResponse(document, content_type="text/xml")


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def _twilio_time(value: str | None) -> datetime | None:
    try:
        return parsedate_to_datetime(value) if value else None
    except (TypeError, ValueError):
        return None


@twilio_webhook
def voice_incoming(request: HttpRequest) -> HttpResponse:
    post = request.POST
    document = services.call_answer(
        call_sid=post.get("CallSid", ""),
        account_sid=post.get("AccountSid", ""),
        from_number=post.get("From", ""),
        to_number=post.get("To", ""),
        direction=post.get("Direction", "inbound"),
        status=post.get("CallStatus", "ringing"),
    )
    return _twiml(document)


@twilio_webhook
def voice_status(request: HttpRequest) -> HttpResponse:
    post = request.POST
    services.call_status_update(
        call_sid=post.get("CallSid", ""),
        status=post.get("CallStatus", ""),
        duration_seconds=_int_or_none(post.get("CallDuration")),
        sequence=_int_or_none(post.get("SequenceNumber")),
        at=_twilio_time(post.get("Timestamp")),
    )
    return HttpResponse(status=204)


@twilio_webhook
def voice_amd(request: HttpRequest) -> HttpResponse:
    """Asynchronous answering-machine detection's verdict on a call we placed."""
    post = request.POST
    services.call_amd_record(
        call_sid=post.get("CallSid", ""),
        answered_by=post.get("AnsweredBy", ""),
        detection_ms=_int_or_none(post.get("MachineDetectionDuration")),
    )
    return HttpResponse(status=204)


@twilio_webhook
def stream_status(request: HttpRequest) -> HttpResponse:
    post = request.POST
    services.stream_status_record(
        call_sid=post.get("CallSid", ""),
        stream_sid=post.get("StreamSid", ""),
        event=post.get("StreamEvent", ""),
        error=post.get("StreamError", ""),
    )
    return HttpResponse(status=204)


@twilio_webhook
def connect_action(request: HttpRequest) -> HttpResponse:
    return _twiml(services.connect_ended_record(call_sid=request.POST.get("CallSid", "")))


@twilio_webhook
def dial_action(request: HttpRequest) -> HttpResponse:
    post = request.POST
    document = services.dial_outcome_record(
        call_sid=post.get("CallSid", ""),
        dial_status=post.get("DialCallStatus", ""),
        duration_seconds=_int_or_none(post.get("DialCallDuration")),
    )
    return _twiml(document)


def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")
