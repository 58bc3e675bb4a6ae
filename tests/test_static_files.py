"""`make run` serves with daphne, not runserver: in development the app serves static files."""

import asyncio

import pytest

from voicebot.asgi import http_application


async def get(app, path: str) -> int:
    """The status of a GET, driven through the ASGI interface as a server would."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1")],
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
    }
    sent = []
    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict:
        if requests:
            return requests.pop()
        await asyncio.Event().wait()  # the client never disconnects; the app stops listening

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"]


@pytest.mark.parametrize("path", ["/static/calls/live.js", "/static/admin/css/base.css"])
async def test_development_serves_the_console_and_admin_assets(settings, path):
    settings.DEBUG = True
    assert await get(http_application(), path) == 200


async def test_production_leaves_static_files_to_the_proxy(settings):
    settings.DEBUG = False
    assert await get(http_application(), "/static/calls/live.js") == 404
