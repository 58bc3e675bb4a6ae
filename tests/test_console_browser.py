"""The console in Chromium: the live view's order, filters, compact mode and needs-attention
marks; the call list at 1366 px; one time zone, the staff member's, on every page."""

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone
from playwright.async_api import Browser, Page, async_playwright, expect

from agents.models import Agent
from calls import services
from calls.models import Call, CallEvent, CallStatus, EndReason, StaffProfile

from .browser import OUTPUT_DIR, PageErrors, launch_chromium, log_in, new_page
from .dashboard_helpers import make_call, make_staff

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
pytest_plugins = ["tests.agent_harness"]  # asgi_server

ATTENTION = "The agent's model failed"


@pytest.fixture
async def browser(settings) -> AsyncIterator[Browser]:
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False
    async with async_playwright() as playwright:
        browser = await launch_chromium(playwright)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
def errors() -> PageErrors:
    return PageErrors()


@sync_to_async
def live_calls() -> dict[str, Call]:
    """Three live calls, a minute apart: oldest "sales" (ringing), then two "front desk"."""
    front = Agent.objects.create(name="Front desk", phone_number="+14155550100")
    sales = Agent.objects.create(name="Sales", phone_number="+14155550101")
    now = timezone.now()
    calls = {
        "old_sales": make_call(sales, status=CallStatus.RINGING, to_number="+14155550101"),
        "middle_front": make_call(front, from_number="+14155550111"),
        "new_front": make_call(front, from_number="+14155550122"),
    }
    for minutes_ago, call in zip((3, 2, 1), calls.values(), strict=True):
        Call.objects.filter(pk=call.pk).update(created_at=now - timedelta(minutes=minutes_ago))
    CallEvent.objects.create(call=calls["middle_front"], kind="agent_error", actor="system")
    return calls


async def card_order(page: Page) -> list[str]:
    """The callers of the visible cards, top to bottom as the staff member sees them."""
    cards = page.locator(".live-call:visible")
    boxes = []
    for index in range(await cards.count()):
        card = cards.nth(index)
        box = await card.bounding_box()
        boxes.append((box["y"], await card.locator(".live-caller").text_content()))
    return [caller for _, caller in sorted(boxes)]


async def test_the_live_view_sorts_filters_compacts_and_points_at_trouble(
    browser, asgi_server, errors
):
    calls = await live_calls()
    await sync_to_async(make_staff)("operator", "view_call")
    page = await log_in(await new_page(browser, errors), asgi_server, "operator")
    await expect(page.locator(".live-call")).to_have_count(3)

    # Newest first, and the call whose model failed says so.
    assert await card_order(page) == ["+14155550122", "+14155550111", "+14155550123"]
    troubled = page.locator(".live-call[data-attention='true']")
    await expect(troubled).to_have_count(1)
    await expect(troubled.locator(".live-caller")).to_have_text("+14155550111")
    await expect(troubled.locator(".live-attention")).to_contain_text(ATTENTION)
    await expect(troubled.locator(".live-attention")).to_be_visible()

    # A caller talking over the agent, as it happens: the mark appears without a reload.
    newest = calls["new_front"]
    for _ in range(3):
        await sync_to_async(services.call_event_record)(
            call=newest, kind="barge_in", actor="caller", data={"heard_ms": {"item": 800}}
        )
    await expect(page.locator(".live-call[data-attention='true']")).to_have_count(2)

    await page.select_option("#live-sort", "oldest")
    assert await card_order(page) == ["+14155550123", "+14155550111", "+14155550122"]
    await page.select_option("#live-sort", "newest")

    await page.select_option("#live-filter-agent", "Sales (+14155550101)")
    assert await card_order(page) == ["+14155550123"]
    await expect(page.locator("#live-hidden")).to_have_text("2 calls are hidden by the filters.")
    await page.select_option("#live-filter-agent", "")
    await page.select_option("#live-filter-status", "Ringing")
    assert await card_order(page) == ["+14155550123"]
    await page.select_option("#live-filter-status", "")
    assert len(await card_order(page)) == 3

    # Compact: one line a call, and the browser remembers it.
    first = page.locator(".live-call").first
    await expect(first.locator(".live-call-body")).to_be_visible()
    await page.get_by_label("Compact view").check()
    await expect(page.locator(".live-call-body:visible")).to_have_count(0)
    OUTPUT_DIR.mkdir(exist_ok=True)
    await page.screenshot(path=OUTPUT_DIR / "live-compact.png", full_page=True)
    await page.reload()
    await expect(page.locator("#live-connection")).to_have_text("Live")
    await expect(page.get_by_label("Compact view")).to_be_checked()
    await expect(page.locator(".live-call-body:visible")).to_have_count(0)
    await expect(page.locator(".live-attention:visible")).to_have_count(2)
    assert errors == []


async def test_the_call_list_fits_a_1366_pixel_screen(browser, asgi_server, errors):
    @sync_to_async
    def history() -> None:
        agent = Agent.objects.create(name="After-hours receptionist", phone_number="+14155550100")
        for reason in EndReason:
            make_call(
                agent,
                status=CallStatus.COMPLETED,
                end_reason=reason,
                duration_seconds=754,
                ended_at=timezone.now(),
            )
        make_staff("viewer", "view_call")

    await history()
    page = await new_page(browser, errors, viewport={"width": 1366, "height": 768})
    await log_in(page, asgi_server, "viewer")
    await page.goto(f"{asgi_server.http_url}/admin/calls/call/")
    await expect(page.locator("#result_list")).to_be_visible()
    # The admin scrolls a wide table inside its own box (.results), not the page.
    overflow = await page.evaluate(
        """() => Math.max(
            ...[document.documentElement, document.querySelector(".results")].map(
                (box) => box.scrollWidth - box.clientWidth))"""
    )
    OUTPUT_DIR.mkdir(exist_ok=True)
    await page.screenshot(path=OUTPUT_DIR / "call-list-1366.png", full_page=True)
    assert overflow <= 0, f"the call list is {overflow} px too wide for 1366 px"
    assert errors == []


async def test_the_live_view_and_the_call_page_show_one_time_zone(browser, asgi_server, errors):
    # The server's zone, the browser's and the staff member's all differ: theirs wins.
    @sync_to_async
    def setup() -> Call:
        agent = Agent.objects.create(name="Front desk", phone_number="+14155550100")
        call = make_call(agent)
        CallEvent.objects.create(call=call, kind="answered", actor="twilio")
        viewer = make_staff("viewer", "view_call")
        StaffProfile.objects.create(user=viewer, time_zone="Asia/Tokyo")
        return call

    call = await setup()
    page = await new_page(browser, errors, timezone_id="America/New_York")
    await log_in(page, asgi_server, "viewer")
    await expect(page.locator("#live-time-zone")).to_contain_text("Asia/Tokyo")
    live_time = await page.locator(".live-events time").first.text_content()
    await page.screenshot(path=OUTPUT_DIR / "live-time-zone.png", full_page=True)

    await page.goto(f"{asgi_server.http_url}/admin/calls/call/{call.pk}/change/")
    await expect(page.locator("#call-time-zone")).to_contain_text("Asia/Tokyo")
    await expect(page.locator("#staff-time-zone")).to_contain_text("Asia/Tokyo")
    page_time = await page.locator("#call-events tbody td").first.text_content()
    OUTPUT_DIR.mkdir(exist_ok=True)
    await page.screenshot(path=OUTPUT_DIR / "call-time-zone.png", full_page=True)
    assert live_time and page_time.endswith(live_time), (live_time, page_time)
    assert errors == []
