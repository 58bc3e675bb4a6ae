"""A private PostgreSQL server for tests: its own cluster in a temporary directory, on a free
loopback port, stopped and removed afterwards. No Django here."""

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from peers.ports import free_port

# Debian keeps the server programs off PATH, one directory per major version.
DEBIAN_BINARIES = "/usr/lib/postgresql/*/bin"
START_TIMEOUT_SECONDS = 30.0


def postgres_binaries() -> Path | None:
    """The directory holding initdb and postgres (the newest installed), or None."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).parent] if on_path else []
    candidates += sorted(
        (Path(found) for found in glob.glob(DEBIAN_BINARIES)),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
        reverse=True,
    )
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "postgres").exists():
            return directory
    return None


def _as_server_user() -> dict:
    """initdb and postgres refuse to run as root: run them as the `postgres` account then."""
    if os.geteuid() != 0:
        return {}
    account = pwd.getpwnam("postgres")
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _wait_accepting(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"postgres exited with {process.returncode} before accepting")
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextmanager
def postgres_server(*, max_connections: int = 100) -> Iterator[str]:
    """Run a throw-away PostgreSQL server; yields the URL of its `postgres` database.

    Durability is off (fsync, synchronous_commit): the data dies with the test anyway.
    """
    binaries = postgres_binaries()
    if binaries is None:
        raise RuntimeError(f"PostgreSQL's initdb is neither on PATH nor in {DEBIAN_BINARIES}")
    as_user = _as_server_user()
    directory = Path(tempfile.mkdtemp(prefix="voicebot-postgres-"))
    try:
        if as_user:
            os.chown(directory, as_user["user"], as_user["group"])
        initdb = subprocess.run(
            [binaries / "initdb", "-D", directory / "data", "-A", "trust", "-U", "postgres"]
            + ["--no-sync", "--encoding", "UTF8", "--locale", "C"],
            cwd=directory,
            capture_output=True,
            text=True,
            **as_user,
        )
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed: {initdb.stderr.strip()}")
        port = free_port()
        settings = {
            "listen_addresses": "127.0.0.1",
            "max_connections": str(max_connections),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        options = [item for name, value in settings.items() for item in ("-c", f"{name}={value}")]
        with open(directory / "server.log", "wb") as log:
            process = subprocess.Popen(
                [binaries / "postgres", "-D", directory / "data", "-p", str(port)]
                + ["-k", str(directory), *options],
                cwd=directory,
                stdout=log,
                stderr=subprocess.STDOUT,
                **as_user,
            )
        url = f"postgres://postgres@127.0.0.1:{port}/postgres"
        try:
            _wait_accepting(url, process)
            yield url
        finally:
            process.send_signal(signal.SIGINT)  # "fast" shutdown: ends open sessions
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
