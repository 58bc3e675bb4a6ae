"""A whole phone call, placed the way Twilio places it, against a running voicebot server.

`SimulatedCall` is what `manage.py simulate_call` runs; tests drive it directly. It plays
every part Twilio plays for one inbound call:

1. POSTs the signed voice webhook and follows the TwiML it gets back;
2. opens the media stream with `TwilioStreamClient` (real-time audio both ways, marks
   echoed as Twilio echoes them, every server message validated);
3. answers the server's REST requests for this call with `TwilioRestEmulator` on a fixed
   port (the server's TWILIO_API_BASE_URL): a hangup ends the call, a `<Dial>` update
   ends the stream and rings the person (`dial_outcome` chooses what they do: see
   `calls.simulator.dial`), runs their `<Number url>` whisper and the `<Dial action>`, and
   follows what that answers (back to the agent on a new stream, or the call is theirs);
   a `<Connect><Stream>` update ends the stream with a `stop` and moves the call to a new
   stream;
4. posts the call and stream status callbacks and, when the server closes the stream, the
   `<Connect action>` request, and follows the TwiML it answers: `<Hangup>` ends the call,
   a new `<Connect><Stream>` opens a new stream for the same call (the caller's script and
   the recording carry on across it).

URLs in the TwiML are the server's public ones (PUBLIC_URL). Like a TLS proxy, the simulator
sends each request to the server's own address instead, and signs it over the public URL.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import re
import secrets
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
from django.conf import settings
from django.urls import reverse
from websockets.exceptions import InvalidHandshake, InvalidStatus

from callmedia.audio import BYTES_PER_MS, duration_ms, ulaw_to_wav, wav_to_ulaw
from callmedia.protocol import CLOSE_START_FAILED, CLOSE_START_TIMEOUT, CLOSE_STREAM_REFUSED
from callmedia.tasks import TaskSet
from calls import security

from .dial import DialRun, dial_outcome_normalise, dial_run
from .rest import API_VERSION, TwilioRestEmulator, twiml_dial_numbers
from .stream import TwilioStreamClient

DEFAULT_SERVER_URL = "http://127.0.0.1:8000"
DEFAULT_FROM_NUMBER = "+14155550123"
DEFAULT_DURATION_S = 60.0
HTTP_TIMEOUT_S = 15.0  # Twilio gives up on a webhook after 15 s
DTMF_GAP_S = 0.25
# "The line is quiet": no agent audio for this long, and the caller has finished talking.
QUIET_S = 1.2
DATABASE_POLL_S = 0.5

# Why the server may close the stream, by WebSocket close code (see callmedia.protocol).
CLOSE_CODES = {
    CLOSE_STREAM_REFUSED: ": it refused the stream, e.g. a bad, expired or reused stream token",
    CLOSE_START_TIMEOUT: ": no valid start reached it in time",
    CLOSE_START_FAILED: ": it could not record the stream; see its log",
}

ActionKind = Literal["dtmf", "say", "audio"]
LogCallback = Callable[[str], object]


class SimulationError(Exception):
    """The call could not be placed or carried; `str()` says why and what to do."""


class ServerUnreachable(SimulationError):
    pass


class BadSignatureConfiguration(SimulationError):
    pass


class NoAgent(SimulationError):
    pass


class RestPortInUse(SimulationError):
    pass


# --- the script -------------------------------------------------------------------------------

_TIMED = re.compile(r"^(?P<value>.*)@(?P<number>\d+(?:\.\d+)?)(?P<unit>ms|s)?$", re.DOTALL)


@dataclass(frozen=True)
class Action:
    """Something the caller does: at a stream time, or (at_s None) in turn when it is quiet."""

    kind: ActionKind
    value: str
    at_s: float | None = None

    def describe(self) -> str:
        when = "when the line is quiet" if self.at_s is None else f"at {self.at_s:g}s"
        return f"{self.kind} {self.value!r} {when}"


def parse_action(kind: ActionKind, spec: str) -> Action:
    """Parse `VALUE[@TIME]`, TIME in seconds (`5`, `5s`, `2.5s`) or milliseconds (`800ms`)."""
    value, at_s = spec, None
    match = _TIMED.match(spec)
    if match:
        value = match["value"]
        number = float(match["number"])
        at_s = number / 1000 if match["unit"] == "ms" else number
    value = value.strip()
    if not value:
        raise ValueError(f"--{kind} needs a value before the @: {spec!r}")
    if kind == "dtmf" and not re.fullmatch(r"[0-9*#]+", value):
        raise ValueError(f"--dtmf takes keys 0-9, * and #, not {value!r}")
    if kind == "audio" and not Path(value).is_file():
        raise ValueError(f"--audio: no such file {value!r}")
    return Action(kind, value, at_s)


# --- what the server said ---------------------------------------------------------------------


@dataclass(frozen=True)
class StreamInstructions:
    url: str
    parameters: dict[str, str]
    status_callback: str | None
    connect_action: str | None


def parse_answer(document: str) -> StreamInstructions:
    """Read the TwiML answering a call; NoAgent if it turns the caller away."""
    try:
        root = ET.fromstring(document)
    except ET.ParseError as error:
        raise SimulationError(f"the server answered with invalid TwiML: {error}") from None
    stream = root.find("./Connect/Stream")
    if stream is not None and stream.get("url"):
        connect = root.find("./Connect")
        return StreamInstructions(
            url=stream.get("url"),
            parameters={p.get("name"): p.get("value", "") for p in stream.iter("Parameter")},
            status_callback=stream.get("statusCallback"),
            connect_action=connect.get("action"),
        )
    said = " ".join((say.text or "").strip() for say in root.iter("Say"))
    if root.find("Hangup") is not None or said:
        raise NoAgent(f"the server says “{said}”" if said else "the server hung up")
    raise SimulationError(f"the server's TwiML has no <Connect><Stream>: {document[:300]}")


# --- the REST emulator, on the port the server expects ----------------------------------------


async def rest_emulator_start(rest: TwilioRestEmulator) -> None:
    """Start it on the port the server was told (TWILIO_API_BASE_URL), or say what to do."""
    try:
        await rest.start()
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        raise RestPortInUse(
            f"the Twilio REST emulator cannot listen on {rest.host}:{rest.port}: the port"
            " is in use (another simulate_call still running?). Stop it, or pick"
            " another port with --rest-port and start the server with"
            f" TWILIO_API_BASE_URL=http://{rest.host}:<that port>"
        ) from None


def share_rest_emulator(rest: TwilioRestEmulator, calls: list[SimulatedCall]) -> None:
    """Route one REST emulator's requests to several simulated calls, by CallSid.

    Pass the same emulator as `rest=` to each call; its owner starts and stops it.
    """
    by_sid = {call.call_sid: call for call in calls}

    def request(request: Any) -> None:
        call = by_sid.get(request.call_sid or "")
        if call is not None:
            call._rest_request(request)

    def hangup(call_sid: str) -> None:
        if call_sid in by_sid:
            by_sid[call_sid]._rest_hangup(call_sid)

    def twiml(call_sid: str, document: str) -> None:
        if call_sid in by_sid:
            by_sid[call_sid]._rest_twiml(call_sid, document)

    rest.on_request, rest.on_hangup, rest.on_twiml = request, hangup, twiml


# --- the result -------------------------------------------------------------------------------

EndReason = Literal["hangup", "transfer", "stream_closed", "duration", "caller", "refused"]


@dataclass
class CallResult:
    call_sid: str
    to_number: str
    from_number: str
    end_reason: EndReason | None = None
    end_detail: str = ""
    transferred_to: str | None = None
    duration_s: float = 0.0
    stream: dict[str, Any] = field(default_factory=dict)
    dtmf_sent: str = ""
    marks_after_clear: int = 0
    heard_ulaw: bytes = b""
    recording: Path | None = None
    call_recording: Path | None = None  # the dual-channel recording Twilio made, if asked
    rest_requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # One summary per stream the call had, in order (`stream` is the last one's).
    streams: list[dict[str, Any]] = field(default_factory=list)
    # Between consecutive streams: seconds from the old stream's end to the new one's start,
    # during which the caller's line carried nothing.
    stream_gaps_s: list[float] = field(default_factory=list)

    @property
    def heard_s(self) -> float:
        return duration_ms(self.heard_ulaw) / 1000

    def _total(self, key: str) -> int:
        """`key` summed over every stream the call had (a transfer that came back, a
        resumed call: each has its own)."""
        streams = self.streams or [self.stream]
        return sum(stream.get(key, 0) for stream in streams)

    def summary_lines(self) -> list[str]:
        lengths = [stream.get("duration_ms", 0) / 1000 for stream in self.streams or [self.stream]]
        streamed = (
            f"stream {lengths[0]:.1f} s"
            if len(lengths) == 1
            else f"{len(lengths)} streams: " + " + ".join(f"{s:.1f} s" for s in lengths)
        )
        recorded = f" (recorded to {self.recording})" if self.recording else ""
        marks = (
            f"{self._total('marks_sent_by_server')} from the server, "
            f"{self._total('marks_echoed')} echoed ({self.marks_after_clear} after a clear)"
        )
        rows = [
            ("Call", f"{self.call_sid}  {self.from_number} → {self.to_number}"),
            ("Duration", f"{self.duration_s:.1f} s ({streamed})"),
            (
                "Frames",
                f"{self._total('frames_sent')} caller frames sent, "
                f"{self._total('frames_received')} agent media messages received",
            ),
            ("Heard", f"{self.heard_s:.1f} s of agent audio{recorded}"),
            ("Marks", marks),
            ("Clears", str(self._total("clears"))),
            ("DTMF", " ".join(self.dtmf_sent) or "none"),
            ("REST", "; ".join(self.rest_requests) or "none"),
            ("End", f"{self.end_reason}: {self.end_detail}"),
            ("Errors", "; ".join(self.errors) or "none"),
        ]
        return ["Call summary"] + [f"  {name:<9} {value}" for name, value in rows]


# --- the call ---------------------------------------------------------------------------------


class SimulatedCall:
    """One inbound call from `from_number` to `to_number`, run with `await call.run()`.

    `public_url` is what the server signs and builds its TwiML with (its PUBLIC_URL; by default
    this process's setting, which reads the same .env). `server_url` is where it listens.
    While running, `press(keys)`, `say(text)` and `hang_up()` act for the caller.
    """

    def __init__(
        self,
        *,
        server_url: str = DEFAULT_SERVER_URL,
        public_url: str | None = None,
        to_number: str,
        from_number: str = DEFAULT_FROM_NUMBER,
        duration_s: float = DEFAULT_DURATION_S,
        actions: list[Action] | None = None,
        rest_host: str = "127.0.0.1",
        rest_port: int = 8010,
        rest: TwilioRestEmulator | None = None,
        record_path: Path | None = None,
        call_recording_path: Path | None = None,
        watch_database: bool = False,
        verbose: bool = False,
        log: LogCallback = print,
        ssl_context: ssl.SSLContext | None = None,
        dial_outcome: str = "accept",
    ) -> None:
        self.server_url = server_url.rstrip("/")
        # What the person a transfer rings does (calls.simulator.dial): accept, reject, …
        self.dial_outcome = dial_outcome_normalise(dial_outcome)
        self.ssl_context = ssl_context  # verifies an https server (default: the system's CAs)
        self.public_url = (public_url or settings.PUBLIC_URL).rstrip("/")
        self.duration_s = duration_s
        self.actions = list(actions or [])
        self.record_path = record_path
        self.call_recording_path = call_recording_path
        self.watch_database = watch_database
        self.verbose = verbose
        self._seen_rows = {"transcript": 0, "event": 0}
        self._log = log
        self.account_sid = settings.TWILIO_ACCOUNT_SID
        self.call_sid = "CA" + secrets.token_hex(16)
        self.result = CallResult(self.call_sid, to_number, from_number)
        # A shared emulator (several calls at once) is started, stopped and routed to each
        # call's hooks by its owner (`share_rest_emulator`).
        self._owns_rest = rest is None
        self.rest = rest or TwilioRestEmulator(
            host=rest_host,
            port=rest_port,
            on_request=self._rest_request,
            auth_token=settings.TWILIO_AUTH_TOKEN,
            on_hangup=self._rest_hangup,
            on_twiml=self._rest_twiml,
        )
        # Recording status callbacks go to the server like every webhook.
        self.rest.post_callback = lambda url, params: self._webhook(url, params, absolute=True)
        self.stream: TwilioStreamClient | None = None
        self._instructions: StreamInstructions | None = None
        self._old_streams: list[TwilioStreamClient] = []
        self._stream_ended_at = 0.0
        self._switching: asyncio.Task | None = None
        self._last_stream_left = False
        self._http: aiohttp.ClientSession | None = None
        self._started_at = 0.0
        self._ended = asyncio.Event()
        self._status_sequence = 0
        self._agent_speaking = False
        self._turn_start = 0  # bytes played when the agent's current turn began
        self._turn_marks: list[str] = []
        self._last_agent_audio = 0.0
        self._last_caller_audio_end = 0.0
        # The caller's script, status callbacks, stream changes: a failure is the call's error.
        self._tasks = TaskSet(
            f"Simulated call {self.call_sid}",
            failure_level=logging.DEBUG,
            on_failure=lambda error: self._error(f"simulator task failed: {error!r}"),
        )

    # -- the caller's hands --------------------------------------------------------------------

    def press(self, keys: str) -> None:
        self._tasks.spawn(self._press(keys), "simulated-call-press")

    def say(self, text: str) -> None:
        self._tasks.spawn(self._say(text), "simulated-call-say")

    def hang_up(self, detail: str = "the caller hung up") -> None:
        self._end("caller", detail)

    # -- the call ------------------------------------------------------------------------------

    async def run(self) -> CallResult:
        loop = asyncio.get_running_loop()
        self._started_at = loop.time()
        if self._owns_rest:
            await rest_emulator_start(self.rest)
        self._warn_if_server_talks_elsewhere()
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S),
            connector=aiohttp.TCPConnector(ssl=self.ssl_context or True),
        ) as self._http:
            try:
                await self._call()
            finally:
                await self._tasks.close()
                if self.stream is not None:
                    await self._close_stream()
                # The emulator's last callbacks (a recording's `completed`, sent as the call
                # is hung up) go through this session: it stays open until they are answered.
                if self._owns_rest:
                    await self.rest.stop()
        self.result.duration_s = loop.time() - self._started_at
        return self.result

    async def _call(self) -> None:
        self.rest.register_call(
            self.call_sid,
            "ringing",
            account_sid=self.account_sid,
            to=self.result.to_number,
            from_=self.result.from_number,
        )
        self.log(
            f"calling {self.result.to_number} from {self.result.from_number} ({self.call_sid})"
        )
        answer = await self._webhook(reverse("twilio-voice-incoming"), self._call_params("ringing"))
        try:
            instructions = parse_answer(answer)
        except NoAgent as error:
            self._end("refused", f"no agent for that number: {error}")
            await self._post_status("completed", duration_s=0)
            raise NoAgent(
                f"No agent for {self.result.to_number}: {error}. Give an agent that number (or"
                " make one the default) in the admin, or run `manage.py seed_demo`."
            ) from None
        self.rest.set_status(self.call_sid, "in-progress")
        await self._post_status("in-progress")
        await self._open_stream(instructions)
        for action in self.actions:
            self.log(f"script: {action.describe()}")
        self._tasks.spawn(self._hang_up_after(self.duration_s), "simulated-call-duration")
        self._tasks.spawn(self._run_script(), "simulated-call-script")
        watcher = (
            self._tasks.spawn(self._watch_database(), "simulated-call-database")
            if self.watch_database
            else None
        )
        await self._ended.wait()
        if self._switching is not None and self._switching is not asyncio.current_task():
            await asyncio.gather(self._switching, return_exceptions=True)
        await self._close_stream()
        await self._after_stream(self._instructions or instructions)
        if watcher is not None and not watcher.done():
            watcher.cancel()
            await asyncio.sleep(DATABASE_POLL_S)  # the server's last writes are queued
            await self._read_database()

    async def _open_stream(self, instructions: StreamInstructions) -> None:
        url = self._internal(instructions.url, websocket=True)
        signature = security.compute_signature(instructions.url, {})
        self.stream = TwilioStreamClient(
            url,
            call_sid=self.call_sid,
            account_sid=self.account_sid,
            custom_parameters=instructions.parameters,
            headers={security.SIGNATURE_HEADER: signature, **self._proxy_headers()},
            audio_tap=self.rest.audio_tap_for(self.call_sid),  # what a recording captures
            ssl_context=self.ssl_context,
        )
        stream = self.stream
        # Events of a stream the call has left behind are not this call's any more.
        stream.on_event = lambda kind, detail: (
            self._stream_event(kind, detail) if stream is self.stream else None
        )
        self._instructions = instructions
        try:
            await self.stream.start()
        except InvalidStatus as error:
            status = error.response.status_code
            self.stream = None
            raise SimulationError(
                f"the server refused the media stream at {url} (HTTP {status})"
                + (": its upgrade signature check failed" if status == 403 else "")
            ) from None
        except (OSError, InvalidHandshake) as error:
            self.stream = None
            raise ServerUnreachable(
                f"cannot open the media stream at {url}: {error}. Is `make run` running?"
            ) from None
        self.log(f"stream {self.stream.stream_sid} open → {url}")
        if self._old_streams:
            gap_s = asyncio.get_running_loop().time() - self._stream_ended_at
            self.result.stream_gaps_s.append(gap_s)
            self.log(f"the call moved to a new stream: {gap_s * 1000:.0f} ms with no stream")
        if instructions.status_callback:
            await self._post_stream_status(instructions, "stream-started")

    # -- a call moving to a new stream ---------------------------------------------------------

    async def _follow_connect_action(self) -> None:
        """The server closed the stream: request <Connect action> and run what it answers."""
        self._stream_ended_at = asyncio.get_running_loop().time()
        instructions = self._instructions
        await self._leave_stream()
        if instructions is None or not instructions.connect_action:
            self._end("stream_closed", "the server closed the stream")
            return
        try:
            document = await self._webhook(
                instructions.connect_action, self._call_params("in-progress"), absolute=True
            )
            verbs = [child.tag for child in ET.fromstring(document)]
        except (SimulationError, ET.ParseError) as error:
            self._error(f"<Connect action> failed: {error}")
            self._end("stream_closed", "the server closed the stream; its action failed")
            return
        if "Connect" in verbs and not self._ended.is_set():
            self.log("<Connect action> answered a new <Connect><Stream>")
            await self._open_stream(parse_answer(document))
            return
        self._end("stream_closed", f"the server closed the stream; the action answered {verbs}")

    async def _move_to_stream(self, instructions: StreamInstructions) -> None:
        """A REST update's <Connect><Stream>: Twilio stops the old stream, opens the new one."""
        self._stream_ended_at = asyncio.get_running_loop().time()
        await self._leave_stream()
        if not self._ended.is_set():
            await self._open_stream(instructions)

    async def _follow_dial(self, twiml: str, dialled: str) -> None:
        """A REST update's `<Dial>`: Twilio stops the stream, rings the person, runs their
        whisper and then the `<Dial action>`, and the caller's side follows its answer."""
        self._stream_ended_at = asyncio.get_running_loop().time()
        await self._leave_stream()
        try:
            run = await dial_run(
                twiml,
                post=lambda url, params: self._webhook(url, params, absolute=True),
                call_sid=self.call_sid,
                account_sid=self.account_sid,
                caller_number=self.result.from_number,
                outcome_for=lambda number: self.dial_outcome,
            )
        except (SimulationError, ET.ParseError) as error:
            self._error(f"the transfer's <Dial> failed: {error}")
            self._end("transfer", f"the transfer to {dialled} failed")
            return
        self._log_dial(run)
        answer = run.action_twiml if run is not None else None
        if answer is not None and self._connects_stream(answer) and not self._ended.is_set():
            self.log("the <Dial action> answered <Connect><Stream>: back with the agent")
            await self._open_stream(parse_answer(answer))
            return
        if run is not None and run.bridged:
            self.result.transferred_to = dialled
            self._end("transfer", f"transferred to {dialled} (they took the call)")
        else:
            status = run.dial_status if run is not None else "unknown"
            self._end("transfer", f"the transfer to {dialled} ended {status}; the call is over")

    def _log_dial(self, run: DialRun | None) -> None:
        if run is None:
            return
        self.log(f"ringing {run.number}: the person's outcome is {run.outcome}")
        if run.whisper_said:
            self.log(f"whisper to {run.number}: {' '.join(run.whisper_said)}")
        if run.gather_answer is not None:
            self.log(f"they pressed {run.outcome.removeprefix('press:') or 'nothing'}")
        bridged = "connected to the caller" if run.bridged else "not connected"
        self.log(f"dial ended: DialCallStatus={run.dial_status}, {bridged}")

    @staticmethod
    def _dial_reports_back(twiml: str) -> bool:
        """A `<Dial action>`: Twilio tells the server how the dial ended, and follows it."""
        try:
            dial = ET.fromstring(twiml).find(".//Dial")
        except ET.ParseError:
            return False
        return dial is not None and bool(dial.get("action"))

    async def _leave_stream(self) -> None:
        """Stop the current stream (a `stop`, if it is still open) and keep what it carried."""
        stream, instructions = self.stream, self._instructions
        if stream is None:
            return
        try:
            if not stream.closed:
                await stream.stop()
            await stream.aclose()
        except Exception as error:
            self._error(f"media stream failed: {error!r}")
        self._old_streams.append(stream)
        self.result.streams.append(stream.summary())
        if instructions is not None and instructions.status_callback:
            # Sent beside the action request, not before it: Twilio does not wait for it.
            self._tasks.spawn(
                self._post_stream_status(instructions, "stream-stopped", stream=stream),
                "simulated-call-stream-stopped",
            )

    async def _after_stream(self, instructions: StreamInstructions) -> None:
        """What Twilio does once the stream is over, up to the call's last status callback."""
        if instructions.status_callback and not self._last_stream_left:
            await self._post_stream_status(instructions, "stream-stopped")
        result = self.result
        if result.end_reason == "transfer":
            self.log(f"the call is now with {result.transferred_to}; the simulated caller leaves")
        if self.rest.calls.get(self.call_sid) not in ("completed", None):
            self.rest.set_status(self.call_sid, "completed")
        await self._recordings_finish()
        await self._post_status("completed", duration_s=self._elapsed())

    async def _recordings_finish(self) -> None:
        """The call is over: Twilio finishes its recordings and reports them."""
        try:
            recordings = await self.rest.recordings_finish(self.call_sid)
        except SimulationError as error:
            self._error(f"recording status callback failed: {error}")
            return
        for recording in recordings:
            self.log(f"recording {recording.sid} {recording.status} ({recording.duration_s} s)")
        if self.call_recording_path is None:
            return
        done = [r for r in self.rest.recordings.values() if r.call_sid == self.call_sid and r.wav]
        if not done:
            self._error("the server did not record this call (is its agent's “Record calls” on?)")
            return
        self.call_recording_path.write_bytes(done[0].wav)
        self.result.call_recording = self.call_recording_path
        self.log(f"call recording written to {self.call_recording_path} (caller left, agent right)")

    # -- HTTP towards the server ---------------------------------------------------------------

    async def _webhook(
        self, url_or_path: str, params: dict[str, str], *, absolute: bool = False
    ) -> str:
        """POST like Twilio; return the body. Signed over the public URL, sent to the server."""
        public = url_or_path if absolute else self.public_url + url_or_path
        target = self._internal(public)
        headers = {
            security.SIGNATURE_HEADER: security.compute_signature(public, params),
            **self._proxy_headers(),
        }
        try:
            async with self._http.post(target, data=params, headers=headers) as response:
                body = await response.text()
        except aiohttp.ClientConnectorError as error:
            raise ServerUnreachable(
                f"cannot reach the server at {self.server_url}"
                f" ({error.os_error.strerror or error}). Is `make run` running?"
            ) from None
        except (TimeoutError, aiohttp.ClientError) as error:
            raise ServerUnreachable(
                f"the server at {self.server_url} did not answer {target}: {error!r}"
            ) from None
        if response.status == 403:
            raise BadSignatureConfiguration(
                f"the server refused the signature on {public} (HTTP 403): bad signature"
                " configuration: TWILIO_AUTH_TOKEN/PUBLIC_URL differ between simulator and"
                f" server. The simulator signs with PUBLIC_URL={self.public_url}; start both"
                " with the same .env."
            )
        if response.status >= 300:
            raise SimulationError(
                f"the server answered {target} with HTTP {response.status}: {body[:300]}"
            )
        return body

    async def _post_status(self, status: str, *, duration_s: float | None = None) -> None:
        params = self._call_params(status)
        params["SequenceNumber"] = str(self._status_sequence)
        params["Timestamp"] = format_datetime(datetime.now(UTC), usegmt=True)
        params["CallbackSource"] = "call-progress-events"
        if duration_s is not None:
            params["CallDuration"] = str(math.ceil(duration_s))
            params["Duration"] = str(math.ceil(duration_s / 60))
        self._status_sequence += 1
        await self._callback(reverse("twilio-voice-status"), params, f"call status {status}")

    async def _post_stream_status(
        self,
        instructions: StreamInstructions,
        event: str,
        *,
        stream: TwilioStreamClient | None = None,
    ) -> None:
        stream = stream or self.stream
        params = {
            "AccountSid": self.account_sid,
            "CallSid": self.call_sid,
            "StreamSid": stream.stream_sid if stream else "",
            "StreamName": stream.stream_sid if stream else "",
            "StreamEvent": event,
            "Timestamp": datetime.now(UTC).isoformat(),
        }
        await self._callback(instructions.status_callback, params, event, absolute=True)

    async def _callback(self, url: str, params: dict, what: str, *, absolute: bool = False) -> None:
        # Twilio does not retry status callbacks and nothing depends on their answer.
        try:
            await self._webhook(url, params, absolute=absolute)
        except SimulationError as error:
            self._error(f"{what} callback failed: {error}")

    def _call_params(self, status: str) -> dict[str, str]:
        result = self.result
        return {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": self.call_sid,
            "CallStatus": status,
            "Called": result.to_number,
            "Caller": result.from_number,
            "Direction": "inbound",
            "From": result.from_number,
            "To": result.to_number,
        }

    def _internal(self, public: str, *, websocket: bool = False) -> str:
        """The server's own address for a public URL (path and query kept)."""
        parts = urlsplit(public)
        server = urlsplit(self.server_url)
        scheme = server.scheme
        if websocket:
            scheme = "wss" if scheme == "https" else "ws"
        query = f"?{parts.query}" if parts.query else ""
        return f"{scheme}://{server.netloc}{parts.path}{query}"

    def _proxy_headers(self) -> dict[str, str]:
        # What a TLS-terminating proxy in front of the server adds.
        return {"X-Forwarded-Proto": "https"} if self.public_url.startswith("https:") else {}

    def _warn_if_server_talks_elsewhere(self) -> None:
        expected = settings.TWILIO_API_BASE_URL
        if expected.rstrip("/") != self.rest.base_url:
            self.log(
                f"warning: TWILIO_API_BASE_URL is {expected or 'Twilio itself'}, not this"
                f" simulator ({self.rest.base_url}); hangups and transfers will not reach it"
            )

    # -- REST from the server ------------------------------------------------------------------

    def _rest_request(self, request: Any) -> None:
        if request.call_sid is not None and request.call_sid != self.call_sid:
            return
        what = (
            "hangup"
            if request.is_hangup
            else f"TwiML update (Dial {', '.join(request.dial_numbers) or 'nothing'})"
            if request.twiml is not None
            else f"{request.method} {request.path}"
        )
        line = f"{what} → {request.status}"
        self.result.rest_requests.append(line)
        self.log(f"REST {line}")
        if request.status == 401:
            self._error(
                f"REST {what} refused (401): the server's TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN"
                " differ from the simulator's; start both with the same .env"
            )
        elif request.status >= 400 and not (request.is_hangup and request.status == 404):
            self._error(f"REST {what} answered {request.status}")

    def _rest_hangup(self, call_sid: str) -> None:
        if call_sid == self.call_sid:
            self._end("hangup", "the server hung up through the REST API")

    def _rest_twiml(self, call_sid: str, twiml: str) -> None:
        if call_sid != self.call_sid:
            return
        try:
            dialled = ", ".join(twiml_dial_numbers(twiml))
        except ET.ParseError:
            dialled = ""
        if dialled and self._dial_reports_back(twiml):
            self.log(f"REST TwiML update with <Dial> {dialled}: the stream ends, Twilio rings")
            self._switch(self._follow_dial(twiml, dialled))
        elif dialled:
            self.result.transferred_to = dialled
            self._end("transfer", f"transferred to {dialled} (<Dial> TwiML update)")
        elif self._connects_stream(twiml):
            self.log("REST TwiML update with <Connect><Stream>: the call moves to a new stream")
            self._switch(self._move_to_stream(parse_answer(twiml)))
        else:
            self._end("transfer", f"the server replaced the call's TwiML: {twiml[:200]}")

    # -- the media stream ----------------------------------------------------------------------

    def _stream_event(self, kind: str, detail: dict[str, Any]) -> None:
        if kind == "received":
            self._server_message(detail)
        elif kind == "mark_echo":
            self._mark_echoed(detail)
        elif kind == "clear":
            # Emitted before the echoes it causes: what is still pending is echoed unplayed.
            dropped_s = detail["dropped_bytes"] / BYTES_PER_MS / 1000
            pending = self._pending_marks()
            self.log(
                f"clear: {dropped_s:.1f} s of agent audio dropped, {pending} pending mark(s)"
                f" echoed unplayed; the caller heard {self._turn_heard_s():.1f} s of this turn"
            )
            self._agent_speaking = False
        elif kind == "sent" and detail.get("event") in ("start", "stop"):
            self.log(f"{detail['event']} sent")
        elif kind == "error":
            self._error(f"Twilio would reject a server message: {detail['reason']}")
        elif kind == "closed":
            by = "the server" if detail["by_server"] else "the caller's side"
            self.log(f"stream closed by {by} (code {detail['code']})")
            if detail["by_server"]:
                why = CLOSE_CODES.get(detail["code"], "")
                self.log(f"the server closed the stream (code {detail['code']}{why})")
                self._switch(self._follow_connect_action())

    def _server_message(self, message: dict[str, Any]) -> None:
        if message["event"] == "media":
            self._last_agent_audio = asyncio.get_running_loop().time()
            if not self._agent_speaking:
                self._agent_speaking = True
                self._turn_start = len(self.stream.played) if self.stream else 0
                self._turn_marks = []
                self.log("agent speaking ▶")
        elif message["event"] == "mark" and self.verbose:
            self.log(f"mark {message['mark']['name']} received")

    def _mark_echoed(self, echo: dict[str, Any]) -> None:
        if not echo["played"]:
            self.result.marks_after_clear += 1
            return
        self._turn_marks.append(echo["name"])
        if self.verbose:
            heard_s = echo["heard_bytes"] / BYTES_PER_MS / 1000
            self.log(f"mark {echo['name']} echoed: its {heard_s:.1f} s played")
        if self._agent_speaking and self.stream.buffered_bytes == 0 and not self._pending_marks():
            self._agent_speaking = False
            marks = self._turn_marks
            names = marks[0] if len(marks) == 1 else f"{marks[0]}…{marks[-1]}"
            self.log(
                f"agent done ■ the caller heard {self._turn_heard_s():.1f} s;"
                f" {len(marks)} mark(s) echoed ({names})"
            )

    def _pending_marks(self) -> int:
        stream = self.stream
        return stream.marks_received - len(stream.marks_echoed) if stream else 0

    def _turn_heard_s(self) -> float:
        played = len(self.stream.played) if self.stream else 0
        return (played - self._turn_start) / BYTES_PER_MS / 1000

    def _switch(self, coroutine: Any) -> None:
        """Run a change of stream, one at a time."""
        if self._switching is not None and not self._switching.done():
            coroutine.close()
            return
        self._switching = self._tasks.spawn(coroutine, "simulated-call-switch")

    @staticmethod
    def _connects_stream(twiml: str) -> bool:
        try:
            return ET.fromstring(twiml).find("./Connect/Stream") is not None
        except ET.ParseError:
            return False

    async def _close_stream(self) -> None:
        stream = self.stream
        if stream is None or self.result.stream:
            return
        # Left already if the server closed it and the action ended the call.
        self._last_stream_left = stream in self._old_streams
        if not self._last_stream_left:
            try:
                if not stream.closed:
                    await stream.stop()
                await stream.aclose()
            except Exception as error:  # the summary must still come out
                self._error(f"media stream failed: {error!r}")
            self._old_streams.append(stream)
            self.result.streams.append(stream.summary())
        self.result.stream = self.result.streams[-1]
        # What the caller heard, across every stream the call had.
        self.result.heard_ulaw = b"".join(bytes(old.played) for old in self._old_streams)
        if self.record_path is not None:
            self.record_path.write_bytes(ulaw_to_wav(self.result.heard_ulaw))
            self.result.recording = self.record_path

    # -- the caller's script -------------------------------------------------------------------

    async def _run_script(self) -> None:
        for action in self.actions:
            if action.at_s is not None:
                self._tasks.spawn(self._at(action.at_s, action), "simulated-call-action")
        for action in self.actions:
            if action.at_s is None:
                await self._wait_quiet()
                await self._perform(action)
                await self._wait_caller_done()

    async def _at(self, at_s: float, action: Action) -> None:
        await asyncio.sleep(max(0.0, at_s - self.stream.stream_ms() / 1000))
        await self._perform(action)

    async def _perform(self, action: Action) -> None:
        if action.kind == "dtmf":
            await self._press(action.value)
        elif action.kind == "say":
            await self._say(action.value)
        else:
            ulaw = await asyncio.to_thread(wav_to_ulaw, action.value)
            self._queue_caller_audio(ulaw, f"plays {action.value}")

    async def _press(self, keys: str) -> None:
        for index, key in enumerate(keys):
            if index:
                await asyncio.sleep(DTMF_GAP_S)
            if self.stream is None or self.stream.closed:
                return
            self.stream.send_dtmf(key)
            self.result.dtmf_sent += key
            self.log(f"caller presses {key}")

    async def _say(self, text: str) -> None:
        from agents import speech  # espeak-ng loads on first use, not for every command

        ulaw = await speech.speak(text)
        self._queue_caller_audio(ulaw, f"says “{text}”")

    def _queue_caller_audio(self, ulaw: bytes, what: str) -> None:
        if self.stream is None or self.stream.closed:
            return
        self.stream.queue_caller_audio(ulaw)
        self.log(f"caller {what} ({duration_ms(ulaw) / 1000:.1f} s)")

    async def _wait_quiet(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            quiet_since = max(self._last_agent_audio, self._last_caller_audio_end, self._started_at)
            if (
                not self.stream.closed
                and self.stream.buffered_bytes == 0
                and self.stream.caller_audio_pending == 0
                and loop.time() - quiet_since >= QUIET_S
                and self.stream.stream_ms() >= QUIET_S * 1000
            ):
                return
            await asyncio.sleep(0.05)

    async def _wait_caller_done(self) -> None:
        stream = self.stream
        pending_s = stream.caller_audio_pending / BYTES_PER_MS / 1000
        await stream.wait_for(
            lambda: stream.caller_audio_pending == 0,
            timeout=pending_s + 5,
            what="caller audio sent",
        )
        self._last_caller_audio_end = asyncio.get_running_loop().time()

    async def _hang_up_after(self, duration_s: float) -> None:
        await asyncio.sleep(duration_s)
        self._end("duration", f"the caller hung up after --duration {duration_s:g}s")

    # -- the server's view, read from its database (development convenience) -----------------

    async def _watch_database(self) -> None:
        while True:
            if not await self._read_database():
                return
            await asyncio.sleep(DATABASE_POLL_S)

    async def _read_database(self) -> bool:
        """Log the server's new transcript lines and call events; False if it cannot."""
        from asgiref.sync import sync_to_async

        try:
            lines = await sync_to_async(database_lines_new)(self.call_sid, self._seen_rows)
        except Exception as error:  # another database than the server's; not worth failing
            self.log(f"(no transcript: cannot read the server's database: {error})")
            self.watch_database = False
            return False
        for line in lines:
            self.log(line)
        return True

    # -- helpers -------------------------------------------------------------------------------

    def log(self, text: str) -> None:
        self._log(f"{self._elapsed():6.2f}s  {text}")

    def _error(self, text: str) -> None:
        self.result.errors.append(text)
        self.log(f"ERROR {text}")

    def _elapsed(self) -> float:
        return asyncio.get_running_loop().time() - self._started_at

    def _end(self, reason: EndReason, detail: str) -> None:
        if self._ended.is_set():
            return
        self.result.end_reason, self.result.end_detail = reason, detail
        self.log(f"call ends: {detail}")
        self._ended.set()



def database_lines_new(call_sid: str, seen: dict[str, int]) -> list[str]:
    """Transcript lines and call events newer than `seen` (last primary keys, updated)."""
    from django.db import close_old_connections

    from calls.models import CallEvent, TranscriptEntry

    close_old_connections()
    lines = []
    entries = TranscriptEntry.objects.filter(call__sid=call_sid, pk__gt=seen["transcript"])
    for entry in entries.order_by("pk"):
        seen["transcript"] = entry.pk
        cut = " (interrupted)" if entry.interrupted else ""
        lines.append(f"transcript {entry.speaker}: {entry.text}{cut}")
    events = CallEvent.objects.filter(call__sid=call_sid, pk__gt=seen["event"])
    for event in events.order_by("pk"):
        seen["event"] = event.pk
        data = f" {event.data}" if event.data else ""
        lines.append(f"server: {event.kind} ({event.actor}){data}")
    return lines
