"""Listening in and taking over, in Debian's Chromium: the page decodes and plays both sides,
and a fake microphone (a tone WAV) reaches the simulated caller.

What the listener hears is read from the page's own audio graph: an AnalyserNode on each
side's output (after the worklet, before the speakers) gives the loudest frequency, which
is compared with the tones the simulated caller (1000 Hz) and the fake model (400 Hz) send.
"""

import array
import asyncio
import json
import math
import statistics
import struct
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from playwright.async_api import Browser, Page, async_playwright, expect

from callmedia.audio import ulaw_to_pcm16
from calls.models import CallEvent, TranscriptEntry
from peers.realtime import tone

from .agent_harness import finish, make_agent, start_call
from .browser import (
    OUTPUT_DIR,
    PageErrors,
    call_card,
    fake_microphone_args,
    launch_chromium,
    log_in,
    new_page,
)
from .dashboard_helpers import make_staff

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
pytest_plugins = ["tests.agent_harness"]

CALLER_HZ = 1000
AGENT_HZ = 400
MIC_HZ = 700
AUDIBLE_DB = -60  # an analyser bin this loud is a tone; silence reads -100 dB or less

# Installed in the page: an analyser on each side's gain node, and the loudest bin of each.
PEAKS_JS = """(callId) => {
    const listening = window.voicebotListen.sessions.get(callId);
    if (!listening || !listening.gains) return null;
    if (!listening.analysers) {
        listening.analysers = {};
        for (const side of ["caller", "agent"]) {
            const analyser = listening.ctx.createAnalyser();
            analyser.fftSize = 2048;
            analyser.smoothingTimeConstant = 0;
            listening.player.connect(analyser, side === "caller" ? 0 : 1);
            listening.analysers[side] = analyser;
        }
    }
    const peaks = {};
    for (const side of ["caller", "agent"]) {
        const analyser = listening.analysers[side];
        const bins = new Float32Array(analyser.frequencyBinCount);
        analyser.getFloatFrequencyData(bins);
        let best = 0;
        for (let i = 1; i < bins.length; i++) if (bins[i] > bins[best]) best = i;
        peaks[side] = {hz: best * listening.ctx.sampleRate / analyser.fftSize, db: bins[best]};
    }
    return peaks;
}"""


def write_tone_wav(path: Path, hz: int, seconds: float = 5.0, rate: int = 48000) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        samples = (
            int(12000 * math.sin(2 * math.pi * hz * n / rate)) for n in range(int(rate * seconds))
        )
        wav.writeframes(b"".join(struct.pack("<h", s) for s in samples))
    return path


def goertzel_power(pcm: array.array, hz: int, rate: int = 8000) -> float:
    coefficient = 2 * math.cos(2 * math.pi * hz / rate)
    previous = before = 0.0
    for sample in pcm:
        previous, before = sample + coefficient * previous - before, previous
    return previous * previous + before * before - coefficient * previous * before


def loudest_of(ulaw: bytes, candidates: tuple[int, ...]) -> int:
    pcm = array.array("h", ulaw_to_pcm16(ulaw))
    return max(candidates, key=lambda hz: goertzel_power(pcm, hz))


@pytest.fixture
async def browser(settings, tmp_path) -> AsyncIterator[Browser]:
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False
    microphone = write_tone_wav(tmp_path / "microphone.wav", MIC_HZ)
    async with async_playwright() as playwright:
        browser = await launch_chromium(playwright, *fake_microphone_args(microphone))
        try:
            yield browser
        finally:
            await browser.close()


async def peaks(page: Page, call_id: str) -> dict:
    return await page.evaluate(PEAKS_JS, call_id)


async def until_heard(page: Page, call_id: str, side: str, hz: int | None, timeout: float = 5.0):
    """Wait until `side` plays a tone at `hz` (None: until it is silent)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await peaks(page, call_id)
        if last:
            peak = last[side]
            audible = peak["db"] > AUDIBLE_DB
            if (hz is None and not audible) or (hz and audible and abs(peak["hz"] - hz) < 15):
                return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"{side} never {'silent' if hz is None else f'at {hz} Hz'}: {last}")


async def test_listen_hears_both_sides_and_take_over_talks_to_the_caller(
    browser, asgi_server, realtime, rest, tmp_path
):
    errors = PageErrors()
    await make_agent()
    await sync_to_async(make_staff)("boss", "view_call", "listen_call", "take_over_call")
    page = await log_in(await new_page(browser, errors), asgi_server, "boss")
    live = await start_call(asgi_server, rest, realtime)
    model = live.model
    live.twilio.queue_caller_audio(tone(60_000, CALLER_HZ))
    call = await live.call()
    call_id = str(call.pk)
    card = call_card(page, live.call_sid)
    await expect(card).to_be_visible()

    # Listen: the click starts the audio, the page says it is listening, the caller is heard.
    await card.get_by_role("button", name="Listen").click()
    panel = card.locator(".listen-panel")
    await expect(panel).to_have_attribute("data-state", "listening")
    await expect(panel.locator(".listen-status")).to_have_text("Listening")
    await until_heard(page, call_id, "caller", CALLER_HZ)
    assert (await peaks(page, call_id))["agent"]["db"] < AUDIBLE_DB

    # The model answers 4 s of tone at once; the listener hears it as the caller does.
    await model.reply(transcript="A tone.", audio=tone(4000, AGENT_HZ), pace="burst")
    await until_heard(page, call_id, "agent", AGENT_HZ)
    await until_heard(page, call_id, "caller", CALLER_HZ)  # both sides at once
    # The caller cuts in a second later: the rest of the 4 s, already in the page, is never
    # heard there either.
    await asyncio.sleep(1.0)
    await model.speech_started()
    await live.twilio.wait_for(lambda: live.twilio.clears, 5, "clear")
    await until_heard(page, call_id, "agent", None, timeout=1.5)
    for _ in range(25):  # 2.5 s: past where the 4 s of tone would have played
        assert (await peaks(page, call_id))["agent"]["db"] < AUDIBLE_DB
        await asyncio.sleep(0.1)

    # The delay from a caller frame leaving the caller to it playing in the page.
    reports = await page.evaluate("(id) => window.voicebotListen.sessions.get(id).reports", call_id)
    wall_minus_loop = time.time() - asyncio.get_running_loop().time()
    delays = [
        report["wallMs"]
        - 1000 * (wall_minus_loop + live.twilio.caller_frame_sent_at(int(report["playedMs"])))
        for report in reports[4:]  # from a second in: the first batch anchors the playhead
    ]
    delays.sort()
    median, p95 = statistics.median(delays), delays[int(0.95 * (len(delays) - 1))]
    OUTPUT_DIR.mkdir(exist_ok=True)
    (OUTPUT_DIR / "listen-delay.json").write_text(
        json.dumps({"samples": len(delays), "median_ms": median, "p95_ms": p95}, indent=1)
    )
    print(f"listen delay over {len(delays)} samples: median {median:.0f} ms, p95 {p95:.0f} ms")
    assert 0 < median < 400 and p95 < 600

    # Take over with the (fake) microphone: the agent is silenced and stays quiet.
    await page.screenshot(path=OUTPUT_DIR / "listen.png", full_page=True)
    await panel.get_by_role("button", name="Take over").click()
    await expect(panel).to_have_attribute("data-state", "talking")
    await expect(panel.get_by_role("button", name="Hand back")).to_be_visible()
    await model.wait_for(lambda: not model.creates_responses)
    played_before = len(live.twilio.played)
    await live.twilio.wait_for(
        lambda: len(live.twilio.played) >= played_before + 8000, 10, "1 s of staff audio"
    )
    staff_audio = bytes(live.twilio.played[played_before + 1600 : played_before + 8000])
    assert loudest_of(staff_audio, (AGENT_HZ, MIC_HZ, CALLER_HZ)) == MIC_HZ
    assert live.twilio.summary()["errors"] == []  # every frame valid, as Twilio checks
    responses = len(model.responses)
    assert await model.caller_turn("Can I talk to the manager?") is None
    await asyncio.sleep(0.5)
    assert len(model.responses) == responses
    await page.screenshot(path=OUTPUT_DIR / "listen-take-over.png", full_page=True)

    # Hand back: the model is told, and answers the caller's next turn by itself.
    await panel.get_by_role("button", name="Hand back").click()
    await expect(panel).to_have_attribute("data-state", "listening")
    await model.wait_for(lambda: model.creates_responses)
    assert "Can I talk to the manager?" in json.dumps(model.items_created)
    model.queue_reply(transcript="I'm back.", audio=tone(1000, AGENT_HZ))
    assert await model.caller_turn("Hello?") is not None

    # Stop listening: the page says so, and the log has it all, with the user.
    await panel.get_by_role("button", name="Stop listening").click()
    await expect(panel).to_have_attribute("data-state", "idle")
    await live.wait_until(
        lambda: CallEvent.objects.filter(call=call, kind="listen_stopped").aexists(),
        what="listen_stopped",
    )
    logged = {
        (kind, user)
        async for kind, user in CallEvent.objects.filter(call=call, user__isnull=False).values_list(
            "kind", "user__username"
        )
    }
    assert logged >= {
        ("listen_started", "boss"),
        ("take_over", "boss"),
        ("hand_back", "boss"),
        ("listen_stopped", "boss"),
    }
    staff_lines = TranscriptEntry.objects.filter(call=call, speaker="staff")
    await live.wait_until(lambda: _equals(staff_lines.acount(), 2), what="both staff lines")
    assert errors == []
    await finish(live)


async def test_the_buttons_follow_the_permissions(browser, asgi_server, realtime, rest):
    errors = PageErrors()
    await make_agent()
    await sync_to_async(make_staff)("viewer", "view_call")
    await sync_to_async(make_staff)("listener", "view_call", "listen_call")
    live = await start_call(asgi_server, rest, realtime)
    viewer = await log_in(await new_page(browser, errors), asgi_server, "viewer")
    listener = await log_in(await new_page(browser, errors), asgi_server, "listener")
    await expect(call_card(viewer, live.call_sid)).to_be_visible()
    await expect(call_card(viewer, live.call_sid).locator(".listen-panel")).to_have_count(0)
    card = call_card(listener, live.call_sid)
    await card.get_by_role("button", name="Listen").click()
    await expect(card.locator(".listen-panel")).to_have_attribute("data-state", "listening")
    await expect(card.get_by_role("button", name="Take over")).to_have_count(0)
    # The call's page offers the same.
    call = await live.call()
    await listener.goto(f"{asgi_server.http_url}/admin/calls/call/{call.pk}/change/")
    await expect(listener.get_by_role("button", name="Listen")).to_be_visible()
    await expect(listener.get_by_role("button", name="Take over")).to_have_count(0)
    # The socket refuses the viewer even when the page is bypassed.
    refused = await viewer.evaluate(
        """(callId) => new Promise((resolve) => {
            const socket = new WebSocket(`ws://${location.host}/ws/calls/${callId}/listen`);
            socket.onopen = () => resolve("open");
            socket.onclose = () => resolve("closed");
        })""",
        str(call.pk),
    )
    assert refused == "closed"
    refusal = [error for error in errors if "/listen' failed" in error and "403" in error]
    assert refusal and [error for error in errors if error not in refusal] == []
    await finish(live)


async def _equals(awaitable, expected) -> bool:
    return await awaitable == expected
