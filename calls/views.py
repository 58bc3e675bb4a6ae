"""Twilio's webhooks. Each one checks the signature, validates the form and calls one service."""

import functools
import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseForbidden,
    JsonResponse,
)
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from . import health, security, services
from .webhook_forms import (
    AmdForm,
    CallStatusForm,
    ConnectActionForm,
    DialActionForm,
    IncomingCallForm,
    RecordingStatusForm,
    StreamStatusForm,
    WarmDialResultForm,
    WarmTransferForm,
    WebhookForm,
    WhisperAnswerForm,
)

logger = logging.getLogger(__name__)

View = Callable[[HttpRequest], HttpResponse]
FormView = Callable[[HttpRequest, dict[str, Any]], HttpResponse]

# What a log line quotes of a value a caller chose: enough to recognise it, never a flood.
# (The log formatter escapes its control characters.)
_LOGGED_VALUE_CHARS = 100


def _clipped(value: str | None) -> str:
    return value[:_LOGGED_VALUE_CHARS] if value is not None else "?"


def twilio_webhook(form_class: type[WebhookForm]) -> Callable[[FormView], View]:
    """Accept only POSTs signed by Twilio for the public URL they were sent to, whose fields
    `form_class` accepts; the view gets the cleaned fields.

    The signature is checked first, so an unsigned request learns nothing about the fields.
    A bad field gets 400 with the reason, before anything reaches the database.
    """

    def decorate(view: FormView) -> View:
        @csrf_exempt
        @require_POST
        @functools.wraps(view)
        def wrapper(request: HttpRequest) -> HttpResponse:
            url = security.public_url(request.get_full_path())
            if settings.TWILIO_SKIP_SIGNATURE_VALIDATION:
                logger.warning("Signature check is OFF (development setting) for %s", url)
            else:
                signature = request.headers.get(security.SIGNATURE_HEADER)
                if not security.signature_is_valid(url, request.POST, signature):
                    logger.warning(
                        "Rejected %s signature on %s from %s (CallSid %s)",
                        "a wrong" if signature else "a missing",
                        url,
                        request.META.get("REMOTE_ADDR"),
                        _clipped(request.POST.get("CallSid")),
                    )
                    return HttpResponseForbidden("Invalid Twilio signature")
            # Query values come from URLs we wrote into TwiML; Twilio signed them with the rest.
            form = form_class({**request.GET.dict(), **request.POST.dict()})
            if not form.is_valid():
                return _refused(url, request, form)
            return view(request, form.cleaned_data)

        return wrapper

    return decorate


def _refused(url: str, request: HttpRequest, form: WebhookForm) -> HttpResponse:
    reason = form.reason()
    logger.warning(
        "Refused a signed webhook on %s (CallSid %s): %s",
        url,
        _clipped(request.POST.get("CallSid")),
        reason,
    )
    return HttpResponseBadRequest(
        f"Invalid webhook: {reason}\n", content_type="text/plain; charset=utf-8"
    )


def _twiml(document: str) -> HttpResponse:
    return HttpResponse(document, content_type="text/xml")


@twilio_webhook(IncomingCallForm)
def voice_incoming(request: HttpRequest, data: dict[str, Any]) -> HttpResponse:
    document = services.call_answer(
        call_sid=data["CallSid"],
        account_sid=data["AccountSid"],
        from_number=data["From"],
        to_number=data["To"],
        direction=data["Direction"] or "inbound",
        status=data["CallStatus"] or "ringing",
    )
    return _twiml(document)


@twilio_webhook(CallStatusForm)
def voice_status(request: HttpRequest, data: dict[str, Any]) -> HttpResponse:
    services.call_status_update(
        call_sid=data["CallSid"],
        status=data["CallStatus"],
        duration_seconds=data["CallDuration"],
        sequence=data["SequenceNumber"],
        at=data["Timestamp"],
    )
    return HttpResponse(status=204)


@twilio_webhook(AmdForm)
def voice_amd(request: HttpRequest, data: dict[str, Any]) -> HttpResponse:
    """Asynchronous answering-machine detection's verdict on a call we placed."""
    services.call_amd_record(
        call_sid=data["CallSid"],
        answered_by=data["AnsweredBy"],
        detection_ms=data["MachineDetectionDuration"],
    )
    return HttpResponse(status=204)


@twilio_webhook(StreamStatusForm)
def stream_status(request: HttpRequest, data: dict[str, Any]) -> HttpResponse:
    services.stream_status_record(
        call_sid=data["CallSid"],
        stream_sid=data["StreamSid"],
        event=data["StreamEvent"],
        error=data["StreamError"],
    )
    return HttpResponse(status=204)


@twilio_webhook(ConnectActionForm)
def connect_action(request: HttpRequest, data: dict[str, Any]) -> HttpResponse:
    return _twiml(services.connect_ended_record(call_sid=data["CallSid"]))


@twilio_webhook(DialActionForm)
def dial_action(request: HttpRequest, data: dict[str, Any]) -> HttpResponse:
    document = services.dial_outcome_record(
        call_sid=data["CallSid"],
        dial_status=data["DialCallStatus"],
        duration_seconds=data["DialCallDuration"],
    )
    return _twiml(document)


@twilio_webhook(RecordingStatusForm)
def recording_status(request: HttpRequest, data: dict[str, Any]) -> HttpResponse:
    services.recording_status_record(
        call_sid=data["CallSid"],
        recording_sid=data["RecordingSid"],
        status=data["RecordingStatus"],
        duration_seconds=data["RecordingDuration"],
        channels=data["RecordingChannels"],
        media_url=data["RecordingUrl"],
    )
    return HttpResponse(status=204)


@twilio_webhook(WarmTransferForm)
def whisper(request: HttpRequest, data: dict[str, Any]) -> HttpResponse:
    return _twiml(services.warm_whisper_twiml(call_id=str(data["call"])))


@twilio_webhook(WhisperAnswerForm)
def whisper_answer(request: HttpRequest, data: dict[str, Any]) -> HttpResponse:
    return _twiml(services.warm_whisper_answer(call_id=str(data["call"]), digits=data["Digits"]))


@twilio_webhook(WarmDialResultForm)
def dial_result(request: HttpRequest, data: dict[str, Any]) -> HttpResponse:
    document = services.warm_dial_result(
        call_id=str(data["call"]),
        dial_status=data["DialCallStatus"],
        duration_seconds=data["DialCallDuration"],
    )
    return _twiml(document)


async def healthz(request: HttpRequest) -> HttpResponse:
    """200 when the database and the channel layer answer, else 503 with the reasons (JSON).

    Each check gets HEALTH_CHECK_TIMEOUT_SECONDS, so a load balancer's probe never hangs.
    """
    report = await health.health_report(timeout_s=settings.HEALTH_CHECK_TIMEOUT_SECONDS)
    return JsonResponse(report, status=200 if report["ok"] else 503)
