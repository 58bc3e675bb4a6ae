"""The agent page's "Test this agent": start a simulated call, then watch it to the end."""

from django.contrib import messages
from django.contrib.admin import ModelAdmin
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.views.decorators.http import require_POST

from agents.models import Agent

from . import labels
from .admin_views import PLACE_PERMISSION, may
from .agent_trial import AgentTrialError, agent_trial_get, agent_trial_start
from .models import Call

# The progress page reloads itself this often while the call runs.
REFRESH_SECONDS = 1


@require_POST
def start(request: HttpRequest, agent_id: int, model_admin: ModelAdmin) -> HttpResponse:
    if not may(request.user, PLACE_PERMISSION):
        raise PermissionDenied("You do not have permission to place calls.")
    agent = get_object_or_404(Agent, pk=agent_id)
    try:
        trial = agent_trial_start(agent=agent, server_url=request.build_absolute_uri("/"))
    except AgentTrialError as error:
        messages.error(request, str(error))
        return redirect("admin:agents_agent_change", agent.pk)
    return redirect("admin:calls_call_trial", trial.call_sid)


def progress(request: HttpRequest, call_sid: str, model_admin: ModelAdmin) -> HttpResponse:
    if not may(request.user, PLACE_PERMISSION):
        raise PermissionDenied
    trial = agent_trial_get(call_sid=call_sid)
    call = Call.objects.select_related("agent").filter(sid=call_sid).first()
    if trial is None and call is None:
        raise Http404("No such test call.")
    running = trial is not None and trial.running
    agent = Agent.objects.filter(pk=trial.agent_id).first() if trial else call.agent
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": Call._meta,
        "title": f"Testing {agent.name if agent else 'an agent'}",
        "agent": agent,
        "call": call,
        "running": running,
        "refresh_seconds": REFRESH_SECONDS if running else None,
        "outcome": trial.outcome if trial else "",
        "caller_log": trial.progress if trial else [],
        "status": (
            "Running: the test call is under way…"
            if running
            else "Finished."
            if trial
            else "This server no longer has the test caller's account; the call's record is below."
        ),
        "transcript": [
            (labels.offset_label(line.offset_ms), labels.speaker_label(line), line.text)
            for line in (call.transcript.all() if call else [])
        ],
        "events": [
            (
                labels.time_label(event.created_at),
                event.actor_label,
                labels.event_label(event.kind),
                labels.event_details(event.data, kind=event.kind),
            )
            for event in (call.events.select_related("user") if call else [])
        ],
        "zone_label": labels.time_zone_label(),
        "ended_label": labels.ended_label(call) if call and not call.is_live else "",
    }
    return TemplateResponse(request, "admin/calls/call/agent_trial.html", context)
