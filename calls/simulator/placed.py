"""A call an agent places, run from the command line with the emulator as Twilio and callee.

`PlacedCall` is what `manage.py simulate_call --outbound NUMBER` runs. It places the call
through the server's own service (`services.call_place_outbound`, as the admin's Call out
does, on the database the server shares), with Twilio's REST API emulated on the port the
server was told (TWILIO_API_BASE_URL), and plays the phone at NUMBER with `OutboundPhones`:
it rings, then answers as a person, an answering machine or a fax (sending Twilio's
`AnsweredBy` verdict when the agent asked for detection), or does not answer, is busy or
fails; and it posts the status callbacks, the answer webhook and the AMD callback to the
server. What the server made of it (the verdict it recorded, a voicemail left, how the call
ended) is read back from that database and summed up, as for an inbound call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings

from callmedia.audio import BYTES_PER_MS

from .call import DEFAULT_SERVER_URL, LogCallback, SimulationError, database_lines_new
from .outbound import BUSY, FAILED, NO_ANSWER, Answer, OutboundPhones, PhoneCall

# How the phone answers, by Twilio's AnsweredBy (or the call's status when nobody answers).
ANSWERS: dict[str, Answer] = {
    "human": Answer("human"),
    "unknown": Answer("human", answered_by="unknown"),
    **{
        verdict: Answer("machine", answered_by=verdict)
        for verdict in (
            "machine_start",
            "machine_end_beep",
            "machine_end_silence",
            "machine_end_other",
            "fax",
        )
    },
    "no-answer": NO_ANSWER,
    "busy": BUSY,
    "failed": FAILED,
}
# After the phone is done, how long the server may take to close the call's record.
UNANSWERED = ("no-answer", "busy", "failed")
SERVER_CLOSE_S = 10.0
SERVER_SETTLE_S = 0.5
POLL_S = 0.25
# Beyond the callee's time on the line: ringing, answering, the server's hang-up.
CALL_MARGIN_S = 30.0


@dataclass
class PlacedCallResult:
    to_number: str
    answered_by: str
    agent: str = ""
    call_sid: str = ""
    from_number: str = ""
    phone_status: str = ""  # the last status the phone reported to the server
    ended_by: str = ""  # "server", "callee", or the status when nobody answered
    heard_s: float = 0.0
    heard_before_verdict_s: float | None = None
    server: dict[str, Any] = field(default_factory=dict)  # the call's record on the server
    rest_requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        server = self.server
        rows = [
            ("Call", f"{self.call_sid}  {self.agent} ({self.from_number}) → {self.to_number}"),
            ("Answered", self._answered()),
            ("Detection", self._detection()),
            ("Voicemail", self._voicemail()),
            ("Heard", self._heard()),
            ("REST", "; ".join(self.rest_requests) or "none"),
            (
                "End",
                f"{server.get('status', '?')}: {server.get('end_reason') or 'no end reason'}"
                f" ({self._ended_by()})",
            ),
            ("Errors", "; ".join(self.errors) or "none"),
        ]
        return ["Call summary (outbound)"] + [f"  {name:<9} {value}" for name, value in rows]

    def _answered(self) -> str:
        answer = ANSWERS[self.answered_by]
        if answer.kind in UNANSWERED:
            return f"nobody: {answer.kind}"
        who = "a person" if answer.kind == "human" else "an answering machine"
        if self.answered_by == "fax":
            who = "a fax machine"
        return f"{who} (AnsweredBy {answer.verdict} when the agent asks for detection)"

    def _detection(self) -> str:
        server = self.server
        if not server.get("machine_detection"):
            return "not asked (the agent's answering-machine setting is off)"
        asked = f"asked ({server['machine_detection']})"
        verdict = server.get("amd_result")
        if verdict is None and ANSWERS[self.answered_by].kind in UNANSWERED:
            return f"{asked}; nobody answered"
        if verdict is None:
            timed_out = "; the agent stopped waiting" if server.get("amd_timeout") else ""
            return f"{asked}; no verdict recorded{timed_out}"
        took = verdict.get("detection_ms")
        after = f" after {took} ms" if took is not None else ""
        return f"{asked}; the server recorded {verdict.get('answered_by')}{after}"

    def _voicemail(self) -> str:
        server = self.server
        if "voicemail_left" in server:
            return f"left ({server['voicemail_left'].get('chars', '?')} characters)"
        if "voicemail_failed" in server:
            return "not left: it did not play out"
        return "none"

    def _heard(self) -> str:
        before = (
            f" ({self.heard_before_verdict_s:.1f} s before the verdict)"
            if self.heard_before_verdict_s is not None
            else ""
        )
        return f"{self.heard_s:.1f} s of agent audio{before}"

    def _ended_by(self) -> str:
        return {
            "server": "the server hung up",
            "callee": "the callee hung up",
        }.get(self.ended_by, f"the call was {self.ended_by or self.phone_status}")


class PlacedCall:
    """The agent `agent_name` (default: the default agent) calls `to_number`; `run()`."""

    def __init__(
        self,
        *,
        to_number: str,
        answered_by: str = "human",
        agent_name: str = "",
        server_url: str = DEFAULT_SERVER_URL,
        public_url: str | None = None,
        duration_s: float = 60.0,
        rest_host: str = "127.0.0.1",
        rest_port: int = 8010,
        log: LogCallback = print,
    ) -> None:
        if answered_by not in ANSWERS:
            raise ValueError(f"--answered-by is one of {', '.join(ANSWERS)}, not {answered_by!r}")
        self.agent_name = agent_name
        self.duration_s = duration_s
        self.result = PlacedCallResult(to_number=to_number, answered_by=answered_by)
        answer = dataclasses.replace(ANSWERS[answered_by], talk_s=duration_s)
        self.phones = OutboundPhones(
            servers=[server_url],
            default=answer,
            public_url=public_url,
            host=rest_host,
            port=rest_port,
        )
        self._log = log
        self._started_at = 0.0
        self._seen_rows = {"transcript": 0, "event": 0}
        self._hang_up = asyncio.Event()

    def hang_up(self) -> None:
        """The callee hangs up (Ctrl-C)."""
        self._hang_up.set()

    def log(self, text: str) -> None:
        elapsed = asyncio.get_running_loop().time() - self._started_at
        self._log(f"{elapsed:6.2f}s  {text}")

    async def run(self) -> PlacedCallResult:
        self._started_at = asyncio.get_running_loop().time()
        self._check_rest_url()
        async with self.phones:
            sid = await self._place()
            phone = await self._wait_phone(sid)
            await self._wait_server(sid)
        self._collect(phone)
        return self.result

    def _check_rest_url(self) -> None:
        """This process places the call: its Twilio REST API must be the emulator."""
        expected = f"http://{self.phones.rest.host}:{self.phones.rest.port}"
        if settings.TWILIO_API_BASE_URL.rstrip("/") != expected:
            raise SimulationError(
                f"TWILIO_API_BASE_URL is {settings.TWILIO_API_BASE_URL or 'Twilio itself'}, not"
                f" this simulator ({expected}): the call would not reach the emulator. Run with"
                f" the server's settings, and TWILIO_API_BASE_URL={expected} on both sides."
            )

    async def _place(self) -> str:
        from calls import services  # the server's own service, on the shared database

        agent = await sync_to_async(_agent_find)(self.agent_name)
        result = self.result
        result.agent, result.from_number = agent.name, str(agent.phone_number)
        self.log(f"{agent.name} calls {result.to_number}; the phone answers: {result.answered_by}")
        try:
            call = await services.call_place_outbound(
                agent=agent, to_number=result.to_number, source={"placed_by": "simulate_call"}
            )
        except services.CallControlError as error:
            raise SimulationError(f"the call was not placed: {error}") from None
        result.call_sid, result.to_number = call.sid, call.to_number
        self.log(f"placed: {call.sid}")
        return call.sid

    async def _wait_phone(self, sid: str) -> PhoneCall:
        phones = self.phones
        deadline = asyncio.get_running_loop().time() + self.duration_s + CALL_MARGIN_S
        while sid not in phones.calls:  # Twilio's create answers before the phone rings
            await self._show_database(sid)
            await asyncio.sleep(POLL_S)
        phone = phones.calls[sid]
        while not phone.done.is_set():
            if self._hang_up.is_set():
                phones.hang_up(sid)
            if asyncio.get_running_loop().time() > deadline:
                raise SimulationError(f"the call {sid} did not end; see the server's log")
            await self._show_database(sid)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(phone.done.wait(), POLL_S)
        self.log(f"the phone is done: {phone.status} ({phone.ended_by or 'no answer'})")
        return phone

    async def _wait_server(self, sid: str) -> None:
        """Until the server has closed the call's record (or SERVER_CLOSE_S passed)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SERVER_CLOSE_S
        while not (record := await sync_to_async(_server_record)(sid)).get("ended"):
            if loop.time() > deadline:
                self.result.errors.append(
                    f"the server did not close the call within {SERVER_CLOSE_S:g} s"
                )
                break
            await self._show_database(sid)
            await asyncio.sleep(POLL_S)
        else:
            # Closed; its session's last events are written in the background just after.
            await asyncio.sleep(SERVER_SETTLE_S)
            record = await sync_to_async(_server_record)(sid)
        await self._show_database(sid)
        self.result.server = record

    async def _show_database(self, sid: str) -> None:
        lines = await sync_to_async(database_lines_new)(sid, self._seen_rows)
        for line in lines:
            self.log(line)

    def _collect(self, phone: PhoneCall) -> None:
        result = self.result
        result.phone_status, result.ended_by = phone.status, phone.ended_by
        result.heard_s = phone.played_bytes / BYTES_PER_MS / 1000
        if phone.amd_sent_at is not None:
            result.heard_before_verdict_s = phone.played_before_amd / BYTES_PER_MS / 1000
        result.errors += phone.errors
        for request in self.phones.rest.requests:
            what = (
                "create"
                if request.method == "POST" and request.call_sid is None
                else "hangup"
                if request.is_hangup
                else "TwiML update"
                if request.twiml is not None
                else f"{request.method} {request.path.rsplit('/', 1)[-1]}"
            )
            result.rest_requests.append(f"{what} → {request.status}")


def _agent_find(name: str) -> Any:
    """The agent called `name`, else the default one, else the only one that can call."""
    from agents.models import Agent

    callers = Agent.objects.active().exclude(phone_number=None).exclude(phone_number="")
    if name:
        agent = Agent.objects.filter(name=name).first()
        if agent is None:
            known = ", ".join(Agent.objects.values_list("name", flat=True)) or "none"
            raise SimulationError(f"no agent called {name!r} (agents: {known})")
        return agent
    agent = callers.filter(is_default=True).first()
    if agent is None and callers.count() == 1:
        agent = callers.first()
    if agent is None:
        names = ", ".join(callers.values_list("name", flat=True)) or "none"
        raise SimulationError(f"which agent calls? Give --agent NAME (agents that can: {names})")
    return agent


def _server_record(call_sid: str) -> dict[str, Any]:
    """The call as the server recorded it: status, end, detection, voicemail events."""
    from django.db import close_old_connections

    from calls.models import Call

    close_old_connections()
    call = Call.objects.filter(sid=call_sid).first()
    if call is None:
        return {}
    record: dict[str, Any] = {
        "status": call.status,
        "ended": call.ended_at is not None and bool(call.end_reason),
        "end_reason": call.get_end_reason_display() if call.end_reason else "",
        "machine_detection": call.machine_detection,
    }
    kinds = ("amd_result", "amd_timeout", "voicemail_left", "voicemail_failed")
    for event in call.events.filter(kind__in=kinds).order_by("id"):
        record[event.kind] = event.data or {}
    return record
