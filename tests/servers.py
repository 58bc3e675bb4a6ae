"""Real daphne processes for tests that cross process boundaries."""

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings

from peers.ports import free_port, listening
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
