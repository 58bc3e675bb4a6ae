"""Playwright driving Debian's Chromium against the staff console.

The server is the agent harness's in-process daphne (tests/agent_harness.py), which also
serves the static files the admin pages load (in production the proxy serves them after
collectstatic). Locally the tests skip when chromium is missing; under CI=true they fail
(tests/conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
from django.conf import settings
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Page,
    Playwright,
    Response,
    expect,
)

from calls import security

from .agent_harness import AsgiServer
from .conftest import require_binary
from .dashboard_helpers import PASSWORD

# The flags docs/testing.md lists for Chromium in a container, with no browser download.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
OUTPUT_DIR = Path(settings.BASE_DIR) / "test-output"
LIVE_PATH = "/admin/calls/call/live/"


async def launch_chromium(playwright: Playwright, *extra_args: str) -> Browser:
    """Debian's Chromium; skips the test locally if it is missing, fails it under CI."""
    chromium = require_binary("chromium", why="the staff console's browser tests drive it")
    return await playwright.chromium.launch(
        executable_path=chromium, args=[*CHROMIUM_ARGS, *extra_args]
    )


def fake_microphone_args(wav: Path) -> list[str]:
    """Chromium's fake capture device, playing `wav` in a loop, with no permission prompt."""
    return [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
    ]


class PageErrors(list):
    """What went wrong in a page that a user might not see: script errors, console errors,
    a page or asset that failed to load. A test ends by asserting there were none."""

    # fetch() answers are the tests' business (a refused action is a 403 on purpose).
    CHECKED_RESOURCES = frozenset({"document", "script", "stylesheet", "image", "font"})

    def watch(self, page: Page) -> None:
        page.on("pageerror", lambda error: self.append(f"page error: {error}"))
        page.on("console", self._console)
        page.on("response", self._response)

    def _console(self, message: ConsoleMessage) -> None:
        # Failed loads are reported with their URL by _response.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.append(f"console: {message.text}")

    def _response(self, response: Response) -> None:
        request = response.request
        if (
            response.status >= 400
            and request.resource_type in self.CHECKED_RESOURCES
            and not request.url.endswith("/favicon.ico")  # the admin has none
        ):
            self.append(f"{response.status} for {request.resource_type} {request.url}")


async def new_page(browser: Browser, errors: PageErrors, **options) -> Page:
    """A page in a fresh context; `options` for the context (viewport, timezone_id, …)."""
    context = await browser.new_context(**{"viewport": {"width": 1400, "height": 1000}, **options})
    page = await context.new_page()
    errors.watch(page)
    return page


async def log_in(page: Page, server: AsgiServer, username: str) -> Page:
    """Log in through the admin's form and land on the live view, its feed connected."""
    await page.goto(f"{server.http_url}/admin/login/?next={LIVE_PATH}")
    await page.fill("#id_username", username)
    await page.fill("#id_password", PASSWORD)
    await page.click("input[type=submit]")
    await page.wait_for_url(f"**{LIVE_PATH}")
    await expect(page.locator("#live-connection")).to_have_text("Live")
    return page


def call_card(page: Page, call_sid: str):
    return page.locator(".live-call", has=page.locator(".live-sid", has_text=call_sid))


async def post_call_status(server: AsgiServer, call_sid: str, status: str) -> None:
    """Twilio's call status callback, signed as Twilio signs it."""
    path = "/twilio/voice/status"
    params = {"CallSid": call_sid, "CallStatus": status, "AccountSid": "AC" + "1" * 32}
    if status == "completed":
        params["CallDuration"] = "12"
    signature = security.compute_signature(security.public_url(path), params)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            server.http_url + path, data=params, headers={security.SIGNATURE_HEADER: signature}
        ) as response,
    ):
        assert response.status == 204, await response.text()
