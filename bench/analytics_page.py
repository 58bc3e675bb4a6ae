"""Time the analytics page on many calls: `python -m bench.analytics_page [--calls 100000]`.

Builds a fresh database (a temporary SQLite file, or the empty PostgreSQL database given by
--database-url), seeds it with calls spread over 90 days across three agents (outcomes,
durations, a log of events per call, some model failures), then GETs
/admin/calls/call/analytics/ as a staff user for the last 30 and 90 days and for one agent,
and prints the median time of each.
"""

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

OUTCOME_WEIGHTS = {
    "resolved": 45,
    "transferred": 15,
    "transfer_unanswered": 4,
    "caller_hung_up": 15,
    "no_answer": 8,
    "voicemail": 5,
    "failed": 3,
    "staff_ended": 2,
    "timed_out": 3,
}
DAYS = 90
BATCH = 5000


def _setup(database_url: str | None, sqlite_path: str | None = None) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voicebot.settings")
    os.environ["DJANGO_DEBUG"] = "true"
    os.environ["ALLOWED_HOSTS"] = "testserver"
    if database_url:
        os.environ["DATABASE_URL"] = database_url
    else:
        os.environ["DATABASE_URL"] = ""
        os.environ["SQLITE_PATH"] = sqlite_path or str(Path(tempfile.mkdtemp()) / "bench.sqlite3")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _seed(calls: int) -> None:
    from django.db import transaction
    from django.utils import timezone

    from agents.models import Agent
    from calls.models import Call, CallEvent

    # Seeding only: keep the spread-out creation times we give.
    Call._meta.get_field("created_at").auto_now_add = False
    agents = [
        Agent.objects.create(name=name, phone_number=f"+1415555010{i}")
        for i, name in enumerate(["Front desk", "Sales", "Support"])
    ]
    rng = random.Random(1)
    outcomes, weights = zip(*OUTCOME_WEIGHTS.items(), strict=True)
    now = timezone.now()
    made = 0
    while made < calls:
        batch = []
        for i in range(min(BATCH, calls - made)):
            outcome = rng.choices(outcomes, weights)[0]
            answered = outcome not in ("no_answer",)
            batch.append(
                Call(
                    sid=f"CA{made + i:032d}",
                    direction="inbound",
                    from_number="+14155550123",
                    to_number="+14155550100",
                    agent=rng.choice(agents),
                    status="no-answer" if outcome == "no_answer" else "completed",
                    created_at=now - timedelta(seconds=rng.uniform(0, DAYS * 86400)),
                    duration_seconds=int(rng.lognormvariate(4.5, 0.8)) if answered else None,
                    outcome=outcome,
                )
            )
        with transaction.atomic():
            created = Call.objects.bulk_create(batch)
            # Every call has a log; a model failure is one event among many.
            CallEvent.objects.bulk_create(
                CallEvent(call=call, kind=kind, actor="system", data={})
                for call in created
                for kind in ("answered", "status", "ended")
            )
            CallEvent.objects.bulk_create(
                CallEvent(call=call, kind="agent_error", actor="system", data={"failure": "x"})
                for call in created
                if call.outcome == "failed"
            )
        made += len(batch)


def _time(client, path: str, params: dict, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        response = client.get(path, params)
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, response.status_code
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--database-url", help="an empty PostgreSQL database (default: SQLite)")
    parser.add_argument("--sqlite-path", help="keep the SQLite database here (seeded once)")
    args = parser.parse_args(argv)
    _setup(args.database_url, args.sqlite_path)

    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    from agents.models import Agent

    started = time.perf_counter()
    _seed(args.calls)
    print(
        f"Seeded {args.calls} calls on {connection.vendor} in {time.perf_counter() - started:.1f} s"
    )
    user = User.objects.create_superuser("bench", password="bench-password-1")
    client = Client()
    client.force_login(user)
    today = timezone.localdate()
    path = "/admin/calls/call/analytics/"
    cases = {
        "last 30 days, all agents": {"start": today - timedelta(days=29), "end": today},
        "last 90 days, all agents": {"start": today - timedelta(days=89), "end": today},
        "last 90 days, one agent": {
            "start": today - timedelta(days=89),
            "end": today,
            "agent": Agent.objects.get(name="Sales").pk,
        },
    }
    for name, params in cases.items():
        ms = _time(client, path, params, args.repeats)
        print(f"{name}: median {ms:.0f} ms over {args.repeats} requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
