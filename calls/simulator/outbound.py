"""The phones our calls reach: Twilio's side of the calls the server places.

`OutboundPhones` runs the REST emulator (the server's TWILIO_API_BASE_URL) and, for each
`Calls.create`, plays the callee as a test chose for that number:

- `human`: answers; the stream opens; with detection asked, the verdict `human` is POSTed
  to the AMD callback after `amd_delay_s`; the person listens, then hangs up after `talk_s`
  (unless the server ends the call first).
- `machine`: answers; its greeting runs for `amd_delay_s`, then the beep: the verdict
  (`machine_end_beep` by default; any AnsweredBy can be chosen, e.g. `fax`) is POSTed; the
  machine records until the server hangs up (or `talk_s` passes).
- `no-answer`, `busy`, `failed`: rings (or not) and ends with that status.

Like Twilio it POSTs the call's status callbacks (initiated, ringing, in-progress or the
failure, completed, with SequenceNumber), the answer webhook (`Url`, Direction
outbound-api) and the AMD callback, all signed over the public URLs. With several servers
the requests go round-robin, so the AMD verdict usually reaches another process than the
one holding the stream, as behind a load balancer.

It keeps, per call, what the callee heard and when, and across calls how many were up at
once (from create to the terminal status), for assertions and the campaign figures.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
from django.conf import settings

from callmedia.tasks import TaskSet
from calls import security

from .call import parse_answer, rest_emulator_start
from .rest import API_VERSION, TwilioRestEmulator
from .stream import TwilioStreamClient

Kind = Literal["human", "machine", "no-answer", "busy", "failed"]
HTTP_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Answer:
    """How a number answers."""

    kind: Kind = "human"
    ring_s: float = 0.1
    # human: when the verdict is sent after answering; machine: its greeting, up to the beep.
    amd_delay_s: float = 0.3
    # The verdict sent; "" = human / machine_end_beep by kind; NO_VERDICT = none at all.
    answered_by: str = ""
    talk_s: float = 1.0  # how long the callee stays on once the agent may speak

    @property
    def verdict(self) -> str:
        return self.answered_by or ("human" if self.kind == "human" else "machine_end_beep")


NO_VERDICT = "-"
HUMAN = Answer("human")
MACHINE = Answer("machine")
NO_ANSWER = Answer("no-answer")
BUSY = Answer("busy")
FAILED = Answer("failed", ring_s=0.0)


@dataclass
class PhoneCall:
    """One call as the callee's side saw it."""

    sid: str
    to: str
    answer: Answer
    params: dict[str, str]
    status: str = "queued"
    stream: TwilioStreamClient | None = None
    amd_sent_at: float | None = None
    played_before_amd: int = 0  # bytes of agent audio heard before the verdict
    first_audio_at: float | None = None
    hangup_at: float | None = None  # the server's REST hang-up
    unplayed_at_hangup: int | None = None  # agent audio still buffered then
    played_bytes: int = 0
    ended_by: str = ""  # "server", "callee" or the failure status
    over: bool = False  # Twilio counts it as ended (a terminal status)
    errors: list[str] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    leave: asyncio.Event = field(default_factory=asyncio.Event)  # the callee hangs up now


class OutboundPhones:
    """Twilio's REST API plus the phones: `async with OutboundPhones(servers=[...]) as phones`."""

    def __init__(
        self,
        *,
        servers: list[str],
        answers: dict[str, Answer] | None = None,
        default: Answer = HUMAN,
        public_url: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """`host`/`port`: where the REST API listens (the server's TWILIO_API_BASE_URL); port
        0 picks a free one."""
        self.servers = [server.rstrip("/") for server in servers]
        self.answers = dict(answers or {})
        self.default = default
        self.public_url = (public_url or settings.PUBLIC_URL).rstrip("/")
        self.account_sid = settings.TWILIO_ACCOUNT_SID
        self.rest = TwilioRestEmulator(
            auth_token=settings.TWILIO_AUTH_TOKEN,
            on_create=self._created,
            on_hangup=self._hung_up,
            host=host,
            port=port,
        )
        self.calls: dict[str, PhoneCall] = {}
        self.live = 0
        self.peak = 0
        self._turns = itertools.count()
        self._http: aiohttp.ClientSession | None = None
        self._sequence: Counter[str] = Counter()
        self._tasks = TaskSet("Outbound phones", failure_level=logging.DEBUG)

    async def __aenter__(self) -> OutboundPhones:
        await rest_emulator_start(self.rest)
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for call in self.calls.values():
            if call.stream is not None and not call.stream.closed:
                await call.stream.aclose()
        await self._tasks.close()
        await self.rest.stop()
        if self._http is not None:
            await self._http.close()

    def _server(self) -> str:
        """The next server, round-robin (`servers` may be set once they are started)."""
        return self.servers[next(self._turns) % len(self.servers)]

    @property
    def base_url(self) -> str:
        return self.rest.base_url

    def by_number(self, number: str) -> list[PhoneCall]:
        return [call for call in self.calls.values() if call.to == number]

    def hang_up(self, sid: str) -> None:
        """The callee hangs up now, rather than after its `talk_s`."""
        self.calls[sid].leave.set()

    async def wait_done(self, sid: str, timeout: float = 10.0) -> PhoneCall:
        call = self.calls[sid]
        await asyncio.wait_for(call.done.wait(), timeout)
        return call

    # -- one call -----------------------------------------------------------------------------

    async def _created(self, params: dict[str, str]) -> None:
        answer = self.answers.get(params["To"], self.default)
        call = self.calls[params["sid"]] = PhoneCall(params["sid"], params["To"], answer, params)
        self.live += 1
        self.peak = max(self.peak, self.live)
        try:
            await self._run(call)
        except Exception as error:
            call.errors.append(repr(error))
            raise
        finally:
            if call.stream is not None:
                call.played_bytes = len(call.stream.played)
                await call.stream.aclose()
            self._over(call)
            call.done.set()

    def _over(self, call: PhoneCall) -> None:
        """The call has a terminal status now: it no longer counts as up."""
        if not call.over:
            call.over = True
            self.live -= 1

    async def _run(self, call: PhoneCall) -> None:
        answer = call.answer
        await self._status(call, "initiated")
        if answer.kind == "failed":
            await self._end(call, "failed", "failed")
            return
        await self._status(call, "ringing")
        await asyncio.sleep(answer.ring_s)
        if answer.kind in ("busy", "no-answer"):
            await self._end(call, answer.kind, answer.kind)
            return
        loop = asyncio.get_running_loop()
        answered_at = loop.time()
        self.rest.set_status(call.sid, "in-progress")
        await self._status(call, "in-progress")
        server = self._server()
        document = await self._post(server, call.params["Url"], self._params(call, "in-progress"))
        instructions = parse_answer(document)
        url = self._internal(server, instructions.url, websocket=True)
        call.stream = TwilioStreamClient(
            url,
            call_sid=call.sid,
            account_sid=self.account_sid,
            custom_parameters=instructions.parameters,
            headers={security.SIGNATURE_HEADER: security.compute_signature(instructions.url, {})},
            on_event=lambda kind, detail: self._stream_event(call, kind, detail),
        )
        await call.stream.start()
        if call.params.get("MachineDetection") and answer.verdict != NO_VERDICT:
            await asyncio.sleep(answer.amd_delay_s)
            await self._amd(call, answer.verdict, answered_at)
        await self._wait_closed(call, answer.talk_s)
        if not call.stream.closed:
            call.ended_by = "callee"
            # The callee hangs up: for Twilio the call is over then, before the stream ends.
            self.rest.set_status(call.sid, "completed")
            self._over(call)
            await call.stream.stop()
        if instructions.connect_action and call.ended_by == "server":
            # Twilio requests the <Connect action> once the server closed the stream.
            await self._post(server, instructions.connect_action, self._params(call, "in-progress"))
        duration = math.ceil(loop.time() - answered_at)
        if self.rest.calls.get(call.sid) != "completed":
            self.rest.set_status(call.sid, "completed")
        await self._end(call, "completed", call.ended_by, duration=duration)

    async def _wait_closed(self, call: PhoneCall, seconds: float) -> None:
        """Until the stream closes, the callee leaves, or `seconds` pass."""
        assert call.stream is not None
        closed = asyncio.ensure_future(call.stream.wait_closed(seconds))
        leave = asyncio.ensure_future(call.leave.wait())
        await asyncio.wait({closed, leave}, return_when=asyncio.FIRST_COMPLETED)
        for waiter in (closed, leave):
            waiter.cancel()
        await asyncio.gather(closed, leave, return_exceptions=True)
        error = None if closed.cancelled() else closed.exception()
        if error is not None and not isinstance(error, TimeoutError):
            raise error  # a stream task failed

    async def _amd(self, call: PhoneCall, answered_by: str, answered_at: float) -> None:
        stream = call.stream
        assert stream is not None
        call.played_before_amd = len(stream.played) + stream.buffered_bytes
        call.amd_sent_at = asyncio.get_running_loop().time()
        params = {
            "AccountSid": self.account_sid,
            "CallSid": call.sid,
            "AnsweredBy": answered_by,
            "MachineDetectionDuration": str(int((call.amd_sent_at - answered_at) * 1000)),
        }
        server = self._server()
        await self._post(server, call.params["AsyncAmdStatusCallback"], params)

    def _hung_up(self, sid: str) -> None:
        call = self.calls.get(sid)
        if call is None:
            return
        call.hangup_at = asyncio.get_running_loop().time()
        call.ended_by = call.ended_by or "server"
        self._over(call)  # the REST emulator has just recorded it completed
        if call.stream is not None:
            call.unplayed_at_hangup = call.stream.buffered_bytes
            call.played_bytes = len(call.stream.played)
            self._tasks.spawn(call.stream.stop(), "phone-stream-stop")

    def _stream_event(self, call: PhoneCall, kind: str, detail: dict[str, Any]) -> None:
        if kind == "received" and detail.get("event") == "media" and call.first_audio_at is None:
            call.first_audio_at = asyncio.get_running_loop().time()

    async def _end(self, call: PhoneCall, status: str, ended_by: str, *, duration: int = 0) -> None:
        if self.rest.calls.get(call.sid) not in ("completed", status):
            self.rest.set_status(call.sid, status, duration=duration)
        self._over(call)
        call.ended_by = call.ended_by or ended_by
        await self._status(call, status, duration=duration)

    # -- HTTP towards the servers ---------------------------------------------------------------

    async def _status(self, call: PhoneCall, status: str, *, duration: int | None = None) -> None:
        call.status = status
        url = call.params.get("StatusCallback")
        if not url:
            return
        params = self._params(call, status)
        params["SequenceNumber"] = str(self._sequence[call.sid])
        params["Timestamp"] = format_datetime(datetime.now(UTC), usegmt=True)
        params["CallbackSource"] = "call-progress-events"
        if duration is not None:
            params["CallDuration"] = str(duration)
        self._sequence[call.sid] += 1
        try:
            await self._post(self._server(), url, params)
        except Exception as error:  # Twilio does not retry status callbacks
            call.errors.append(f"status {status}: {error!r}")

    def _params(self, call: PhoneCall, status: str) -> dict[str, str]:
        return {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": call.sid,
            "CallStatus": status,
            "Called": call.to,
            "Caller": call.params.get("From", ""),
            "Direction": "outbound-api",
            "From": call.params.get("From", ""),
            "To": call.to,
        }

    async def _post(self, server: str, public: str, params: dict[str, str]) -> str:
        """POST like Twilio: signed over the public URL, sent to the server's own address."""
        assert self._http is not None
        headers = {security.SIGNATURE_HEADER: security.compute_signature(public, params)}
        async with self._http.post(
            self._internal(server, public), data=params, headers=headers
        ) as response:
            body = await response.text()
            if response.status >= 300:
                raise RuntimeError(f"{public} answered HTTP {response.status}: {body[:200]}")
            return body

    @staticmethod
    def _internal(server: str, public: str, *, websocket: bool = False) -> str:
        parts, target = urlsplit(public), urlsplit(server)
        scheme = ("wss" if target.scheme == "https" else "ws") if websocket else target.scheme
        query = f"?{parts.query}" if parts.query else ""
        return f"{scheme}://{target.netloc}{parts.path}{query}"
