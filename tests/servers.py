"""Real daphne processes for tests that cross process boundaries."""

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings

from peers.ports import free_port, listening, wait_for_port
from voicebot.test_settings import TEST_ENVIRONMENT

ROOT = Path(__file__).resolve().parent.parent


def server_environment(**overrides: str) -> dict[str, str]:
    """The test environment for a server process, on the test's own database file."""
    return {
        **os.environ,
        **TEST_ENVIRONMENT,
        "DJANGO_SETTINGS_MODULE": "voicebot.settings",
        "SQLITE_PATH": settings.DATABASES["default"]["NAME"],
        "PYTHONUNBUFFERED": "1",
        **overrides,
    }


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
