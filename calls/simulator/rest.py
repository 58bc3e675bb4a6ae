"""A local stand-in for Twilio's REST API for calls.

Point a twilio client at it with ``client.api.base_url = emulator.base_url``. It answers
the call requests the project makes (create, fetch, hang up, replace TwiML) in Twilio's
shapes, including its JSON errors, records every request for assertions, and calls hooks
so a simulated call can react (a hangup ends the media stream, a TwiML update hands it off).

It also emulates the Recordings resource (`EmulatedRecording`): a recording created on a call
captures what the call's stream clients exchanged (`audio_tap_for`) as a dual-channel WAV,
reports its status to the RecordingStatusCallback (signed, through `post_callback`), serves
its media with basic auth and Range requests, and can be deleted.

A fetch (GET) returns the Call resource as Twilio does: its status, and once it has ended
its end time and duration (a string of whole seconds). A TwiML update is parsed: its
``<Dial>`` numbers and its ``<Connect><Stream>`` (url and parameters, e.g. a resume's fresh
stream token) are kept on the request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import logging
import re
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from aiohttp import web

from callmedia.tasks import TaskSet

from .recording import DualChannelRecorder

API_VERSION = "2010-04-01"
TERMINAL_STATUSES = frozenset({"completed", "canceled", "failed", "busy", "no-answer"})
# How long `stop` lets running hooks finish before it cancels them.
HOOKS_STOP_TIMEOUT_S = 5.0

_CALLS_PATH = re.compile(rf"^/{API_VERSION}/Accounts/(?P<account>[^/]+)/Calls\.json$")
_CALL_PATH = re.compile(
    rf"^/{API_VERSION}/Accounts/(?P<account>[^/]+)/Calls/(?P<call>[^/]+)\.json$"
)

_CALL_RECORDINGS_PATH = re.compile(
    rf"^/{API_VERSION}/Accounts/(?P<account>[^/]+)/Calls/(?P<call>[^/]+)/Recordings\.json$"
)
_RECORDING_PATH = re.compile(
    rf"^/{API_VERSION}/Accounts/(?P<account>[^/]+)/Recordings/(?P<sid>RE[0-9a-f]+)"
    r"(?P<ext>\.json|\.wav)?$"
)
_RANGE = re.compile(r"^bytes=(?P<first>\d*)-(?P<last>\d*)$")

Hook = Callable[..., Awaitable[None] | None]
# POST a signed webhook to an absolute public URL, as Twilio does; returns the body.
CallbackPoster = Callable[[str, dict[str, str]], Awaitable[str]]


@dataclass
class EmulatedRecording:
    """One recording of a call, as the emulator's Recordings resource holds it."""

    sid: str
    account_sid: str
    call_sid: str
    form: dict[str, str]
    events: list[str]
    started_at: float  # loop time
    start_time: str  # RFC 2822, as Twilio reports it
    status: str = "in-progress"
    wav: bytes = b""
    duration_s: int = -1
    callbacks: list[dict[str, str]] = field(default_factory=list)


@dataclass
class RestRequest:
    """One request as the emulator received it, and how it answered."""

    method: str
    path: str
    account_sid: str | None
    call_sid: str | None
    form: dict[str, str]
    time: float
    auth: tuple[str, str] | None
    status: int = 0
    # Every value of each field, for the repeated ones (RecordingStatusCallbackEvent).
    form_lists: dict[str, list[str]] = field(default_factory=dict)
    dial_numbers: list[str] = field(default_factory=list)
    # A TwiML update's <Connect><Stream>: its url and its <Parameter>s (None: none in it).
    stream: ConnectStream | None = None

    @property
    def twiml(self) -> str | None:
        return self.form.get("Twiml")

    @property
    def is_hangup(self) -> bool:
        return self.form.get("Status") in ("completed", "canceled")


@dataclass(frozen=True)
class ConnectStream:
    """The `<Connect><Stream>` of a TwiML document: where Twilio opens the stream, with what."""

    url: str
    parameters: dict[str, str]
    action: str | None = None


def twiml_connect_stream(twiml: str) -> ConnectStream | None:
    """The first ``<Connect><Stream>`` in a TwiML document, or None."""
    root = ET.fromstring(twiml)
    for connect in root.iter("Connect"):
        stream = connect.find("Stream")
        if stream is not None:
            parameters = {
                parameter.get("name", ""): parameter.get("value", "")
                for parameter in stream.iter("Parameter")
            }
            return ConnectStream(
                url=stream.get("url", ""), parameters=parameters, action=connect.get("action")
            )
    return None


@dataclass
class _Failure:
    match: str | None
    status: int
    code: int
    message: str


def twiml_dial_numbers(twiml: str) -> list[str]:
    """Return what each ``<Dial>`` in a TwiML document dials: its text or its nouns' text."""
    root = ET.fromstring(twiml)
    numbers = []
    for dial in root.iter("Dial"):
        nouns = [noun for noun in dial if noun.tag in ("Number", "Sip", "Client", "Conference")]
        if nouns:
            numbers.extend((noun.text or "").strip() for noun in nouns)
        elif (dial.text or "").strip():
            numbers.append(dial.text.strip())
    return numbers


def twilio_error(status: int, code: int, message: str) -> web.Response:
    """A JSON error shaped like Twilio's, which twilio-python turns into TwilioRestException."""
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return web.json_response(body, status=status)


def _rfc2822_now() -> str:
    return format_datetime(datetime.now(UTC), usegmt=True)


def _ranged(body: bytes, range_header: str | None, content_type: str) -> web.Response:
    """Serve `body` honouring one `Range: bytes=…` as Twilio's media host does (206/416)."""
    total = len(body)
    headers = {"Accept-Ranges": "bytes"}
    match = _RANGE.match(range_header.strip()) if range_header else None
    if match is None or not (match["first"] or match["last"]):
        return web.Response(body=body, content_type=content_type, headers=headers)
    if match["first"]:
        first = int(match["first"])
        last = min(int(match["last"]), total - 1) if match["last"] else total - 1
    else:  # the last N bytes
        first, last = max(0, total - int(match["last"])), total - 1
    if first >= total or first > last:
        headers["Content-Range"] = f"bytes */{total}"
        return web.Response(status=416, headers=headers)
    headers["Content-Range"] = f"bytes {first}-{last}/{total}"
    return web.Response(
        status=206, body=body[first : last + 1], content_type=content_type, headers=headers
    )


def _basic_auth(header: str | None) -> tuple[str, str] | None:
    if not header or not header.startswith("Basic "):
        return None
    try:
        decoded = base64.b64decode(header[len("Basic ") :], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep and user else None


class TwilioRestEmulator:
    """Twilio's Calls REST resource on 127.0.0.1, on a free port.

    ``calls`` maps each known CallSid to its status. With ``auto_register`` (the default) an
    update to an unknown CallSid first registers it as in progress, as calls reach our server
    from a real Twilio without being created through this emulator. ``auth_token``, when given,
    must match the basic-auth password; basic auth itself is always required.

    Hooks (constructor arguments or attributes; plain functions or coroutine functions):
    ``on_hangup(call_sid)``, ``on_twiml(call_sid, twiml)``, ``on_create(params)`` where
    ``params`` is the create request's form (To, From, Url or Twiml, StatusCallback, ...) plus
    the new ``sid``. Coroutines run as tasks after the response, as Twilio answers the REST
    request before the call reacts; their errors are re-raised by ``stop()``.
    """

    def __init__(
        self,
        *,
        auto_register: bool = True,
        auth_token: str | None = None,
        on_hangup: Hook | None = None,
        on_twiml: Hook | None = None,
        on_create: Hook | None = None,
        on_request: Callable[[RestRequest], object] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """`port` 0 picks a free one; `on_request` sees each request once it is answered."""
        self.host, self.port = host, port
        self.on_request = on_request
        # Seconds before each answer, as a slow Twilio takes (tests of timeouts and races).
        self.response_delay_s = 0.0
        # Seconds between a request taking effect and its answer arriving: what it set off
        # (a busy number's <Dial action>, a status callback) can reach the server first.
        self.answer_delay_s = 0.0
        self.auto_register = auto_register
        self.auth_token = auth_token
        self.on_hangup = on_hangup
        self.on_twiml = on_twiml
        self.on_create = on_create
        self.calls: dict[str, str] = {}
        self.requests: list[RestRequest] = []
        self.hook_errors: list[BaseException] = []
        self._details: dict[str, dict[str, Any]] = {}
        self._failures: list[_Failure] = []
        # Coroutine hooks run here; `stop` re-raises what they raised.
        self._hooks = TaskSet(
            "Twilio REST emulator", failure_level=logging.DEBUG, on_failure=self.hook_errors.append
        )
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._new_request: asyncio.Condition | None = None
        self.recordings: dict[str, EmulatedRecording] = {}
        self.deleted_recordings: set[str] = set()
        self.recorders: dict[str, DualChannelRecorder] = {}
        # Where recording status callbacks go; without it they are only kept on the recording.
        self.post_callback: CallbackPoster | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.host, self.port).start()
        except OSError:
            await self._runner.cleanup()
            self._runner = None
            raise
        self._port = self._runner.addresses[0][1]
        self._new_request = asyncio.Condition()

    async def stop(self) -> None:
        """Stop serving, wait for running hooks, and re-raise the first error a hook raised."""
        await self._hooks.wait(HOOKS_STOP_TIMEOUT_S)
        self._hooks.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.hook_errors:
            raise self.hook_errors[0]

    async def __aenter__(self) -> TwilioRestEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("TwilioRestEmulator is not started")
        return f"http://{self.host}:{self._port}"

    # -- state and assertions ----------------------------------------------------------------

    def register_call(
        self,
        sid: str,
        status: str = "in-progress",
        *,
        account_sid: str = "",
        to: str = "",
        from_: str = "",
        direction: str = "inbound",
    ) -> None:
        self.calls[sid] = status
        self._details[sid] = {
            "account_sid": account_sid,
            "to": to,
            "from": from_,
            "direction": direction,
            "date_created": _rfc2822_now(),
        }
        if status != "queued":
            self.set_status(sid, status)

    def set_status(self, sid: str, status: str, *, duration: int | None = None) -> None:
        """Move a call along (e.g. a created call answers: queued -> in-progress).

        As Twilio does, an answered call gets a start time, and an ended one an end time and
        a duration in whole seconds (`duration` overrides the one measured here).
        """
        if sid not in self.calls:
            raise KeyError(sid)
        self.calls[sid] = status
        details = self._details[sid]
        now = datetime.now(UTC)
        if status == "in-progress" and details.get("answered") is None:
            details["answered"] = now
        if status in TERMINAL_STATUSES:
            details["end_time"] = details.get("end_time") or format_datetime(now, usegmt=True)
            answered = details.get("answered")
            measured = int((now - answered).total_seconds()) if answered else 0
            details["duration"] = duration if duration is not None else measured

    def connect_streams(self, call_sid: str | None = None) -> list[RestRequest]:
        """TwiML updates that gave a call a new `<Connect><Stream>`."""
        return [r for r in self._updates(call_sid) if r.stream is not None]

    def fail_next(
        self,
        match: str | None = None,
        *,
        status: int = 500,
        code: int = 20500,
        message: str = "Internal Server Error",
    ) -> None:
        """Make the next request whose ``"METHOD /path"`` contains ``match`` (any request when
        None) fail with a Twilio JSON error. Each call arms one failure."""
        self._failures.append(_Failure(match, status, code, message))

    def hangups(self, call_sid: str | None = None) -> list[RestRequest]:
        return [r for r in self._updates(call_sid) if r.is_hangup]

    def twiml_updates(self, call_sid: str | None = None) -> list[RestRequest]:
        return [r for r in self._updates(call_sid) if r.twiml is not None]

    def creates(self) -> list[RestRequest]:
        return [r for r in self.requests if r.method == "POST" and r.call_sid is None]

    async def wait_for_request(
        self,
        predicate: Callable[[RestRequest], object],
        timeout: float = 5.0,
    ) -> RestRequest:
        """Return the first request (already received or still to come) matching ``predicate``."""
        if self._new_request is None:
            raise RuntimeError("TwilioRestEmulator is not started")

        def find() -> RestRequest | None:
            return next((r for r in self.requests if predicate(r)), None)

        try:
            async with asyncio.timeout(timeout), self._new_request:
                await self._new_request.wait_for(lambda: find() is not None)
        except TimeoutError:
            seen = [f"{r.method} {r.path} {r.form} -> {r.status}" for r in self.requests]
            raise TimeoutError(
                f"no matching Twilio REST request within {timeout}s; received: {seen}"
            ) from None
        return find()

    def _updates(self, call_sid: str | None) -> list[RestRequest]:
        return [
            r
            for r in self.requests
            if r.method == "POST"
            and r.call_sid is not None
            and (call_sid is None or r.call_sid == call_sid)
        ]

    # -- HTTP --------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        form = await request.post() if request.method == "POST" else {}
        if self.response_delay_s:
            await asyncio.sleep(self.response_delay_s)
        calls_match = _CALLS_PATH.match(request.path)
        call_match = _CALL_PATH.match(request.path)
        match = call_match or calls_match
        record = RestRequest(
            method=request.method,
            path=request.path,
            account_sid=match["account"] if match else None,
            call_sid=call_match["call"] if call_match else None,
            form={key: str(value) for key, value in form.items()},
            time=asyncio.get_running_loop().time(),
            auth=_basic_auth(request.headers.get("Authorization")),
            form_lists={key: [str(v) for v in form.getall(key)] for key in form} if form else {},
        )
        response = self._respond(request, record, calls_match is not None)
        record.status = response.status
        self.requests.append(record)
        if self.on_request is not None:
            self.on_request(record)
        async with self._new_request:
            self._new_request.notify_all()
        if self.answer_delay_s:
            await asyncio.sleep(self.answer_delay_s)
        return response

    def _respond(
        self, request: web.Request, record: RestRequest, is_create: bool
    ) -> web.StreamResponse:
        if record.auth is None or (
            self.auth_token is not None and record.auth[1] != self.auth_token
        ):
            return twilio_error(401, 20003, "Authenticate")
        failure = self._take_failure(f"{record.method} {record.path}")
        if failure is not None:
            return twilio_error(failure.status, failure.code, failure.message)
        recordings_match = _CALL_RECORDINGS_PATH.match(record.path)
        if recordings_match and record.method == "POST":
            record.account_sid = recordings_match["account"]
            return self._recording_create(recordings_match["call"], record)
        recording_match = _RECORDING_PATH.match(record.path)
        if recording_match:
            return self._recording(request, record, recording_match)
        if is_create and record.method == "POST":
            return self._create(record)
        if record.call_sid is not None and record.method == "POST":
            return self._update(record)
        if record.call_sid is not None and record.method == "GET":
            if record.call_sid not in self.calls:
                return self._not_found(record.path)
            return web.json_response(self._resource(record.call_sid))
        return self._not_found(record.path)

    def _take_failure(self, method_path: str) -> _Failure | None:
        for failure in self._failures:
            if failure.match is None or failure.match in method_path:
                self._failures.remove(failure)
                return failure
        return None

    def _create(self, record: RestRequest) -> web.Response:
        form = record.form
        if not form.get("To"):
            return twilio_error(400, 21201, "No 'To' number is specified")
        if not form.get("From"):
            return twilio_error(400, 21213, "No 'From' number is specified")
        if not (form.get("Url") or form.get("Twiml") or form.get("ApplicationSid")):
            return twilio_error(400, 21205, "Url parameter is required.")
        sid = "CA" + secrets.token_hex(16)
        self.register_call(
            sid,
            "queued",
            account_sid=record.account_sid or "",
            to=form["To"],
            from_=form["From"],
            direction="outbound-api",
        )
        self._run_hook(self.on_create, {"sid": sid, **form})
        return web.json_response(self._resource(sid), status=201)

    def _update(self, record: RestRequest) -> web.Response:
        sid = record.call_sid
        if sid not in self.calls and self.auto_register:
            self.register_call(sid, account_sid=record.account_sid or "")
        if sid not in self.calls:
            return self._not_found(record.path)
        if record.is_hangup:
            if self.calls[sid] in TERMINAL_STATUSES:
                return self._not_found(record.path)
            self.set_status(sid, "completed")
            self._run_hook(self.recordings_finish, sid)
            self._run_hook(self.on_hangup, sid)
        elif record.twiml is not None or "Url" in record.form:
            if self.calls[sid] in TERMINAL_STATUSES:
                return twilio_error(400, 21220, "Call is not in-progress. Cannot redirect.")
            if record.twiml is not None:
                try:
                    record.dial_numbers = twiml_dial_numbers(record.twiml)
                    record.stream = twiml_connect_stream(record.twiml)
                except ET.ParseError:
                    return twilio_error(400, 12100, "Document parse failure")
                self._run_hook(self.on_twiml, sid, record.twiml)
        return web.json_response(self._resource(sid))

    def _not_found(self, path: str) -> web.Response:
        return twilio_error(404, 20404, f"The requested resource {path} was not found")

    def _resource(self, sid: str) -> dict[str, Any]:
        details = self._details[sid]
        account_sid = details["account_sid"]
        uri = f"/{API_VERSION}/Accounts/{account_sid}/Calls/{sid}.json"
        return {
            "sid": sid,
            "account_sid": account_sid,
            "parent_call_sid": None,
            "status": self.calls[sid],
            "to": details["to"],
            "to_formatted": details["to"],
            "from": details["from"],
            "from_formatted": details["from"],
            "direction": details["direction"],
            "date_created": details["date_created"],
            "date_updated": _rfc2822_now(),
            "start_time": (
                format_datetime(details["answered"], usegmt=True)
                if details.get("answered")
                else None
            ),
            "end_time": details.get("end_time"),
            # Twilio's duration is a string of whole seconds, set once the call has ended.
            "duration": None if details.get("duration") is None else str(details["duration"]),
            "price": None,
            "price_unit": "USD",
            "answered_by": None,
            "api_version": API_VERSION,
            "forwarded_from": None,
            "caller_name": None,
            "phone_number_sid": None,
            "queue_time": "0",
            "trunk_sid": None,
            "group_sid": None,
            "uri": uri,
            "subresource_uris": {},
        }

    # -- recordings --------------------------------------------------------------------------

    def audio_tap_for(self, call_sid: str) -> Callable[[str, float, bytes], None]:
        """The `audio_tap` for a stream client of this call: what a recording captures."""
        recorder = self.recorders.setdefault(call_sid, DualChannelRecorder())
        return recorder.add

    def recording_url(self, recording: EmulatedRecording) -> str:
        """Twilio's RecordingUrl: the resource's address without an extension."""
        return (
            f"{self.base_url}/{API_VERSION}/Accounts/{recording.account_sid}"
            f"/Recordings/{recording.sid}"
        )

    async def recordings_finish(self, call_sid: str) -> list[EmulatedRecording]:
        """The call is over: its recordings stop, get their audio and report `completed`
        (`absent` when nothing was heard), as Twilio does when a call ends."""
        loop = asyncio.get_running_loop()
        done = []
        for recording in list(self.recordings.values()):
            if recording.call_sid != call_sid or recording.status != "in-progress":
                continue
            recorder = self.recorders.get(call_sid, DualChannelRecorder())
            now = loop.time()
            recording.wav = recorder.wav(recording.started_at, now)
            recording.duration_s = int(now - recording.started_at)
            heard = any(recorder.chunks.values())
            recording.status = "completed" if heard else "absent"
            await self._recording_callback(recording)
            done.append(recording)
        return done

    def _recording_create(self, call_sid: str, record: RestRequest) -> web.Response:
        if self.calls.get(call_sid) != "in-progress":
            # Twilio records only a call in progress.
            return twilio_error(400, 21220, "Requested resource is not eligible for recording")
        form = record.form
        if form.get("RecordingChannels", "mono") not in ("mono", "dual"):
            return twilio_error(400, 21222, "Invalid RecordingChannels")
        if form.get("RecordingTrack", "both") not in ("inbound", "outbound", "both"):
            return twilio_error(400, 13622, "Invalid recordingTrack value")
        events = record.form_lists.get("RecordingStatusCallbackEvent") or ["completed"]
        sid = "RE" + secrets.token_hex(16)
        recording = EmulatedRecording(
            sid=sid,
            account_sid=record.account_sid or "",
            call_sid=call_sid,
            form=dict(form),
            events=[e for event in events for e in event.split()],
            started_at=asyncio.get_running_loop().time(),
            start_time=_rfc2822_now(),
        )
        self.recordings[sid] = recording
        self.recorders.setdefault(call_sid, DualChannelRecorder())
        self._run_hook(self._recording_callback, recording)
        return web.json_response(self._recording_resource(recording), status=201)

    def _recording(
        self, request: web.Request, record: RestRequest, match: re.Match
    ) -> web.StreamResponse:
        recording = self.recordings.get(match["sid"])
        if recording is None or recording.account_sid != match["account"]:
            return self._not_found(record.path)
        if record.method == "DELETE":
            del self.recordings[recording.sid]
            self.deleted_recordings.add(recording.sid)
            return web.Response(status=204)
        if record.method != "GET":
            return twilio_error(405, 20004, "Method not allowed")
        if match["ext"] == ".wav":
            if recording.status != "completed":
                return self._not_found(record.path)
            return _ranged(recording.wav, request.headers.get("Range"), "audio/x-wav")
        return web.json_response(self._recording_resource(recording))

    def _recording_resource(self, recording: EmulatedRecording) -> dict[str, Any]:
        uri = f"/{API_VERSION}/Accounts/{recording.account_sid}/Recordings/{recording.sid}.json"
        return {
            "sid": recording.sid,
            "account_sid": recording.account_sid,
            "call_sid": recording.call_sid,
            "conference_sid": None,
            "status": recording.status,
            "channels": 2 if recording.form.get("RecordingChannels") == "dual" else 1,
            "source": "StartCallRecordingAPI",
            "track": recording.form.get("RecordingTrack", "both"),
            "start_time": recording.start_time,
            "duration": str(recording.duration_s),
            "date_created": recording.start_time,
            "date_updated": _rfc2822_now(),
            "api_version": API_VERSION,
            "price": None,
            "price_unit": "USD",
            "error_code": None,
            "encryption_details": None,
            "uri": uri,
        }

    async def _recording_callback(self, recording: EmulatedRecording) -> None:
        if recording.status not in recording.events:
            return
        url = recording.form.get("RecordingStatusCallback")
        params = {
            "AccountSid": recording.account_sid,
            "CallSid": recording.call_sid,
            "RecordingSid": recording.sid,
            "RecordingUrl": self.recording_url(recording),
            "RecordingStatus": recording.status,
            "RecordingDuration": str(max(0, recording.duration_s)),
            "RecordingChannels": "2" if recording.form.get("RecordingChannels") == "dual" else "1",
            "RecordingStartTime": recording.start_time,
            "RecordingSource": "StartCallRecordingAPI",
            "RecordingTrack": recording.form.get("RecordingTrack", "both"),
            "ErrorCode": "0",
        }
        recording.callbacks.append(params)
        if url and self.post_callback is not None:
            await self.post_callback(url, params)

    # -- hooks -------------------------------------------------------------------------------

    def _run_hook(self, hook: Hook | None, *args: Any) -> None:
        if hook is None:
            return
        try:
            result = hook(*args)
        except Exception as exc:  # a broken hook must not turn into a Twilio 500
            self.hook_errors.append(exc)
            return
        if inspect.iscoroutine(result):
            self._hooks.spawn(result, f"twilio-rest-{getattr(hook, '__name__', 'hook')}")
