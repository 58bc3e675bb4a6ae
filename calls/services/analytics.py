"""The analytics page's figures, computed in the database.

Over the calls created in a date range (the site's time zone), for each agent and for all:
calls, and of the finished calls that reached the agent ("conversations": not unanswered,
not voicemail) the share resolved by the agent with no person (containment), transferred
(transfer rate), and hung up by the caller mid-conversation (abandonment); of the
transfers, the share the person answered; calls on which the agent (the model) failed;
median and 90th-percentile duration. Plus calls per day and per hour of the week.

Percentiles are nearest-rank (the smallest value with at least p of the durations at or
below it): PostgreSQL's `percentile_disc`, one grouped query; elsewhere an ordered query
with an offset per agent. Both give the same answer.
"""

import math
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from django.db import connection
from django.db.models import Aggregate, Count, FloatField, Q, QuerySet
from django.db.models.functions import ExtractHour, ExtractIsoWeekDay, TruncDate
from django.utils import timezone

from agents.models import Agent

from ..models import Call, CallEvent, Outcome

PERCENTILES = (0.5, 0.9)
NOT_CONVERSATIONS = (Outcome.NO_ANSWER, Outcome.VOICEMAIL)
TRANSFERS = (Outcome.TRANSFERRED, Outcome.TRANSFER_UNANSWERED)
ALL_AGENTS = "All agents"
NO_AGENT = "No agent"


class PercentileDisc(Aggregate):
    """PostgreSQL's ordered-set aggregate: percentile_disc(p) WITHIN GROUP (ORDER BY x)."""

    function = "PERCENTILE_DISC"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression: str, fraction: float, **extra: Any) -> None:
        super().__init__(expression, fraction=float(fraction), **extra)


@dataclass
class AgentFigures:
    name: str
    calls: int = 0
    conversations: int = 0
    resolved: int = 0
    transfers: int = 0
    transfers_answered: int = 0
    caller_hung_up: int = 0
    agent_failures: int = 0
    median_seconds: float | None = None
    p90_seconds: float | None = None

    @staticmethod
    def _share(part: int, whole: int) -> float | None:
        return None if whole == 0 else part / whole

    @property
    def containment(self) -> float | None:
        return self._share(self.resolved, self.conversations)

    @property
    def transfer_rate(self) -> float | None:
        return self._share(self.transfers, self.conversations)

    @property
    def transfer_answer_rate(self) -> float | None:
        return self._share(self.transfers_answered, self.transfers)

    @property
    def abandonment(self) -> float | None:
        return self._share(self.caller_hung_up, self.conversations)


@dataclass
class Analytics:
    start: date
    end: date  # inclusive
    agents: list[AgentFigures] = field(default_factory=list)
    total: AgentFigures = field(default_factory=lambda: AgentFigures(ALL_AGENTS))
    per_day: list[tuple[date, int]] = field(default_factory=list)
    # [weekday 1 (Monday) .. 7][hour 0..23] -> calls
    per_hour_of_week: list[list[int]] = field(default_factory=list)


def _bounds(start: date, end: date) -> tuple[datetime, datetime]:
    zone = timezone.get_current_timezone()
    return (
        datetime.combine(start, time.min, tzinfo=zone),
        datetime.combine(end + timedelta(days=1), time.min, tzinfo=zone),
    )


def _counts(calls: QuerySet[Call]) -> dict[Any, dict[str, int]]:
    conversation = ~Q(outcome="") & ~Q(outcome__in=NOT_CONVERSATIONS)
    rows = calls.values("agent_id").annotate(
        calls=Count("pk"),
        conversations=Count("pk", filter=conversation),
        resolved=Count("pk", filter=Q(outcome=Outcome.RESOLVED)),
        transfers=Count("pk", filter=Q(outcome__in=TRANSFERS)),
        transfers_answered=Count("pk", filter=Q(outcome=Outcome.TRANSFERRED)),
        caller_hung_up=Count("pk", filter=Q(outcome=Outcome.CALLER_HUNG_UP)),
    )
    return {row.pop("agent_id"): row for row in rows.order_by()}


def _failures(calls: QuerySet[Call]) -> dict[Any, int]:
    rows = (
        CallEvent.objects.filter(kind="agent_error", call__in=calls.values("pk"))
        .values("call__agent_id")
        .annotate(n=Count("call_id", distinct=True))
        .order_by()
    )
    return {row["call__agent_id"]: row["n"] for row in rows}


def _percentiles_grouped(durations: QuerySet[Call]) -> dict[Any, tuple[float | None, ...]]:
    if connection.vendor == "postgresql":
        names = {f"p{int(p * 100)}": PercentileDisc("duration_seconds", p) for p in PERCENTILES}
        rows = durations.values("agent_id").annotate(**names).order_by()
        return {row["agent_id"]: tuple(row[name] for name in names) for row in rows}
    counts = dict(durations.values_list("agent_id").annotate(n=Count("pk")).order_by())
    return {
        agent_id: _percentiles_by_offset(
            durations.filter(agent_id=agent_id)
            if agent_id
            else durations.filter(agent_id__isnull=True),
            n,
        )
        for agent_id, n in counts.items()
    }


def _percentiles_by_offset(durations: QuerySet[Call], n: int) -> tuple[float | None, ...]:
    ordered = durations.order_by("duration_seconds").values_list("duration_seconds", flat=True)
    return tuple(float(ordered[max(0, math.ceil(p * n) - 1)]) if n else None for p in PERCENTILES)


def _percentiles_all(durations: QuerySet[Call]) -> tuple[float | None, ...]:
    if connection.vendor == "postgresql":
        names = {f"p{int(p * 100)}": PercentileDisc("duration_seconds", p) for p in PERCENTILES}
        row = durations.aggregate(**names)
        return tuple(row[name] for name in names)
    return _percentiles_by_offset(durations, durations.count())


def calls_analytics(*, start: date, end: date, agent_id: int | None = None) -> Analytics:
    """The figures for calls created from `start` to `end` (inclusive), one agent or all."""
    low, high = _bounds(start, end)
    calls = Call.objects.filter(created_at__gte=low, created_at__lt=high)
    if agent_id is not None:
        calls = calls.filter(agent_id=agent_id)
    durations = calls.exclude(outcome="").filter(duration_seconds__isnull=False)
    counts = _counts(calls)
    failures = _failures(calls)
    percentiles = _percentiles_grouped(durations)
    names = dict(Agent.objects.filter(pk__in=[pk for pk in counts if pk]).values_list("pk", "name"))
    result = Analytics(start=start, end=end)
    for pk, row in counts.items():
        figures = AgentFigures(names.get(pk, NO_AGENT) if pk else NO_AGENT, **row)
        figures.agent_failures = failures.get(pk, 0)
        figures.median_seconds, figures.p90_seconds = percentiles.get(pk, (None, None))
        result.agents.append(figures)
    result.agents.sort(key=lambda figures: figures.name.lower())
    total = result.total
    for figures in result.agents:
        for name in (
            "calls",
            "conversations",
            "resolved",
            "transfers",
            "transfers_answered",
            "caller_hung_up",
            "agent_failures",
        ):
            setattr(total, name, getattr(total, name) + getattr(figures, name))
    total.median_seconds, total.p90_seconds = _percentiles_all(durations)

    zone = timezone.get_current_timezone()
    by_day = dict(
        calls.annotate(day=TruncDate("created_at", tzinfo=zone))
        .values_list("day")
        .annotate(n=Count("pk"))
        .order_by()
    )
    result.per_day = [
        (day, by_day.get(day, 0))
        for day in (start + timedelta(days=i) for i in range((end - start).days + 1))
    ]
    grid = [[0] * 24 for _ in range(7)]
    rows = (
        calls.annotate(
            weekday=ExtractIsoWeekDay("created_at", tzinfo=zone),
            hour=ExtractHour("created_at", tzinfo=zone),
        )
        .values_list("weekday", "hour")
        .annotate(n=Count("pk"))
        .order_by()
    )
    for weekday, hour, n in rows:
        grid[weekday - 1][hour] = n
    result.per_hour_of_week = grid
    return result
