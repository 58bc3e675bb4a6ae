"""Strangers on the media stream socket, against a real daphne: refused starts close cleanly
with our own close codes, sockets that never start are closed, and the log stays small."""

import asyncio
import re
from pathlib import Path

import aiohttp
import pytest
from asgiref.sync import sync_to_async

from agents.models import Agent
from callmedia import protocol
from calls.simulator import wire
from peers.realtime import FakeRealtimeServer, Reply

from .agent_harness import answer
from .servers import daphne
from .twilio_helpers import ACCOUNT_SID, new_call_sid

pytestmark = pytest.mark.django_db(transaction=True)

AGENT_NUMBER = "+14155550100"
# What a crash on the socket leaves in the server's log.
CRASH_SIGNS = ("Traceback", "Task was destroyed", "Exception inside application", "close code")


@sync_to_async
def make_agent() -> Agent:
    return Agent.objects.create(name="Quiet", phone_number=AGENT_NUMBER, greeting="")


def start_frame(call_sid: str, token: str | None) -> str:
    return wire.start_message(
        stream_sid="MZ" + call_sid[2:],
        call_sid=call_sid,
        account_sid=ACCOUNT_SID,
        sequence_number=1,
        custom_parameters={} if token is None else {"token": token},
    )


async def close_code_after(
    http: aiohttp.ClientSession, url: str, frames: list[str], timeout: float = 10.0
) -> int | None:
    """Send `frames` on a new stream socket; the code the server closes it with."""
    async with http.ws_connect(url) as ws:
        for frame in frames:
            await ws.send_str(frame)
        message = await ws.receive(timeout=timeout)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message
        return ws.close_code


def crashes_in(lines: list[str]) -> str:
    """Each crash sign in `lines` with what the log said around it ("" if none)."""
    shown = []
    for index, line in enumerate(lines):
        if any(sign in line for sign in CRASH_SIGNS):
            shown.append("\n".join(lines[max(0, index - 5) : index + 40]))
    return "\n---\n".join(shown)


def app_lines(log_path: Path) -> list[str]:
    """The server's own log lines, without daphne's access log (3 lines per socket)."""
    access = re.compile(r'^\S+ - - \[.*\] "(WS|GET|POST)')
    return [line for line in log_path.read_text().splitlines() if not access.match(line)]


async def test_refused_starts_close_cleanly_with_a_bounded_log(tmp_path):
    await make_agent()
    log_path = tmp_path / "daphne.log"
    async with FakeRealtimeServer(default_reply=Reply(transcript="", audio_ms=0)) as model:
        with daphne(log_path, OPENAI_REALTIME_URL=model.url) as base_url:
            url = base_url.replace("http", "ws") + "/twilio/stream"
            known_sid = new_call_sid()
            token = await answer(base_url, known_sid)
            other_sid = new_call_sid()
            await answer(base_url, other_sid)
            async with aiohttp.ClientSession() as http:
                # The real stream takes the token; from now on it is a replay.
                async with http.ws_connect(url) as real:
                    await real.send_str(wire.connected_message())
                    await real.send_str(start_frame(known_sid, token))
                    await model.wait_for_session()
                    refusals = [
                        [start_frame(new_call_sid(), "forged")],  # unknown call
                        [start_frame(known_sid, "forged")],  # forged token
                        [start_frame(known_sid, token)],  # replayed
                        [start_frame(other_sid, token)],  # another call's token
                        [wire.connected_message(), start_frame(known_sid, None)],  # no token
                    ] * 40
                    codes = await asyncio.gather(
                        *(close_code_after(http, url, frames) for frames in refusals)
                    )
                    assert not real.closed  # the real call was never disturbed
    assert codes == [protocol.CLOSE_STREAM_REFUSED] * len(refusals)
    lines = app_lines(log_path)
    crashes = crashes_in(lines)
    assert not crashes, crashes
    refused = [line for line in lines if "Refused media stream" in line]
    assert len(refused) <= 10, refused  # rate-limited, whoever sends them


async def test_sockets_that_never_start_are_closed_and_capped(tmp_path):
    await make_agent()
    log_path = tmp_path / "daphne.log"
    cap, sockets = 40, 60
    async with FakeRealtimeServer(default_reply=Reply(transcript="", audio_ms=0)) as model:
        with daphne(
            log_path,
            OPENAI_REALTIME_URL=model.url,
            STREAM_START_TIMEOUT_SECONDS="1",
            STREAM_UNAUTHENTICATED_MAX=str(cap),
        ) as base_url:
            url = base_url.replace("http", "ws") + "/twilio/stream"
            loop = asyncio.get_running_loop()
            async with aiohttp.ClientSession() as http:
                opened, refused = [], 0
                for _ in range(sockets):
                    try:
                        opened.append(await http.ws_connect(url))
                    except aiohttp.WSServerHandshakeError as error:
                        assert error.status == 403
                        refused += 1
                assert (len(opened), refused) == (cap, sockets - cap)
                began = loop.time()
                messages = await asyncio.gather(*(ws.receive(timeout=5) for ws in opened))
                took = loop.time() - began
                assert {message.type for message in messages} == {aiohttp.WSMsgType.CLOSE}
                assert {ws.close_code for ws in opened} == {protocol.CLOSE_START_TIMEOUT}
                assert took < 3
                for ws in opened:
                    await ws.close()
                # With the strangers gone, a real call gets its stream as usual.
                call_sid = new_call_sid()
                token = await answer(base_url, call_sid)
                async with http.ws_connect(url) as real:
                    await real.send_str(wire.connected_message())
                    await real.send_str(start_frame(call_sid, token))
                    await model.wait_for_session()
                    with pytest.raises(TimeoutError):
                        await real.receive(timeout=1.5)  # past the deadline, still open
    lines = app_lines(log_path)
    crashes = crashes_in(lines)
    assert not crashes, crashes
    assert len([line for line in lines if "no valid start" in line]) <= 10
    assert len([line for line in lines if "Refused a media stream upgrade" in line]) <= 10
