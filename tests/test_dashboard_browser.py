"""The staff console in a real browser: Playwright drives Debian's Chromium against our server,
while a Twilio-protocol client and a fake Realtime model carry real simulated calls."""

import asyncio
import json
import re
from collections.abc import AsyncIterator

import pytest
from asgiref.sync import sync_to_async
from playwright.async_api import Browser, async_playwright, expect

from calls.models import Call, CallEvent, TranscriptEntry

from .agent_harness import SALES_NUMBER, finish, make_agent, start_call
from .browser import (
    OUTPUT_DIR,
    PageErrors,
    call_card,
    launch_chromium,
    log_in,
    new_page,
    post_call_status,
)
from .dashboard_helpers import ACTION_PERMISSIONS, make_call, make_staff

pytestmark = [pytest.mark.browser, pytest.mark.realtime, pytest.mark.django_db(transaction=True)]
pytest_plugins = ["tests.agent_harness"]  # asgi_server, realtime, rest

GREETING = "Hello, you are through to the front desk. How can I help you today?"
TARGETS = (("reception", "+14155550199", True), ("sales", SALES_NUMBER, False))


@pytest.fixture
def console_server(asgi_server):
    return asgi_server


@pytest.fixture
async def browser(settings) -> AsyncIterator[Browser]:
    # The test server speaks plain http on loopback; production cookies are https-only.
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False
    async with async_playwright() as playwright:
        browser = await launch_chromium(playwright)
        try:
            yield browser
        finally:
            await browser.close()


@sync_to_async
def staff_actions(call_sid: str) -> set[tuple[str, str]]:
    events = CallEvent.objects.filter(call__sid=call_sid, user__isnull=False)
    return set(events.values_list("kind", "user__username"))


@pytest.fixture
def errors() -> PageErrors:
    return PageErrors()


@pytest.fixture
def twilio_completes_hung_up_calls(console_server, rest):
    """As Twilio does: a call hung up through REST ends, and its status callback says so."""
    rest.on_hangup = lambda call_sid: post_call_status(console_server, call_sid, "completed")


async def test_staff_watch_calls_and_steer_them(
    browser, console_server, realtime, rest, errors, twilio_completes_hung_up_calls
):
    await make_agent(greeting=GREETING, targets=TARGETS)
    await sync_to_async(make_staff)("operator", "view_call", *ACTION_PERMISSIONS)
    page = await log_in(await new_page(browser, errors), console_server, "operator")
    await expect(page.locator("#live-empty")).to_be_visible()

    # A call comes in: it appears at once, with the caller, the agent, and a ticking clock.
    realtime.queue_reply(transcript=GREETING, audio_ms=6000, pace="burst")
    first = await start_call(console_server, rest, realtime)
    card = call_card(page, first.call_sid)
    await expect(card).to_be_visible()
    await expect(card.locator(".live-caller")).to_have_text("+14155550123")
    await expect(card.locator(".live-agent")).to_have_text("Front desk (+14155550100)")
    await expect(card.locator(".live-direction")).to_have_text("Inbound")
    duration = await card.locator(".live-duration").text_content()
    await expect(card.locator(".live-duration")).not_to_have_text(duration, timeout=3000)

    # The agent's greeting streams in; the caller's line follows.
    agent_line = card.locator(".transcript-line[data-speaker='agent']")
    await expect(agent_line).to_contain_text(GREETING)
    await first.model.caller_transcript("Could I speak to someone in sales?")
    await expect(card.locator(".transcript-line[data-speaker='caller']")).to_contain_text(
        "someone in sales"
    )

    # Clear cuts the agent off: Twilio gets `clear`, and the line shows it was interrupted.
    await first.played_at_least(500)
    await card.get_by_role("button", name="Clear audio").click()
    await first.twilio.wait_for(lambda: first.twilio.clears, 5, "clear")
    await expect(card.locator(".live-outcome")).to_have_text("Cleared the audio that was playing.")
    await expect(agent_line).to_have_class("transcript-line interrupted")
    await expect(agent_line.locator(".transcript-interrupted")).to_contain_text("caller heard")

    # Say: the sentence goes to the model for the agent to speak.
    await card.get_by_placeholder("A sentence for the agent to say").fill("One moment please.")
    await card.get_by_role("button", name="Say").click()
    await expect(card.locator(".live-outcome")).to_have_text(
        "The agent will say: “One moment please.”"
    )
    model = first.model
    await model.wait_for(lambda: "One moment please." in json.dumps(model.client_events))

    # A second call, to hang up.
    second = await start_call(console_server, rest, realtime)
    second_card = call_card(page, second.call_sid)
    await expect(second_card).to_be_visible()
    await expect(page.locator("#live-count")).to_have_text("2 live calls")
    OUTPUT_DIR.mkdir(exist_ok=True)
    await page.screenshot(path=OUTPUT_DIR / "live-calls.png", full_page=True)

    # Transfer the first call to sales: Twilio gets the <Dial>. Each target says its mode.
    sales = card.get_by_label("Transfer target").locator('option[value="sales"]')
    await expect(sales).to_have_text(f"sales ({SALES_NUMBER}, cold)")
    await card.get_by_label("Transfer target").select_option("sales")
    await card.get_by_role("button", name="Transfer").click()
    dial = await rest.wait_for_request(lambda r: r.call_sid == first.call_sid and r.twiml)
    assert dial.dial_numbers == [SALES_NUMBER]
    await expect(card.locator(".live-outcome")).to_have_text(
        f"Transferred to sales ({SALES_NUMBER})."
    )
    await expect(card.locator(".live-transferred")).to_contain_text(SALES_NUMBER)
    # The agent has left that call: only hanging up is left to do.
    await expect(card.get_by_role("button", name="Clear audio")).to_be_hidden()
    await expect(card.get_by_role("button", name="Say")).to_be_hidden()
    await expect(card.get_by_role("button", name="Hang up")).to_be_visible()

    # Hang up the second call (two clicks): Twilio is asked, and the call leaves the list.
    hangup = second_card.get_by_role("button", name="Hang up")
    await hangup.click()
    await expect(hangup).to_have_text("Click again to hang up")
    await hangup.click()
    request = await rest.wait_for_request(lambda r: r.call_sid == second.call_sid and r.is_hangup)
    assert request.form["Status"] == "completed"
    await expect(second_card.locator(".live-status")).to_have_text("Ended: staff hung up")
    await expect(second_card).to_have_count(0, timeout=10000)
    await expect(card).to_be_visible()  # the transferred call is still on, with a person
    await expect(page.locator("#live-count")).to_have_text("1 live call")

    # Every action is in the call's log, with the staff user.
    assert await staff_actions(first.call_sid) >= {
        ("clear", "operator"),
        ("say", "operator"),
        ("transfer", "operator"),
    }
    assert await staff_actions(second.call_sid) == {("hangup", "operator")}
    assert errors == []
    for live in (first, second):
        await finish(live)


async def test_view_only_staff_watch_but_see_no_buttons(
    browser, console_server, realtime, rest, errors
):
    await make_agent(greeting=GREETING, targets=TARGETS)
    await sync_to_async(make_staff)("viewer", "view_call")
    page = await log_in(await new_page(browser, errors), console_server, "viewer")
    realtime.queue_reply(transcript=GREETING, audio_ms=1000, pace="burst")
    live = await start_call(console_server, rest, realtime)
    card = call_card(page, live.call_sid)
    await expect(card.locator(".transcript-line")).to_contain_text(GREETING)
    await expect(page.locator("#live-calls").get_by_role("button")).to_have_count(0)
    await expect(card.locator("form, input, select")).to_have_count(0)
    await expect(page.get_by_role("link", name="Call out")).to_have_count(0)

    # Posting anyway, with the page's own CSRF token, is refused.
    call = await Call.objects.aget(sid=live.call_sid)
    statuses = await page.evaluate(
        """async (callId) => {
            const token = document.querySelector("input[name=csrfmiddlewaretoken]").value;
            const statuses = [];
            for (const action of ["hangup", "clear", "transfer", "say"]) {
                const response = await fetch(`/admin/calls/call/${callId}/${action}/`, {
                    method: "POST",
                    headers: {"X-CSRFToken": token, "Accept": "application/json"},
                    body: new URLSearchParams({target: "reception", text: "Hi"}),
                });
                statuses.push(response.status);
            }
            return statuses;
        }""",
        str(call.pk),
    )
    assert statuses == [403, 403, 403, 403]
    assert rest.hangups(live.call_sid) == [] and rest.twiml_updates(live.call_sid) == []
    assert errors == []
    await finish(live)


async def test_a_failed_action_says_why_on_the_page(
    browser, console_server, realtime, rest, errors
):
    await make_agent(targets=TARGETS)
    await sync_to_async(make_staff)("operator", "view_call", *ACTION_PERMISSIONS)
    page = await log_in(await new_page(browser, errors), console_server, "operator")
    live = await start_call(console_server, rest, realtime)
    card = call_card(page, live.call_sid)
    rest.fail_next(live.call_sid, status=500, code=20500, message="Internal Server Error")
    hangup = card.get_by_role("button", name="Hang up")
    await hangup.click()
    await hangup.click()
    await expect(card.locator(".live-outcome")).to_have_text(
        "Hang-up failed: Twilio error 20500: Unable to update record: Internal Server Error"
    )
    await expect(card.locator(".live-outcome")).to_have_attribute("data-kind", "error")
    await expect(hangup).to_be_enabled()
    await expect(card).to_be_visible()
    assert errors == []
    await finish(live)


async def test_the_page_reconnects_and_catches_up_after_a_dropped_socket(
    browser, console_server, realtime, rest, errors
):
    await make_agent(targets=TARGETS)
    await sync_to_async(make_staff)("viewer", "view_call")
    sockets = []  # (the page's side, the server's side) of each connection
    reconnect = asyncio.Event()

    async def route(page_side) -> None:
        # The first connection goes straight through; the next waits until the test allows.
        if sockets:
            await reconnect.wait()
        sockets.append((page_side, page_side.connect_to_server()))

    page = await new_page(browser, errors)
    await page.route_web_socket(re.compile(r"/ws/calls/live$"), route)
    await log_in(page, console_server, "viewer")
    first = await start_call(console_server, rest, realtime)
    first_card = call_card(page, first.call_sid)
    await expect(first_card).to_be_visible()

    # Who is speaking comes as its own message (its server side is in test_live_socket.py).
    call = await Call.objects.aget(sid=first.call_sid)
    page_side, _ = sockets[0]
    page_side.send(json.dumps({"event": "speaking", "call_id": str(call.pk), "speaker": "caller"}))
    speaking = first_card.locator(".live-speaking")
    await expect(speaking).to_have_text("Caller is speaking")
    page_side.send(json.dumps({"event": "speaking", "call_id": str(call.pk), "speaker": ""}))
    await expect(speaking).to_have_text("Nobody is speaking")

    # The socket drops. While the page is away, the first call ends and a second starts.
    for side in sockets[0]:
        await side.close(code=1011)
    await expect(page.locator("#live-connection")).to_have_attribute("data-state", "offline")
    await expect(page.locator("#live-connection")).to_contain_text("Reconnecting")
    await post_call_status(console_server, first.call_sid, "completed")
    second = await start_call(console_server, rest, realtime)
    second_card = call_card(page, second.call_sid)
    await asyncio.sleep(0.3)
    await expect(first_card).to_be_visible()
    await expect(second_card).to_have_count(0)

    # It reconnects by itself, and the snapshot it gets brings the page up to date.
    reconnect.set()
    await expect(page.locator("#live-connection")).to_have_text("Live", timeout=10000)
    await expect(second_card).to_be_visible()
    await expect(first_card).to_have_count(0)
    assert len(sockets) == 2
    assert errors == []
    for live in (first, second):
        await finish(live)


async def test_the_page_shows_the_servers_words(browser, console_server, errors):
    """Labels and formats come in the feed's messages: the page adds none of its own."""
    agent = await make_agent(targets=TARGETS)
    call = await sync_to_async(make_call)(agent)
    past_an_hour_ms = 3_725_400
    await TranscriptEntry.objects.acreate(
        call=call,
        speaker="agent",
        text="Still there?",
        offset_ms=past_an_hour_ms,
        interrupted=True,
        heard_ms=1300,
    )
    await CallEvent.objects.acreate(
        call=call, kind="transfer_failed", actor="system", data={"error": "x" * 200}
    )
    await sync_to_async(make_staff)("viewer", "view_call")
    page = await log_in(await new_page(browser, errors), console_server, "viewer")
    card = call_card(page, call.sid)
    await expect(card.locator(".live-status")).to_have_text("In progress")
    await expect(card.locator(".live-direction")).to_have_text("Inbound")
    line = card.locator(".transcript-line")
    await expect(line.locator(".transcript-offset")).to_have_text("1:02:05.4")
    await expect(line.locator(".transcript-speaker")).to_have_text("Agent")
    await expect(line.locator(".transcript-interrupted")).to_have_text(
        "Interrupted: caller heard 1.3 s"
    )
    event = card.locator(".live-events li")
    await expect(event.locator(".event-kind")).to_have_text("Transfer failed")
    await expect(event.locator(".event-data")).to_have_text(f"error: {'x' * 79}…")

    # Twilio says the call is over: the card says why, in the server's words.
    await post_call_status(console_server, call.sid, "completed")
    await expect(card.locator(".live-status")).to_have_text("Ended: caller hung up")
    assert errors == []
