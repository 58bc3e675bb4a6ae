"""`python -m voicebot.serve`: daphne, on uvloop, as `make run` and the README deploy it."""

import asyncio
import subprocess
import sys
import urllib.request

import uvloop

from .servers import ROOT, daphne


async def loop_app(scope, receive, send):
    """An ASGI app that answers with the type of the loop it runs on."""
    if scope["type"] != "http":
        return
    loop = asyncio.get_running_loop()
    body = f"{type(loop).__module__}.{type(loop).__qualname__}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def test_the_launcher_runs_daphne_on_uvloop(tmp_path):
    with daphne(tmp_path / "daphne.log", application="tests.test_serve:loop_app") as base_url:
        with urllib.request.urlopen(base_url) as response:
            assert response.read() == b"uvloop.Loop"


def test_without_uvloop_it_is_plain_daphne():
    script = (
        "import sys; sys.modules['uvloop'] = None\n"
        "from voicebot.serve import install_uvloop\n"
        "import asyncio\n"
        "print(install_uvloop(), type(asyncio.new_event_loop()).__module__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "asyncio.unix_events"]


async def test_the_tests_run_on_uvloop_too():
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
