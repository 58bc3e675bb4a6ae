"""The analytics page's figures, computed in the database.

Over the calls created in a date range (the site's time zone), for each agent and for all:
calls, and of the finished calls that reached the agent ("conversations": not unanswered,
not voicemail) the share resolved by the agent with no person (containment), transferred
(transfer rate), and hung up by the caller mid-conversation (abandonment); of the
transfers, the share the person answered; calls on which the agent (the model) failed;
median and 90th-percentile duration. Plus calls per day and per hour of the week.

Percentiles are nearest-rank (the smallest value with at least p of the durations at or
below it): PostgreSQL's `percentile_disc`, one grouped query; elsewhere one query counting
the calls per agent and whole second of duration, ranked here. Both give the same answer.
Every count is a GROUP BY in the database; the index `call_analytics` covers the columns
read, so a date range is read from the index alone.
"""

import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.db import connection
from django.db.models import Aggregate, CharField, Count, FloatField, Q, QuerySet
from django.db.models.functions import Cast, Substr, TruncHour
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
        calls=Count("*"),
        conversations=Count("created_at", filter=conversation),
        resolved=Count("created_at", filter=Q(outcome=Outcome.RESOLVED)),
        transfers=Count("created_at", filter=Q(outcome__in=TRANSFERS)),
        transfers_answered=Count("created_at", filter=Q(outcome=Outcome.TRANSFERRED)),
        caller_hung_up=Count("created_at", filter=Q(outcome=Outcome.CALLER_HUNG_UP)),
    )
    return {row.pop("agent_id"): row for row in rows.order_by()}


def _failures(low: datetime, high: datetime, agent_id: int | None) -> dict[Any, int]:
    # From the few agent_error events (indexed by kind) to their calls, not the other way.
    events = CallEvent.objects.filter(
        kind="agent_error", call__created_at__gte=low, call__created_at__lt=high
    )
    if agent_id is not None:
        events = events.filter(call__agent_id=agent_id)
    rows = events.values("call__agent_id").annotate(n=Count("call_id", distinct=True)).order_by()
    return {row["call__agent_id"]: row["n"] for row in rows}


def _nearest_rank(histogram: list[tuple[int, int]], total: int) -> tuple[float | None, ...]:
    """Percentiles of the values in `histogram` ((value, count) in ascending order)."""
    result: list[float | None] = []
    for p in PERCENTILES:
        if not total:
            result.append(None)
            continue
        rank, seen = math.ceil(p * total), 0
        for value, count in histogram:
            seen += count
            if seen >= rank:
                result.append(float(value))
                break
    return tuple(result)


def _percentiles(
    durations: QuerySet[Call],
) -> tuple[dict[Any, tuple[float | None, ...]], tuple[float | None, ...]]:
    """Per agent, and over all: (median, p90) of the durations."""
    if connection.vendor == "postgresql":
        names = {f"p{int(p * 100)}": PercentileDisc("duration_seconds", p) for p in PERCENTILES}
        rows = durations.values("agent_id").annotate(**names).order_by()
        overall = durations.order_by().aggregate(**names)
        return (
            {row["agent_id"]: tuple(row[name] for name in names) for row in rows},
            tuple(overall[name] for name in names),
        )
    # Elsewhere: how many calls lasted each whole second, per agent, grouped in the
    # database (a few thousand rows at most), then counted up to the rank.
    rows = (
        durations.values_list("agent_id", "duration_seconds")
        .annotate(n=Count("*"))
        .order_by("duration_seconds")
    )
    per_agent: dict[Any, list[tuple[int, int]]] = {}
    overall_counts: dict[int, int] = {}
    for agent_id, seconds, n in rows:
        per_agent.setdefault(agent_id, []).append((seconds, n))
        overall_counts[seconds] = overall_counts.get(seconds, 0) + n
    overall = sorted(overall_counts.items())
    return (
        {
            agent_id: _nearest_rank(histogram, sum(n for _, n in histogram))
            for agent_id, histogram in per_agent.items()
        },
        _nearest_rank(overall, sum(overall_counts.values())),
    )


def _calls_per_utc_hour(calls: QuerySet[Call]) -> list[tuple[datetime, int]]:
    """How many calls began in each hour (UTC), grouped in the database.

    PostgreSQL truncates natively; on SQLite the stored text's first 13 characters
    ("YYYY-MM-DD HH") are the hour, with no per-row function call into Python.
    """
    if connection.vendor == "postgresql":
        rows = (
            calls.annotate(hour=TruncHour("created_at", tzinfo=UTC))
            .values_list("hour")
            .annotate(n=Count("*"))
            .order_by()
        )
        return list(rows)
    rows = (
        calls.annotate(hour=Substr(Cast("created_at", CharField()), 1, 13))
        .values_list("hour")
        .annotate(n=Count("*"))
        .order_by()
    )
    return [(datetime.strptime(hour, "%Y-%m-%d %H").replace(tzinfo=UTC), n) for hour, n in rows]


def calls_analytics(*, start: date, end: date, agent_id: int | None = None) -> Analytics:
    """The figures for calls created from `start` to `end` (inclusive), one agent or all."""
    low, high = _bounds(start, end)
    calls = Call.objects.filter(created_at__gte=low, created_at__lt=high)
    if agent_id is not None:
        calls = calls.filter(agent_id=agent_id)
    durations = calls.exclude(outcome="").filter(duration_seconds__isnull=False)
    counts = _counts(calls)
    failures = _failures(low, high, agent_id)
    percentiles, overall = _percentiles(durations)
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
    total.median_seconds, total.p90_seconds = overall

    # Hours are folded into the site's local days and hours of the week here, so the
    # grouping stays in the database (a time zone whose offset is not whole hours counts a
    # call in the local hour its UTC hour began in).
    zone = timezone.get_current_timezone()
    by_day: dict[date, int] = {}
    grid = [[0] * 24 for _ in range(7)]
    for hour, n in _calls_per_utc_hour(calls):
        local = hour.astimezone(zone)
        by_day[local.date()] = by_day.get(local.date(), 0) + n
        grid[local.weekday()][local.hour] += n
    result.per_day = [
        (day, by_day.get(day, 0))
        for day in (start + timedelta(days=i) for i in range((end - start).days + 1))
    ]
    result.per_hour_of_week = grid
    return result
