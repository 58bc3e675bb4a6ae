"""The analytics page (/admin/calls/call/analytics/): a date range and an agent in, the
figures of `services.calls_analytics` out, as a table and as charts (Chart.js, served from
our static files). Needs calls.view_call."""

from datetime import timedelta
from typing import Any

from django import forms
from django.contrib.admin import ModelAdmin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from agents.models import Agent

from . import services
from .models import Call
from .services.analytics import AgentFigures

DEFAULT_DAYS = 30
# A longer range is refused: the per-day chart and the queries stay bounded.
MAX_DAYS = 366
WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


class AnalyticsForm(forms.Form):
    start = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}))
    agent = forms.ModelChoiceField(
        queryset=Agent.objects.all(), required=False, empty_label="All agents"
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        start, end = data.get("start"), data.get("end")
        if start and end:
            if end < start:
                raise forms.ValidationError("The end date is before the start date.")
            if (end - start).days >= MAX_DAYS:
                raise forms.ValidationError(f"Choose at most {MAX_DAYS} days.")
        return data


def _percent(share: float | None) -> str:
    return "–" if share is None else f"{share * 100:.1f} %"


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    minutes, seconds = divmod(int(value), 60)
    return f"{minutes}:{seconds:02d}"


def _row(figures: AgentFigures) -> dict[str, Any]:
    return {
        "name": figures.name,
        "calls": figures.calls,
        "conversations": figures.conversations,
        "containment": _percent(figures.containment),
        "transfer_rate": _percent(figures.transfer_rate),
        "transfer_answer_rate": _percent(figures.transfer_answer_rate),
        "abandonment": _percent(figures.abandonment),
        "agent_failures": figures.agent_failures,
        "median": _seconds(figures.median_seconds),
        "p90": _seconds(figures.p90_seconds),
    }


def analytics(request: HttpRequest, model_admin: ModelAdmin) -> HttpResponse:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    today = timezone.localdate()
    initial = {"start": today - timedelta(days=DEFAULT_DAYS - 1), "end": today}
    form = AnalyticsForm(request.GET if "start" in request.GET else initial)
    figures = None
    if form.is_valid():
        data = form.cleaned_data
        agent = data["agent"]
        figures = services.calls_analytics(
            start=data["start"], end=data["end"], agent_id=agent.pk if agent else None
        )
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": Call._meta,
        "title": "Call analytics",
        "form": form,
        "figures": figures,
        "rows": [_row(f) for f in figures.agents] if figures else [],
        "total": _row(figures.total) if figures else None,
        "hours": [f"{hour:02d}" for hour in range(24)],
        "weekdays": list(zip(WEEKDAYS, figures.per_hour_of_week, strict=True)) if figures else [],
        "chart_data": _chart_data(figures) if figures else None,
    }
    return TemplateResponse(request, "admin/calls/call/analytics.html", context)


def _chart_data(figures: Any) -> dict[str, Any]:
    return {
        "days": [day.isoformat() for day, _ in figures.per_day],
        "per_day": [n for _, n in figures.per_day],
        "hours": [f"{WEEKDAYS[d]} {h:02d}" for d in range(7) for h in range(24)],
        "per_hour": [n for row in figures.per_hour_of_week for n in row],
        "agents": [f.name for f in figures.agents],
        "containment": [_ratio(f.containment) for f in figures.agents],
        "transfer_rate": [_ratio(f.transfer_rate) for f in figures.agents],
        "abandonment": [_ratio(f.abandonment) for f in figures.agents],
    }


def _ratio(share: float | None) -> float | None:
    return None if share is None else round(share * 100, 1)



