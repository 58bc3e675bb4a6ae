"""The database under a burst of webhooks, as in production: one daphne process, real
PostgreSQL (its own private server) or SQLite named by DATABASE_URL, and every request a
signed `/twilio/voice/incoming` sent at once.

Under ASGI each request runs in a thread of its own, so a connection kept per thread grew
with the burst until PostgreSQL refused new ones; the pool caps a process at its size.
The figures are printed and written to test-output/database-figures.txt.
"""

import asyncio
import collections
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import psycopg
import pytest

from agents.management.commands.seed_demo import DEMO_NUMBER
from calls import security

from .servers import ROOT, daphne, server_environment
from .twilio_helpers import incoming_params, new_call_sid

PATH = "/twilio/voice/incoming"
POOL_MAX_SIZE = 8
FIGURES = ROOT / "test-output" / "database-figures.txt"


def report(line: str, capsys) -> None:
    with capsys.disabled():
        print(f"\n{line}")
    FIGURES.parent.mkdir(exist_ok=True)
    with FIGURES.open("a") as figures:
        figures.write(line + "\n")


def log_tail(path: Path) -> str:
    return path.read_text()[-4000:]


def prepare(database_url: str) -> None:
    """Migrate the database and add the demo agent, as a deployment would."""
    env = server_environment(DATABASE_URL=database_url)
    code = (
        "from django.core.management import call_command; "
        "call_command('migrate', interactive=False, verbosity=0); call_command('seed_demo')"
    )
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=120,
        capture_output=True,
    )


async def burst(base_url: str, count: int) -> collections.Counter:
    """`count` signed incoming-call webhooks at once; how many got each status."""

    async def one(http: aiohttp.ClientSession) -> int:
        params = incoming_params(new_call_sid(), DEMO_NUMBER)
        signature = security.compute_signature(security.public_url(PATH), params)
        async with http.post(
            base_url + PATH, data=params, headers={security.SIGNATURE_HEADER: signature}
        ) as response:
            await response.read()
            return response.status

    connector = aiohttp.TCPConnector(limit=0)  # no client-side cap: all of them at once
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        return collections.Counter(await asyncio.gather(*(one(http) for _ in range(count))))


class ConnectionWatch:
    """Samples pg_stat_activity: how many connections the server holds to `database`."""

    QUERY = (
        "SELECT count(*), count(*) FILTER (WHERE state <> 'idle') FROM pg_stat_activity"
        " WHERE datname = %s AND backend_type = 'client backend'"
    )

    def __init__(self, admin_url: str, database: str) -> None:
        self.admin_url, self.database = admin_url, database
        self.most = 0
        self._task: asyncio.Task | None = None

    async def held(self) -> tuple[int, int]:
        """(connections held, of which busy) right now."""
        async with await psycopg.AsyncConnection.connect(self.admin_url, autocommit=True) as db:
            cursor = await db.execute(self.QUERY, [self.database])
            return await cursor.fetchone()

    async def _sample(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.admin_url, autocommit=True) as db:
            while True:
                cursor = await db.execute(self.QUERY, [self.database])
                held, _busy = await cursor.fetchone()
                self.most = max(self.most, held)
                await asyncio.sleep(0.02)

    async def __aenter__(self) -> "ConnectionWatch":
        self._task = asyncio.create_task(self._sample())
        await asyncio.sleep(0.1)
        return self

    async def __aexit__(self, *exc_info) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


@pytest.mark.postgres
async def test_a_burst_of_webhooks_on_postgresql_stays_within_the_pool(
    postgres_url, tmp_path, capsys
):
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
        await admin.execute("CREATE DATABASE voicebot")
    database_url = postgres_url.rsplit("/", 1)[0] + "/voicebot"
    await asyncio.to_thread(prepare, database_url)
    overrides = {"DATABASE_URL": database_url, "DATABASE_POOL_MAX_SIZE": str(POOL_MAX_SIZE)}
    log = tmp_path / "daphne.log"
    with daphne(log, **overrides) as base_url:
        try:
            async with ConnectionWatch(postgres_url, "voicebot") as watch:
                started = time.monotonic()
                statuses = await burst(base_url, 300)
                elapsed = time.monotonic() - started
            await asyncio.sleep(10)
            later, busy_later = await watch.held()
        except BaseException:
            print(log_tail(log))
            raise
    report(
        f"PostgreSQL, one daphne, pool max {POOL_MAX_SIZE}: 300 concurrent incoming webhooks in"
        f" {elapsed:.1f} s -> statuses {dict(statuses)}; connections held at most"
        f" {watch.most}; 10 s later {later} ({busy_later} busy)",
        capsys,
    )
    assert statuses == {200: 300}, log_tail(log)
    assert 0 < watch.most <= POOL_MAX_SIZE
    assert later <= POOL_MAX_SIZE and busy_later == 0


async def test_a_burst_of_webhooks_on_a_sqlite_database_url_waits_instead_of_failing(
    tmp_path, capsys
):
    database_url = f"sqlite:///{tmp_path / 'voicebot.sqlite3'}"
    await asyncio.to_thread(prepare, database_url)
    log = tmp_path / "daphne.log"
    with daphne(log, DATABASE_URL=database_url) as base_url:
        started = time.monotonic()
        statuses = await burst(base_url, 100)
        elapsed = time.monotonic() - started
    report(
        f"SQLite by DATABASE_URL, one daphne: 100 concurrent incoming webhooks in"
        f" {elapsed:.1f} s -> statuses {dict(statuses)}",
        capsys,
    )
    assert statuses == {200: 100}, log_tail(log)
