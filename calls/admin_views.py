"""The staff console: the live dashboard, the actions on a live call, a call's detail page,
placing a call, and the changelist's bulk actions.

The views are mounted under the Call admin (`CallAdmin.get_urls`), which passes itself as
`model_admin`. An action view checks its own permission, calls one service and reports the
outcome: as JSON to the live page's fetch(), or as an admin message and a redirect when it
was a plain form post (the detail page works without JavaScript).
"""

import asyncio
import csv
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from asgiref.sync import async_to_sync
from django.contrib import messages
from django.contrib.admin import ModelAdmin
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from agents.models import TransferMode, TransferTarget

from . import feed, labels, services
from .forms import PlaceCallForm, SayForm, TransferForm
from .models import (
    Actor,
    Call,
    CallAnalysis,
    EndReason,
    RecordingStatus,
    StreamStatus,
    TranscriptEntry,
)

LIVE_SOCKET_PATH = "/ws/calls/live"
# Stands for a call's id in the URL templates handed to the live page's script.
PLACEHOLDER_ID = uuid.UUID(int=0)
# A staff member's ear on one call (calls.consumers.listen); the page puts the call's id in.
LISTEN_SOCKET = {
    "socket_path": f"/ws/calls/{PLACEHOLDER_ID}/listen",
    "placeholder": str(PLACEHOLDER_ID),
    "sides": (("caller", "Caller"), ("agent", "Agent")),
}

ACTION_PERMISSIONS = {
    "hangup": "calls.hangup_call",
    "clear": "calls.clear_audio",
    "transfer": "calls.transfer_call",
    "say": "calls.say_on_call",
}
REFUSALS = {
    "mark_ended": "You do not have permission to mark calls ended.",
    "hangup": "You do not have permission to hang up calls.",
    "clear": "You do not have permission to clear a call's audio.",
    "transfer": "You do not have permission to transfer calls.",
    "say": "You do not have permission to make the agent speak.",
}


VIEW_PERMISSION = "calls.view_call"
PLACE_PERMISSION = "calls.place_call"
# Not on the live page: it is for a call that looks live there but that Twilio has not got.
MARK_ENDED_PERMISSION = "calls.mark_call_ended"
LISTEN_PERMISSION = "calls.listen_recording"
LISTEN_PERMISSIONS = {"listen": "calls.listen_call", "take_over": "calls.take_over_call"}


def may(user: Any, permission: str) -> bool:
    """Whether `user` may take an action: its own permission, and seeing calls at all.

    Acting on calls one cannot see (not even their list) would be acting blind.
    """
    return user.has_perm(VIEW_PERMISSION) and user.has_perm(permission)


def allowed_actions(user: Any) -> dict[str, bool]:
    return {action: may(user, permission) for action, permission in ACTION_PERMISSIONS.items()}


def allowed_listening(user: Any) -> dict[str, bool]:
    """Listening in, and taking over (which needs listening: one hears whom one talks to)."""
    can = {action: may(user, permission) for action, permission in LISTEN_PERMISSIONS.items()}
    can["take_over"] = can["take_over"] and can["listen"]
    return can


# --- the live dashboard ---------------------------------------------------------------------


def live(request: HttpRequest, model_admin: ModelAdmin) -> HttpResponse:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    url_names = {**{action: action for action in ACTION_PERMISSIONS}, "detail": "change"}
    config = {
        "socketPath": LIVE_SOCKET_PATH,
        "placeholder": str(PLACEHOLDER_ID),
        "urls": {
            key: reverse(f"admin:calls_call_{name}", args=[PLACEHOLDER_ID])
            for key, name in url_names.items()
        },
        "can": allowed_actions(request.user),
        # The words the feed's messages do not carry.
        "labels": {"speaking": labels.SPEAKING_LABELS},
        "recentEvents": feed.SNAPSHOT_RECENT_EVENTS,
    }
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": Call._meta,
        "title": "Live calls",
        "config": config,
        "can": {**config["can"], **allowed_listening(request.user)},
        "listen": LISTEN_SOCKET,
        # Each card's action forms, cloned by the page's script, which fills in the targets.
        "say_form": SayForm(auto_id=False),
        "transfer_form": TransferForm(auto_id=False),
        "can_place": may(request.user, PLACE_PERMISSION),
        "zone_label": labels.time_zone_label(),
    }
    return TemplateResponse(request, "admin/calls/call/live.html", context)


# --- actions on a live call -----------------------------------------------------------------


@require_POST
def hangup(request: HttpRequest, call_id: uuid.UUID, model_admin: ModelAdmin) -> HttpResponse:
    def act() -> Outcome:
        outcome = async_to_sync(services.call_hangup)(
            call_id=str(call_id),
            actor=Actor.STAFF,
            reason=EndReason.STAFF_HANGUP,
            user=request.user,
        )
        if not outcome.done:
            return Outcome("The call had already ended or was being hung up.")
        return Outcome("Hung up.", outcome.stream_note)

    return _perform(request, call_id, "hangup", act)


@require_POST
def clear(request: HttpRequest, call_id: uuid.UUID, model_admin: ModelAdmin) -> HttpResponse:
    def act() -> Outcome:
        async_to_sync(services.call_clear_audio)(
            call_id=str(call_id), actor=Actor.STAFF, user=request.user
        )
        return Outcome("Cleared the audio that was playing.")

    return _perform(request, call_id, "clear", act)


@require_POST
def transfer(request: HttpRequest, call_id: uuid.UUID, model_admin: ModelAdmin) -> HttpResponse:
    def act() -> Outcome:
        form = _valid(TransferForm(request.POST))
        outcome = async_to_sync(services.call_transfer)(
            call_id=str(call_id),
            actor=Actor.STAFF,
            target_name=form.cleaned_data["target"] or None,
            user=request.user,
            reason=form.cleaned_data["reason"] or "staff transfer from the admin",
            mode=form.cleaned_data["mode"] or None,
        )
        target = outcome.target
        if (form.cleaned_data["mode"] or target.mode) == TransferMode.WARM:
            return Outcome(
                f"Calling {target.name} ({target.phone_number}); the caller comes back to the "
                "agent unless they accept.",
                outcome.stream_note,
            )
        return Outcome(
            f"Transferred to {target.name} ({target.phone_number}).", outcome.stream_note
        )

    return _perform(request, call_id, "transfer", act)


@require_POST
def say(request: HttpRequest, call_id: uuid.UUID, model_admin: ModelAdmin) -> HttpResponse:
    def act() -> Outcome:
        text = _valid(SayForm(request.POST)).cleaned_data["text"]
        async_to_sync(services.call_say)(
            call_id=str(call_id), text=text, actor=Actor.STAFF, user=request.user
        )
        return Outcome(f"The agent will say: “{text}”")

    return _perform(request, call_id, "say", act)


@require_POST
def mark_ended(request: HttpRequest, call_id: uuid.UUID, model_admin: ModelAdmin) -> HttpResponse:
    if not may(request.user, MARK_ENDED_PERMISSION):
        if _wants_json(request):
            return JsonResponse({"ok": False, "message": REFUSALS["mark_ended"]}, status=403)
        raise PermissionDenied(REFUSALS["mark_ended"])
    try:
        message = async_to_sync(services.call_mark_ended)(call_id=str(call_id), user=request.user)
    except services.CallControlError as error:
        return _outcome(request, call_id, str(error), kind="error", status=error.status)
    return _outcome(request, call_id, message, kind="success", status=200)


@dataclass(frozen=True)
class Outcome:
    """What an action did, in words; `note` is what did not go as asked, said beside it."""

    message: str
    note: str = ""


def _valid(form: Any) -> Any:
    if not form.is_valid():
        first = next(iter(form.errors.values()))[0]
        raise services.CallControlError(first)
    return form


def _perform(
    request: HttpRequest, call_id: uuid.UUID, action: str, act: Callable[[], Outcome]
) -> HttpResponse:
    if not may(request.user, ACTION_PERMISSIONS[action]):
        if _wants_json(request):
            return JsonResponse({"ok": False, "message": REFUSALS[action]}, status=403)
        raise PermissionDenied(REFUSALS[action])
    try:
        outcome = act()
    except services.CallControlError as error:
        return _outcome(request, call_id, str(error), kind="error", status=error.status)
    if outcome.note:
        # Done (at Twilio), but the call's stream did not confirm: said, not hidden.
        message = f"{outcome.message} {outcome.note}"
        return _outcome(request, call_id, message, kind="warning", status=200)
    return _outcome(request, call_id, outcome.message, kind="success", status=200)


def _outcome(
    request: HttpRequest, call_id: uuid.UUID, message: str, *, kind: str, status: int
) -> HttpResponse:
    """The live page gets {"ok", "message"} (and "warning" for a success with a caveat);
    a plain form post gets the admin's message of that kind and a redirect back."""
    if _wants_json(request):
        body: dict[str, Any] = {"ok": kind != "error", "message": message}
        if kind == "warning":
            body["warning"] = True
        return JsonResponse(body, status=status)
    getattr(messages, kind)(request, message)
    back = request.POST.get("next", "")
    if url_has_allowed_host_and_scheme(
        back, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return redirect(back)
    return redirect("admin:calls_call_change", call_id)


def _wants_json(request: HttpRequest) -> bool:
    return request.headers.get("Accept", "").startswith("application/json")


# --- call out -------------------------------------------------------------------------------


def place(request: HttpRequest, model_admin: ModelAdmin) -> HttpResponse:
    if not may(request.user, PLACE_PERMISSION):
        raise PermissionDenied
    form = PlaceCallForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        agent, number = form.cleaned_data["agent"], form.cleaned_data["to_number"]
        try:
            call = async_to_sync(services.call_place_outbound)(
                agent=agent, to_number=number, user=request.user
            )
        except services.CallControlError as error:
            form.add_error(None, str(error))
        else:
            messages.success(request, f"{agent.name} is calling {number} ({call.sid}).")
            return redirect("admin:calls_call_live")
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": Call._meta,
        "title": "Call out",
        "form": form,
    }
    return TemplateResponse(request, "admin/calls/call/place.html", context)


# --- a call's page --------------------------------------------------------------------------


def detail(request: HttpRequest, object_id: str, model_admin: ModelAdmin) -> HttpResponse:
    call = model_admin.get_object(request, unquote(object_id))
    if call is None:
        raise Http404(f"No call with the id “{object_id}”; perhaps it was deleted.")
    if not model_admin.has_view_permission(request, call):
        raise PermissionDenied
    can = allowed_actions(request.user) if call.is_live else {}
    if call.is_live:
        can["mark_ended"] = may(request.user, MARK_ENDED_PERMISSION)
        can.update(allowed_listening(request.user))
    events = call.events.select_related("user")
    streams = list(call.streams.order_by("started_at"))
    targets = list(TransferTarget.objects.filter(agent_id=call.agent_id))
    # Played through the project's proxy (calls/recording_views.py), to staff who may.
    recordings = (
        list(call.recordings.filter(status=RecordingStatus.COMPLETED))
        if may(request.user, LISTEN_PERMISSION)
        else []
    )
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": Call._meta,
        "original": call,
        "title": f"Call {call.sid}",
        "call": call,
        "duration": labels.duration_label(call),
        "transcript": [
            (
                line,
                labels.offset_label(line.offset_ms),
                labels.interruption_label(line),
                labels.speaker_label(line),
            )
            for line in call.transcript.all()
        ],
        "events": [
            (
                event,
                labels.event_label(event.kind),
                labels.event_details(event.data, kind=event.kind),
            )
            for event in events
        ],
        "streams": streams,
        "recordings": [
            (recording, reverse("recording-audio", args=[recording.sid]))
            for recording in recordings
        ],
        "streams_running": any(stream.status == StreamStatus.STARTED for stream in streams),
        "can": can,
        "has_actions": any(can.values()),
        "listen": LISTEN_SOCKET,
        "say_form": SayForm(auto_id=False),
        # No targets, no transfer: the form is left out.
        "transfer_form": TransferForm(targets=targets, auto_id=False) if targets else None,
        "has_delete_permission": model_admin.has_delete_permission(request, call),
        "zone_label": labels.time_zone_label(),
        **_analysis_context(call),
    }
    return TemplateResponse(request, "admin/calls/call/detail.html", context)


def _analysis_context(call: Call) -> dict[str, Any]:
    analysis = CallAnalysis.objects.filter(call=call).first()
    fields = (analysis.fields if analysis else None) or {}
    return {
        "analysis": analysis,
        "analysis_fields": [
            (name.replace("_", " "), value if isinstance(value, str) else json.dumps(value))
            for name, value in fields.items()
        ],
    }


# --- changelist actions ---------------------------------------------------------------------


def hang_up_calls(calls: QuerySet[Call], user: Any) -> tuple[int, int, list[str]]:
    """Hang up every live call in `calls` at once: (hung up, already ending, error messages)."""
    ids = [str(pk) for pk in calls.values_list("pk", flat=True)]

    async def hang_up_all() -> list[Any]:
        return await asyncio.gather(
            *(
                services.call_hangup(
                    call_id=call_id, actor=Actor.STAFF, reason=EndReason.STAFF_HANGUP, user=user
                )
                for call_id in ids
            ),
            return_exceptions=True,
        )

    results = async_to_sync(hang_up_all)()
    errors = [r for r in results if isinstance(r, BaseException)]
    for error in errors:
        if not isinstance(error, services.CallControlError):
            raise error
    done = [r.done for r in results if isinstance(r, services.ControlOutcome)]
    return done.count(True), done.count(False), [str(error) for error in errors]


CSV_COLUMNS = [
    "call_sid",
    "call_started_at",
    "direction",
    "from",
    "to",
    "agent",
    "offset_ms",
    "speaker",
    "text",
    "interrupted",
    "heard_ms",
    "outcome",
    "outcome_detail",
    "duration_seconds",
    "summary",
]
# Then one column per structured field of the calls' analyses: "field:<name>".
FIELD_COLUMN_PREFIX = "field:"
# A cell a spreadsheet would read as a formula. Callers' words end up in these files.
_FORMULA_START = re.compile(r"^[=+\-@\t\r]")
_E164 = re.compile(r"^\+[0-9]{1,15}$")


def csv_safe(value: str) -> str:
    if _FORMULA_START.match(value) and not _E164.match(value):
        return "'" + value
    return value


def _field_cell(value: Any) -> str:
    return csv_safe(value) if isinstance(value, str) else json.dumps(value)


def transcript_rows(calls: QuerySet[Call]) -> Iterator[list[Any]]:
    entries = (
        TranscriptEntry.objects.filter(call__in=calls)
        .select_related("call", "call__agent", "call__analysis")
        .order_by("call__created_at", "call_id", "offset_ms", "id")
    )
    field_names = sorted(
        {
            name
            for fields in CallAnalysis.objects.filter(call__in=calls).values_list(
                "fields", flat=True
            )
            for name in (fields or {})
        }
    )
    yield CSV_COLUMNS + [FIELD_COLUMN_PREFIX + name for name in field_names]
    for entry in entries.iterator(chunk_size=2000):
        call = entry.call
        analysis = getattr(call, "analysis", None)
        fields = (analysis.fields if analysis else None) or {}
        yield [
            call.sid,
            call.created_at.isoformat(),
            call.direction,
            csv_safe(call.from_number),
            csv_safe(call.to_number),
            csv_safe(call.agent.name if call.agent_id else ""),
            entry.offset_ms,
            entry.speaker,
            csv_safe(entry.text),
            "yes" if entry.interrupted else "no",
            "" if entry.heard_ms is None else entry.heard_ms,
            call.outcome,
            csv_safe(call.outcome_detail),
            "" if call.duration_seconds is None else call.duration_seconds,
            csv_safe(analysis.summary) if analysis else "",
            *(_field_cell(fields[name]) if name in fields else "" for name in field_names),
        ]


def transcripts_csv(calls: QuerySet[Call]) -> HttpResponse:
    filename = f"transcripts-{timezone.now():%Y%m%d-%H%M%S}.csv"
    response = HttpResponse(
        content_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
    csv.writer(response).writerows(transcript_rows(calls))
    return response
