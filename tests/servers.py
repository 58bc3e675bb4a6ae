"""Real daphne processes for tests that cross process boundaries."""

import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import psycopg
from django.conf import settings
from psycopg.rows import dict_row

from peers.ports import free_port, listening, wait_for_port
from voicebot.test_settings import TEST_ENVIRONMENT

ROOT = Path(__file__).resolve().parent.parent


def database_environment() -> dict[str, str]:
    """What points a server process at the test's own database: once the test database
    exists, settings name it (its SQLite file, or PostgreSQL's `test_…` database)."""
    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        return {"DATABASE_URL": "", "SQLITE_PATH": str(database["NAME"])}
    credentials = quote(database["USER"] or "", safe="")
    if database.get("PASSWORD"):
        credentials += ":" + quote(database["PASSWORD"], safe="")
    host = quote(database["HOST"] or "localhost", safe="")  # a socket directory, too
    port = f":{database['PORT']}" if database.get("PORT") else ""
    url = f"postgres://{credentials}@{host}{port}/{quote(database['NAME'], safe='')}"
    return {"DATABASE_URL": url}


def server_environment(**overrides: str) -> dict[str, str]:
    """The test environment for a server process, on the test's own database."""
    return {
        **os.environ,
        **TEST_ENVIRONMENT,
        "DJANGO_SETTINGS_MODULE": "voicebot.settings",
        **database_environment(),
        "PYTHONUNBUFFERED": "1",
        **overrides,
    }


@contextmanager
def logs_shown_on_failure(*log_paths: Path, lines: int = 200) -> Iterator[None]:
    """If the block fails, print the end of each server log (pytest shows it with the
    failure): a server's answer of HTTP 500 says nothing of why, its traceback does."""
    try:
        yield
    except BaseException:
        for path in log_paths:
            text = path.read_text(errors="replace").splitlines() if path.exists() else []
            print(f"----- {path.name}, its last {lines} lines -----")
            print("\n".join(text[-lines:]))
        raise


@contextmanager
def daphne(log_path: Path, **overrides: str) -> Iterator[str]:
    """Serve the project with daphne on a free port; yields its http base URL.

    Its output goes to `log_path`, which a failing test can show.
    """
    with daphne_process(log_path, **overrides) as (url, _process):
        yield url


@contextmanager
def daphne_process(log_path: Path, **overrides: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """As `daphne`, also yielding the process (to signal it); stopped afterwards if still up."""
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "voicebot.asgi:application",
            ],
            cwd=ROOT,
            env=server_environment(**overrides),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        with listening(process, port):
            yield f"http://127.0.0.1:{port}", process


class RedisServer:
    """A private redis-server on a fixed free port, which a test may stop and start again.

    No persistence: a restart comes back empty, as a crashed Redis without a dump would,
    so whatever lived only in Redis (group membership) is gone.
    """

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, process=self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()  # as a crash would: no goodbye to the clients
            self.process.wait()
            self.process = None


class ScratchDatabase:
    """A database of its own, on the suite's backend, for a server that a module sets up
    (migrates, seeds) by itself; the test reads what the server wrote with plain SQL."""

    def __init__(self, directory: Path) -> None:
        database = settings.DATABASES["default"]
        self.postgres = database["ENGINE"] != "django.db.backends.sqlite3"
        if self.postgres:
            self.name = f"scratch_{uuid.uuid4().hex[:12]}"
            self._admin(f'CREATE DATABASE "{self.name}"')
            url = database_environment()["DATABASE_URL"]
            self.environment = {"DATABASE_URL": url.rsplit("/", 1)[0] + "/" + self.name}
        else:
            self.name = str(directory / "db.sqlite3")
            self.environment = {"DATABASE_URL": "", "SQLITE_PATH": self.name}

    def _connect(self, dbname: str, **options):
        database = settings.DATABASES["default"]
        return psycopg.connect(
            dbname=dbname,
            user=database["USER"],
            password=database.get("PASSWORD") or None,
            host=database["HOST"] or None,
            port=database.get("PORT") or None,
            **options,
        )

    def _admin(self, statement: str) -> None:
        with self._connect("postgres", autocommit=True) as admin:
            admin.execute(statement)

    def rows(self, sql: str, params: list) -> list[dict]:
        """The rows `sql` selects; `%s` placeholders on either backend."""
        if self.postgres:
            with self._connect(self.name, row_factory=dict_row) as db:
                return db.execute(sql, params).fetchall()
        with sqlite3.connect(self.name) as db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute(sql.replace("%s", "?"), params)]

    def execute(self, sql: str, params: list) -> None:
        """Run a statement that changes rows; `%s` placeholders on either backend."""
        if self.postgres:
            with self._connect(self.name) as db:
                db.execute(sql, params)
            return
        with sqlite3.connect(self.name) as db:
            db.execute(sql.replace("%s", "?"), params)

    def drop(self) -> None:
        if self.postgres:
            self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
