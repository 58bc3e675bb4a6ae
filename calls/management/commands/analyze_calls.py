import asyncio
from collections import Counter
from datetime import datetime, time

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from calls import services
from calls.models import TERMINAL_STATUSES, AnalysisStatus, Call, CallAnalysis


def _since(value: str) -> datetime:
    moment = parse_datetime(value)
    if moment is None and (day := parse_date(value)) is not None:
        moment = datetime.combine(day, time.min)
    if moment is None:
        raise CommandError(f"--since {value!r}: use a date (2025-01-31) or a date and time.")
    return timezone.make_aware(moment) if timezone.is_naive(moment) else moment


class Command(BaseCommand):
    help = (
        "Backfill finished calls' outcomes and run their post-call analysis: the calls that "
        "have none, or all of them again with --redo. Runs here, at most "
        "ANALYSIS_CONCURRENCY at a time, alongside the servers' analysis loops (each job is "
        "claimed by one worker). A job waiting for a retry is left to its time."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--since", help="Only calls created from this date (or date and time).")
        parser.add_argument("--agent", help="Only the calls of the agent with this name.")
        parser.add_argument(
            "--redo", action="store_true", help="Derive outcomes and analyse again, even if done."
        )

    def handle(self, *args, since: str | None, agent: str | None, redo: bool, **options) -> None:
        calls = Call.objects.filter(status__in=TERMINAL_STATUSES)
        if since:
            calls = calls.filter(created_at__gte=_since(since))
        if agent:
            calls = calls.filter(agent__name=agent)
        # Without --redo, only calls that have no outcome yet get one.
        changed = services.calls_outcome_backfill(calls=calls if redo else calls.filter(outcome=""))
        self.stdout.write(f"Outcomes set on {changed} calls.")

        queued = 0
        for call_id in calls.exclude(outcome="").values_list("pk", flat=True).iterator():
            queued += services.analysis_enqueue(call_id=call_id, redo=redo, delay_seconds=0)
        self.stdout.write(f"Analyses queued: {queued}.")

        statuses: Counter = Counter()
        while batch := asyncio.run(services.analyses_run_due()):
            statuses.update(batch)
        waiting = CallAnalysis.objects.filter(call__in=calls, status=AnalysisStatus.PENDING).count()
        done = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
        self.stdout.write(self.style.SUCCESS(f"Analysed: {done or 'nothing'}."))
        if waiting:
            self.stdout.write(f"{waiting} waiting for a retry (see each call's page).")
