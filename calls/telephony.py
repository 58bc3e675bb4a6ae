"""The one place that talks to Twilio's REST API.

Async throughout: the client is built inside the running loop on the aiohttp transport, and
closed after each operation. `TWILIO_API_BASE_URL` points it at a local emulator.

Every operation is bounded by `TWILIO_HTTP_TIMEOUT_SECONDS`, applied here with
`asyncio.timeout`: twilio-python's `AsyncTwilioHttpClient(timeout=...)` is not passed on to
aiohttp, which would then wait as long as a stalled Twilio lets it, with staff waiting on a
button and a caller in silence. Failures reach staff as a sentence; details go to the log.
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import aiohttp
from django.conf import settings
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

logger = logging.getLogger(__name__)

# Twilio's "not found": the call has already ended (or never existed for this account).
NOT_FOUND_CODE = 20404


class TelephonyError(Exception):
    """Twilio refused or could not be reached; `str()` is fit to show staff."""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


@asynccontextmanager
async def _client(operation: str) -> AsyncIterator[Client]:
    """A client for one operation, which must finish within TWILIO_HTTP_TIMEOUT_SECONDS."""
    seconds: float = settings.TWILIO_HTTP_TIMEOUT_SECONDS
    http_client = AsyncTwilioHttpClient()
    client = Client(
        settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN, http_client=http_client
    )
    if settings.TWILIO_API_BASE_URL:
        client.api.base_url = settings.TWILIO_API_BASE_URL
    try:
        async with asyncio.timeout(seconds):
            yield client
    except TwilioRestException as error:
        raise TelephonyError(
            f"Twilio error {error.code}: {error.msg}", status=error.status, code=error.code
        ) from error
    except TimeoutError as error:  # before OSError, of which it is a subclass
        logger.warning("Twilio REST %s: no answer within %s s", operation, seconds)
        unit = "second" if seconds == 1 else "seconds"
        message = f"Twilio did not answer within {seconds:g} {unit}; try again."
        raise TelephonyError(message) from error
    except (OSError, aiohttp.ClientError) as error:
        logger.warning("Twilio REST %s: could not reach Twilio: %r", operation, error)
        raise TelephonyError(
            "Twilio could not be reached; the details are in the server log."
        ) from error
    finally:
        await http_client.close()


def _already_ended(error: TelephonyError) -> bool:
    return error.code == NOT_FOUND_CODE or error.status == 404


async def call_complete(call_sid: str) -> bool:
    """Hang up. True if this request ended the call, False if it had already ended."""
    try:
        async with _client("hang-up") as client:
            await client.calls(call_sid).update_async(status="completed")
    except TelephonyError as error:
        if _already_ended(error):
            logger.info("Call %s had already ended (%s)", call_sid, error)
            return False
        raise
    return True


@dataclass(frozen=True)
class TwilioCall:
    """What Twilio's Call resource says about a call now."""

    status: str  # queued, ringing, in-progress, completed, busy, failed, no-answer, canceled
    duration_seconds: int | None  # set once the call has ended
    end_time: datetime | None


async def call_fetch(call_sid: str) -> TwilioCall | None:
    """GET the call from Twilio; None when Twilio does not know it (404 / 20404)."""
    try:
        async with _client("call fetch") as client:
            call = await client.calls(call_sid).fetch_async()
    except TelephonyError as error:
        if _already_ended(error):
            return None
        raise
    try:
        duration = int(call.duration) if call.duration not in (None, "") else None
    except (TypeError, ValueError):
        duration = None
    end_time = call.end_time if isinstance(call.end_time, datetime) else None
    return TwilioCall(status=str(call.status), duration_seconds=duration, end_time=end_time)


async def call_update_twiml(call_sid: str, twiml: str) -> None:
    """Replace the call's running TwiML (for a transfer: a <Dial>)."""
    async with _client("TwiML update") as client:
        await client.calls(call_sid).update_async(twiml=twiml)


async def call_create(
    *,
    to: str,
    from_: str,
    url: str,
    status_callback: str,
    machine_detection: str = "",
    amd_callback: str = "",
) -> str:
    """Place a call; Twilio fetches `url` for its TwiML once answered. Returns the CallSid.

    With `machine_detection` (Twilio's `Enable` or `DetectMessageEnd`) detection runs
    asynchronously: the TwiML (our stream) starts at once, and the verdict is POSTed to
    `amd_callback` (docs/twilio-rest.md#answering-machine-detection).
    """
    amd: dict[str, object] = {}
    if machine_detection:
        amd = {
            "machine_detection": machine_detection,
            "async_amd": "true",
            "async_amd_status_callback": amd_callback,
            "async_amd_status_callback_method": "POST",
        }
    async with _client("call create") as client:
        call = await client.calls.create_async(
            to=to,
            from_=from_,
            url=url,
            method="POST",
            status_callback=status_callback,
            status_callback_method="POST",
            status_callback_event=["initiated", "ringing", "answered", "completed"],
            **amd,
        )
    return call.sid


# --- recordings (docs/twilio-rest.md#recording-a-call-during-a-stream) ------------------------

TWILIO_API_URL = "https://api.twilio.com"
API_VERSION = "2010-04-01"
# Twilio's events for a recording's status callback: started, done, and "nothing recorded".
RECORDING_STATUS_EVENTS = ["in-progress", "completed", "absent"]
# The media proxy reads Twilio's answer in chunks of this many bytes.
MEDIA_CHUNK_BYTES = 64 * 1024
# Headers of Twilio's media answer that the proxy passes on to the browser.
MEDIA_HEADERS = ("Content-Type", "Content-Length", "Content-Range", "Accept-Ranges")


async def recording_start(call_sid: str, *, status_callback: str) -> str:
    """Start recording a call: caller and agent on separate channels. Returns the RecordingSid.

    It runs beside the call's `<Connect><Stream>`; it does not change the call's TwiML.
    """
    async with _client("recording start") as client:
        recording = await client.calls(call_sid).recordings.create_async(
            recording_channels="dual",
            recording_track="both",
            recording_status_callback=status_callback,
            recording_status_callback_method="POST",
            recording_status_callback_event=RECORDING_STATUS_EVENTS,
        )
    return recording.sid


async def recording_delete(recording_sid: str) -> bool:
    """Delete a recording at Twilio. False if Twilio no longer has it (404), which is fine."""
    try:
        async with _client("recording delete") as client:
            await client.recordings(recording_sid).delete_async()
    except TelephonyError as error:
        if _already_ended(error):
            return False
        raise
    return True


def recording_media_url(recording_sid: str) -> str:
    """Where the recording's WAV is, built from our own settings.

    Never the RecordingUrl a callback carried: the account's credentials go with the
    request, so they go only to Twilio's API (or the emulator it is pointed at).
    """
    base = settings.TWILIO_API_BASE_URL or TWILIO_API_URL
    account = settings.TWILIO_ACCOUNT_SID
    return f"{base}/{API_VERSION}/Accounts/{account}/Recordings/{recording_sid}.wav"


class RecordingMedia:
    """Twilio's answer for a recording's media, read as it is passed on: never held whole.

    `open` sends the request (with the browser's Range, if any) and reads the status and
    headers; `chunks()` then yields the body and closes the connection at its end, or when
    the browser goes away. Connecting and each read are bounded by
    TWILIO_HTTP_TIMEOUT_SECONDS; the whole transfer is not (a long recording takes time).
    """

    def __init__(self, recording_sid: str, *, range_header: str | None = None) -> None:
        self.url = recording_media_url(recording_sid)
        self.range_header = range_header
        self.status = 0
        self.headers: dict[str, str] = {}
        self._session: aiohttp.ClientSession | None = None
        self._response: aiohttp.ClientResponse | None = None

    async def open(self) -> None:
        seconds: float = settings.TWILIO_HTTP_TIMEOUT_SECONDS
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)
        auth = aiohttp.BasicAuth(settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN)
        # aiohttp drops the credentials if Twilio redirects to its media host elsewhere.
        self._session = aiohttp.ClientSession(timeout=timeout, auth=auth)
        headers = {"Range": self.range_header} if self.range_header else {}
        try:
            async with asyncio.timeout(seconds):
                self._response = await self._session.get(self.url, headers=headers)
        except (TimeoutError, OSError, aiohttp.ClientError) as error:
            await self.close()
            logger.warning("Twilio recording media %s: %r", self.url, error)
            raise TelephonyError("Twilio could not be reached for the recording.") from error
        self.status = self._response.status
        self.headers = {
            name: self._response.headers[name]
            for name in MEDIA_HEADERS
            if name in self._response.headers
        }

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            if self._response is not None:
                async for chunk in self._response.content.iter_chunked(MEDIA_CHUNK_BYTES):
                    yield chunk
        except (TimeoutError, OSError, aiohttp.ClientError) as error:
            logger.warning("Twilio recording media %s cut off: %r", self.url, error)
        finally:
            await self.close()

    async def close(self) -> None:
        if self._response is not None:
            self._response.release()
        if self._session is not None:
            await self._session.close()
            self._session = None
