"""Twilio's side of the bench: N calls, each a signed voice webhook then a media stream.

Run by bench.relay as `python -m bench.twilio_side`. Protocol on stdin/stdout:
  prints `REST <url>` once its Twilio REST emulator listens;
  reads  `GO <http base> <ws base>`: places the calls, prints `STARTED <time>` once every
         call has received model audio (or `FAILED <why>`);
  reads  `STOP <path>`: hangs up every call as Twilio does (`stop`, then close), writes what
         it recorded (pickle) and prints `DONE`.

The stream client is lean rather than calls.simulator.stream.TwilioStreamClient, which is
built for tests: that one JSON-parses and strictly validates every server message, decodes
every payload into a growing byte buffer, keeps every message in a list, and wakes a player
task every 20 ms per call; at 100 calls that would make the load generator, not the server,
the bottleneck on one core. This one keeps Twilio's observable behaviour:
- 20 ms caller frames on a drift-free real-time schedule (random phase per call), the same
  JSON shape Twilio sends, built from a template; each payload carries a unique frame key;
- the server's audio "plays" in real time: a mark is echoed once everything before it has
  played, at once if nothing is buffered; `clear` drops the buffer and echoes every pending
  mark at once;
- every non-media message, and one media message in 50, is checked with
  calls.simulator.wire.validate_outbound (Twilio's 31950/31951 rules).
It uses aiohttp's WebSocket client (compiled frame reader and masking). Even so, each call
costs this process about as much CPU as it costs the server: at 100 calls the two generator
processes need more than the one core they have, which the report flags.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import pickle
import random
import re
import secrets
import sys
from collections import deque
from typing import Any

import aiohttp
from aiohttp import ClientWebSocketResponse, WSMsgType
from twilio.request_validator import RequestValidator

from calls.simulator.rest import TwilioRestEmulator
from calls.simulator.wire import (
    connected_message,
    mark_echo_message,
    start_message,
    stop_message,
    validate_outbound,
)

from .common import FRAME_BYTES, FRAME_S, KEY_BYTES, caller_key, now, pin_to

ACCOUNT_SID = "AC" + "1" * 32
FROM_NUMBER = "+14155550123"
BYTES_PER_S = 8000
VALIDATE_EVERY = 50
# The rest of each caller frame after its key: mu-law silence.
_FRAME_REST_B64 = base64.b64encode(b"\xff" * (FRAME_BYTES - KEY_BYTES)).decode("ascii")
_TOKEN_RE = re.compile(r'<Parameter name="token" value="([^"]+)"')


class BenchCall:
    """One call's media stream: caller audio out, model audio "played", marks echoed."""

    def __init__(self, index: int, call_sid: str, ws: ClientWebSocketResponse) -> None:
        self.index = index
        self.call_sid = call_sid
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.ws = ws
        self.loop = asyncio.get_running_loop()
        self.seq = 0
        self.t0 = 0.0  # frame k is due at t0 + (k + 1) * 20 ms (perf_counter)
        self.sent_times: list[float] = []
        self.recv_keys: list[str] = []
        self.recv_times: list[float] = []
        self.clear_times: list[float] = []
        self.media_received = 0
        self.marks_received = 0
        self.echoes_sent = 0
        self.echoes_after_clear = 0
        self.errors: list[str] = []
        self.first_media = asyncio.Event()
        self.closed_by_server = False
        self.stopping = False
        # Playback, in loop time: when the buffered audio ends, and the marks waiting for it.
        self._play_end = 0.0
        self._pending: deque[tuple[float, str]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task] = []

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    async def start(self, token: str) -> None:
        await self.ws.send_str(connected_message())
        await self.ws.send_str(
            start_message(
                stream_sid=self.stream_sid,
                call_sid=self.call_sid,
                account_sid=ACCOUNT_SID,
                sequence_number=self._next_seq(),
                custom_parameters={"token": token},
            )
        )
        self.t0 = now() + random.uniform(0, FRAME_S)
        self._tasks = [
            asyncio.create_task(self._send_audio()),
            asyncio.create_task(self._receive()),
        ]

    async def _send_audio(self) -> None:
        send, sleep = self.ws.send_str, asyncio.sleep
        head = '{"event":"media","sequenceNumber":"'
        middle = f'","streamSid":"{self.stream_sid}","media":{{"track":"inbound","chunk":"'
        times = self.sent_times
        frame = 0
        try:
            while not self.stopping:
                delay = self.t0 + (frame + 1) * FRAME_S - now()
                if delay > 0:
                    await sleep(delay)
                self.seq += 1
                payload = caller_key(self.index, frame) + _FRAME_REST_B64
                message = (
                    f'{head}{self.seq}{middle}{frame + 1}","timestamp":"{frame * 20}",'
                    f'"payload":"{payload}"}}}}'
                )
                times.append(now())
                await send(message)
                frame += 1
        except (ConnectionError, RuntimeError):
            pass  # the socket closed; the receiver reports it

    async def _receive(self) -> None:
        ws, text = self.ws, WSMsgType.TEXT
        while True:
            received = await ws.receive()
            t = now()
            if received.type is text:
                message = received.data
                if message.startswith('{"event":"media"'):
                    at = message.find('"payload":"', 30) + 11
                    payload_chars = len(message) - at - 3
                    padding = (message[-4] == "=") + (message[-5] == "=")
                    nbytes = payload_chars * 3 // 4 - padding
                    if nbytes <= FRAME_BYTES:
                        self._media(message[at : at + 8], t, nbytes)
                    else:  # the server merged model deltas that arrived together
                        self._merged(message[at:-3], t)
                    if self.media_received % VALIDATE_EVERY == 1:
                        self._validate(message)
                        self.first_media.set()
                    continue
                if not self._validate(message):
                    continue
                event = json.loads(message)
                if event["event"] == "media":  # valid, but not in the compact form above
                    payload = event["media"]["payload"]
                    self._media(payload[:8], t, len(base64.b64decode(payload)))
                    self.first_media.set()
                elif event["event"] == "mark":
                    self.marks_received += 1
                    self._mark(event["mark"]["name"])
                elif event["event"] == "clear":
                    self.clear_times.append(t)
                    self._clear()
            elif received.type is WSMsgType.BINARY:
                self._validate(received.data)
            else:  # close, closed or error: the stream is over
                break
        self.closed_by_server = not self.stopping
        self.first_media.set()

    def _media(self, key: str, received_at: float, nbytes: int) -> None:
        """A media frame from the server: time it by its key, and play it."""
        self.recv_keys.append(key)
        self.recv_times.append(received_at)
        self.media_received += 1
        self._play(nbytes)

    def _merged(self, payload: str, received_at: float) -> None:
        """A media message carrying several model frames: each keyed 160 bytes apart."""
        audio = base64.b64decode(payload)
        for at in range(0, len(audio), FRAME_BYTES):
            key = base64.b64encode(audio[at : at + KEY_BYTES]).decode("ascii")
            self.recv_keys.append(key)
            self.recv_times.append(received_at)
        self.media_received += 1
        self._play(len(audio))

    def _validate(self, message: str | bytes) -> bool:
        problem = validate_outbound(message, self.stream_sid)
        if problem is not None:
            self.errors.append(problem)
            return False
        return True

    # -- Twilio's playback buffer, as time ---------------------------------------------------

    def _play(self, nbytes: int) -> None:
        t = self.loop.time()
        if self._play_end < t:
            self._play_end = t  # an underrun: playback restarts when audio arrives
        self._play_end += nbytes / BYTES_PER_S

    def _mark(self, name: str) -> None:
        if self._play_end <= self.loop.time() and not self._pending:
            self._echo(name)
            return
        self._pending.append((self._play_end, name))
        if self._timer is None:
            self._timer = self.loop.call_at(self._pending[0][0], self._echo_due)

    def _echo_due(self) -> None:
        self._timer = None
        t = self.loop.time()
        while self._pending and self._pending[0][0] <= t + 0.0005:
            self._echo(self._pending.popleft()[1])
        if self._pending:
            self._timer = self.loop.call_at(self._pending[0][0], self._echo_due)

    def _clear(self) -> None:
        self._play_end = self.loop.time()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending:
            self.echoes_after_clear += 1
            self._echo(self._pending.popleft()[1])

    def _echo(self, name: str) -> None:
        if self.stopping:
            return
        self.echoes_sent += 1
        message = mark_echo_message(
            stream_sid=self.stream_sid, sequence_number=self._next_seq(), name=name
        )
        task = asyncio.ensure_future(self._send_quietly(message))
        task.add_done_callback(self._tasks_discard)

    def _tasks_discard(self, task: asyncio.Task) -> None:
        if not task.cancelled():
            task.exception()

    async def _send_quietly(self, message: str) -> None:
        try:
            await self.ws.send_str(message)
        except (ConnectionError, RuntimeError):
            pass

    async def stop(self) -> None:
        """Hang up as the caller: Twilio sends `stop`, then closes the socket."""
        self.stopping = True
        if self._timer is not None:
            self._timer.cancel()
        sender = self._tasks[0] if self._tasks else None
        if sender is not None:
            sender.cancel()
        try:
            await self.ws.send_str(
                stop_message(
                    stream_sid=self.stream_sid,
                    sequence_number=self._next_seq(),
                    call_sid=self.call_sid,
                    account_sid=ACCOUNT_SID,
                )
            )
            await self.ws.close()
        except (ConnectionError, RuntimeError):
            pass
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def record(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "call_sid": self.call_sid,
            "t0": self.t0,
            "sent_times": self.sent_times,
            "recv_keys": self.recv_keys,
            "recv_times": self.recv_times,
            "clear_times": self.clear_times,
            "media_received": self.media_received,
            "marks_received": self.marks_received,
            "echoes_sent": self.echoes_sent,
            "echoes_after_clear": self.echoes_after_clear,
            "errors": self.errors,
            "closed_by_server": self.closed_by_server,
        }


class Dashboard:
    """A staff member's live calls page: the feed socket, counted."""

    def __init__(self) -> None:
        self.messages = 0
        self.kinds: dict[str, int] = {}
        self.error = ""
        self.ws: ClientWebSocketResponse | None = None
        self.task: asyncio.Task | None = None
        self.call_ids: dict[str, str] = {}  # call sid -> the call's uuid, from the summaries

    async def start(self, http: aiohttp.ClientSession, url: str, cookie: str, origin: str) -> None:
        try:
            self.ws = await http.ws_connect(
                url, headers={"Cookie": cookie, "Origin": origin}, compress=0, max_msg_size=0
            )
        except Exception as error:  # reported, not fatal: the relay is what is measured
            self.error = repr(error)
            return
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        async for message in self.ws:
            if message.type is WSMsgType.TEXT:
                self.messages += 1
                data = json.loads(message.data)
                kind = data.get("event", "?")
                self.kinds[kind] = self.kinds.get(kind, 0) + 1
                for call in [data.get("call") or {}, *data.get("calls", [])]:
                    if call.get("sid"):
                        self.call_ids[call["sid"]] = call["id"]
        if self.ws.close_code not in (None, 1000):
            self.error = f"closed with code {self.ws.close_code}"

    async def stop(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


class Listener:
    """A staff member listening to one call (/ws/calls/<uuid>/listen): batches counted."""

    def __init__(self) -> None:
        self.batches = 0
        self.bytes = 0
        self.error = ""
        self.ws: ClientWebSocketResponse | None = None
        self.task: asyncio.Task | None = None

    async def start(self, http: aiohttp.ClientSession, url: str, cookie: str, origin: str) -> None:
        # A busy server may reset a connection; a browser would try again.
        for attempt in range(3):
            try:
                self.ws = await http.ws_connect(
                    url, headers={"Cookie": cookie, "Origin": origin}, compress=0, max_msg_size=0
                )
                break
            except (
                aiohttp.ClientOSError,
                aiohttp.ServerDisconnectedError,
                aiohttp.WSServerHandshakeError,  # a refusal when SQLite was locked
            ) as error:
                self.error = repr(error)
                await asyncio.sleep(0.5 * (attempt + 1))
            except Exception as error:
                self.error = repr(error)
                return
        if self.ws is None:
            return
        self.error = ""
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        async for message in self.ws:
            if message.type is WSMsgType.BINARY:
                self.batches += 1
                self.bytes += len(message.data)

    async def stop(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


async def place_call(
    index: int,
    http: aiohttp.ClientSession,
    args: argparse.Namespace,
    http_base: str,
    ws_base: str,
    rest: TwilioRestEmulator,
) -> BenchCall:
    call_sid = "CA" + secrets.token_hex(16)
    path = "/twilio/voice/incoming"
    params = {
        "CallSid": call_sid,
        "AccountSid": ACCOUNT_SID,
        "From": FROM_NUMBER,
        "To": args.to_number,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
    }
    signature = RequestValidator(args.auth_token).compute_signature(args.public_url + path, params)
    async with http.post(
        http_base + path, data=params, headers={"X-Twilio-Signature": signature}
    ) as response:
        document = await response.text()
        if response.status != 200:
            raise RuntimeError(f"voice webhook answered {response.status}: {document[:300]}")
    match = _TOKEN_RE.search(document)
    if match is None:
        raise RuntimeError(f"no stream token in the TwiML: {document[:300]}")
    rest.register_call(call_sid, account_sid=ACCOUNT_SID, to=args.to_number, from_=FROM_NUMBER)
    ws = await http.ws_connect(
        ws_base + "/twilio/stream", compress=0, max_msg_size=0, autoping=True, timeout=30
    )
    call = BenchCall(index, call_sid, ws)
    await call.start(match.group(1))
    return call


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()

    async def read_line() -> str:
        return (await loop.run_in_executor(None, sys.stdin.readline)).strip()

    rest = TwilioRestEmulator()
    await rest.start()
    print("REST", rest.base_url, flush=True)
    go = await read_line()
    if not go.startswith("GO "):
        return
    _, http_base, ws_base = go.split()

    # One HTTP session for webhooks, streams and dashboards; no connection limit (the
    # default of 100 would hold the 101st stream back).
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    dashboards = [Dashboard() for _ in range(args.dashboards)]
    for dashboard in dashboards:
        await dashboard.start(http, ws_base + "/ws/calls/live", args.cookie, args.public_url)

    calls: list[BenchCall] = []
    failure = ""
    semaphore = asyncio.Semaphore(args.ramp_concurrency)
    started_at = now()

    async def one(index: int) -> None:
        async with semaphore:
            # A saturated server may reset a connection during the ramp; Twilio retries too.
            for attempt in range(3):
                try:
                    calls.append(await place_call(index, http, args, http_base, ws_base, rest))
                    return
                except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
                    if attempt == 2:
                        raise
                    await asyncio.sleep(0.5)

    results = await asyncio.gather(*(one(i) for i in range(args.calls)), return_exceptions=True)
    problems = [r for r in results if isinstance(r, BaseException)]
    if problems:
        failure = f"{len(problems)} calls failed to start: {problems[0]!r}"
    else:
        try:
            async with asyncio.timeout(args.start_timeout):
                await asyncio.gather(*(c.first_media.wait() for c in calls))
        except TimeoutError:
            waiting = sum(not c.first_media.is_set() for c in calls)
            failure = f"{waiting} calls got no model audio within {args.start_timeout}s"
        dead = [c for c in calls if c.closed_by_server]
        if dead and not failure:
            failure = f"the server closed {len(dead)} streams during start-up"
    listeners: list[Listener] = []
    if args.listeners and not failure:
        listening = calls[: args.listeners]
        failure = await listen_to(listening, dashboards, listeners, http, ws_base, args)
    print(
        f"FAILED {failure}" if failure else f"STARTED {now()!r} {now() - started_at:.2f}",
        flush=True,
    )

    line = await read_line()
    await asyncio.gather(*(c.stop() for c in calls), return_exceptions=True)
    for listener in listeners:
        await listener.stop()
    for dashboard in dashboards:
        await dashboard.stop()
    await http.close()
    hangups = len(rest.hangups())
    await rest.stop()
    path = line.partition(" ")[2]
    if path:
        dump(
            path,
            {
                "calls": [c.record() for c in calls],
                "dashboards": [
                    {"messages": d.messages, "kinds": d.kinds, "error": d.error} for d in dashboards
                ],
                "listeners": [
                    {"batches": x.batches, "bytes": x.bytes, "error": x.error} for x in listeners
                ],
                "rest_requests": len(rest.requests),
                "rest_hangups": hangups,
                "failure": failure,
            },
        )
    print("DONE", flush=True)


async def listen_to(
    calls: list[BenchCall],
    dashboards: list[Dashboard],
    listeners: list[Listener],
    http: aiohttp.ClientSession,
    ws_base: str,
    args: argparse.Namespace,
) -> str:
    """One listener socket on each of `calls`, their ids read from the live feed."""
    if not dashboards:
        return "listeners need a dashboard (the live feed names the calls)"
    feed = dashboards[0]
    for _ in range(100):  # 10 s for the feed to name every call
        if all(c.call_sid in feed.call_ids for c in calls):
            break
        await asyncio.sleep(0.1)
    else:
        return "the live feed did not name every call to listen to"
    for call in calls:
        listener = Listener()
        url = f"{ws_base}/ws/calls/{feed.call_ids[call.call_sid]}/listen"
        await listener.start(http, url, args.cookie, args.public_url)
        listeners.append(listener)
    await asyncio.sleep(1.0)  # the first batches are under way before the window starts
    broken = [x.error for x in listeners if x.error]
    return f"{len(broken)} listeners failed: {broken[0]}" if broken else ""


def dump(path: str, data: dict[str, Any]) -> None:
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--cpu", type=int, default=1)
    parser.add_argument("--auth-token", required=True)
    parser.add_argument("--public-url", required=True)
    parser.add_argument("--to-number", required=True)
    parser.add_argument("--cookie", default="")
    parser.add_argument("--dashboards", type=int, default=1)
    parser.add_argument("--listeners", type=int, default=0, help="calls with a staff listener")
    parser.add_argument("--ramp-concurrency", type=int, default=5)
    parser.add_argument("--start-timeout", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=2)
    arguments = parser.parse_args()
    random.seed(arguments.seed)
    pin_to({arguments.cpu})
    asyncio.run(main(arguments))
