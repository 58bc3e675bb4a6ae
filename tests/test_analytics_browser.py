"""The analytics page in Chromium: Chart.js loads from our static files and draws every
chart (its canvas has painted pixels); a screenshot is saved to test-output/."""

from collections.abc import AsyncIterator
from urllib.parse import quote, urlencode

import pytest
from asgiref.sync import sync_to_async
from playwright.async_api import Browser, async_playwright, expect

from .browser import OUTPUT_DIR, PageErrors, launch_chromium, new_page
from .dashboard_helpers import PASSWORD, make_staff
from .test_call_console import week  # noqa: F401 (the seeded week of calls)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
pytest_plugins = ["tests.agent_harness"]  # asgi_server

CHARTS = ("chart-per-day", "chart-per-hour", "chart-per-agent")
# How many pixels of a canvas have been painted (alpha above zero).
PAINTED_PIXELS = """(id) => {
  const canvas = document.getElementById(id);
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = 0;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) painted++;
  return painted;
}"""


@pytest.fixture
async def browser(settings) -> AsyncIterator[Browser]:
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False
    async with async_playwright() as playwright:
        browser = await launch_chromium(playwright)
        try:
            yield browser
        finally:
            await browser.close()


async def test_the_analytics_page_draws_its_charts(browser, asgi_server, week):  # noqa: F811
    await sync_to_async(make_staff)("manager", "view_call")
    errors = PageErrors()
    page = await new_page(browser, errors)
    target = "/admin/calls/call/analytics/?" + urlencode(
        {"start": "2025-03-03", "end": "2025-03-09"}
    )
    await page.goto(f"{asgi_server.http_url}/admin/login/?next={quote(target)}")
    await page.fill("#id_username", "manager")
    await page.fill("#id_password", PASSWORD)
    await page.click("input[type=submit]")
    await page.wait_for_url("**/admin/calls/call/analytics/**")
    await expect(page.locator("#analytics-total")).to_contain_text("All agents")

    await page.wait_for_function("() => typeof Chart !== 'undefined'")
    for chart in CHARTS:
        # Chart.js registers each chart it drew on its canvas.
        await page.wait_for_function(f"() => Chart.getChart('{chart}') !== undefined")
        assert await page.evaluate(PAINTED_PIXELS, chart) > 500, f"{chart} is blank"

    OUTPUT_DIR.mkdir(exist_ok=True)
    await page.screenshot(path=str(OUTPUT_DIR / "analytics.png"), full_page=True)
    assert errors == []
