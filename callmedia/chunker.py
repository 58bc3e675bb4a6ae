"""Caller audio gathered into larger appends for the model.

Twilio sends the caller's audio as 20 ms frames, 50 a second; forwarding each as its own
`input_audio_buffer.append` costs a message, a frame and a system call per 20 ms on the
model socket. A `CallerAudioChunker` gathers frames and sends them as one append per
`chunk_ms` (docs/performance.md#caller-audio-in-larger-appends). It never holds a frame
longer than the chunk period: a timer sends a partial chunk when frames stop coming, and
its owner calls `flush` at once when the model must have every frame so far (a keypress,
the end of the stream, a take-over or hand-back, a drain).

Twilio's 160-byte frames are not a multiple of 3 bytes, so their base64 strings cannot be
concatenated (each ends in padding): the frames are decoded into one buffer and the chunk
encoded once. That costs about a microsecond per frame, far less than the message it saves.
With `chunk_ms` of one frame or less, payloads pass through as they came, undecoded.
`b64_join` does the same for the model's audio deltas that leave for Twilio as one message.
"""

from __future__ import annotations

import asyncio
import binascii
from collections.abc import Callable

from .audio import BYTES_PER_MS, FRAME_MS

_a2b = binascii.a2b_base64
_b2a = binascii.b2a_base64


def b64_join(payloads: list[str]) -> str:
    """Base64 payloads as one: joined as bytes, since a payload whose audio is not a multiple
    of 3 bytes ends in padding, and base64 strings cannot then be joined as text."""
    return _b2a(b"".join([_a2b(p) for p in payloads]), newline=False).decode("ascii")


def chunk_ms_valid(chunk_ms: int) -> int:
    """`chunk_ms` rounded down to whole frames, at least one frame."""
    return max(FRAME_MS, chunk_ms - chunk_ms % FRAME_MS)


class CallerAudioChunker:
    """Gathers base64 caller frames and hands `send` one base64 chunk per `chunk_ms`."""

    __slots__ = ("chunk_ms", "_send", "_bytes", "_buffer", "_timer", "_loop", "_passthrough")

    def __init__(self, send: Callable[[str], None], *, chunk_ms: int) -> None:
        self.chunk_ms = chunk_ms_valid(chunk_ms)
        self._send = send
        self._bytes = self.chunk_ms * BYTES_PER_MS
        self._passthrough = self.chunk_ms <= FRAME_MS
        self._buffer = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        """Bytes of audio waiting."""
        return len(self._buffer)

    def add(self, payload_b64: str) -> None:
        """One frame (already checked as base64 by the stream's parser)."""
        if self._passthrough:
            self._send(payload_b64)
            return
        buffer = self._buffer
        if not buffer:
            # The first frame of a chunk waits at most one chunk period, whatever comes next.
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.chunk_ms / 1000, self.flush)
        buffer += _a2b(payload_b64)
        if len(buffer) >= self._bytes:
            self.flush()

    def flush(self) -> None:
        """Send what is waiting now, if anything."""
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()
        buffer = self._buffer
        if buffer:
            chunk = _b2a(buffer, newline=False).decode("ascii")
            buffer.clear()
            self._send(chunk)
