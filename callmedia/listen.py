"""Both sides of a call, as the caller hears them, batched for staff who listen in.

A `ListenTap` exists only while someone listens (the media consumer holds None otherwise,
so the media path pays one attribute check). It copies the caller's frames at Twilio's
timestamps and the audio we send at the stream time Twilio will *play* it: the model sends
faster than real time and Twilio buffers, so each chunk starts where the previous one ends,
or now if the buffer has run dry. A `clear` at stream time T is passed on, so a listener
drops what it holds for the agent from T on, as Twilio drops it for the caller.

`take()` returns what gathered since the last call as one binary message, sent every
~100 ms: a few messages a second through the channel layer instead of 100 frames.
Records, little-endian, back to back:

    u8 kind (0 caller, 1 agent, 2 clear) | u32 start, stream ms | u16 length | mu-law bytes

A clear has length 0. Records of one kind are in stream order, and a clear comes after
the agent audio sent before it. (docs/twilio-media-streams.md#listening-in-from-a-browser)
"""

from __future__ import annotations

import binascii
import struct

from .audio import BYTES_PER_MS

KIND_CALLER = 0
KIND_AGENT = 1
KIND_CLEAR = 2
HEADER = struct.Struct("<BIH")
# One record carries at most this much audio (u16 length); longer runs are split.
MAX_RECORD_BYTES = 60_000
# How often a batch leaves for the listeners: 10 channel-layer messages a second per call.
BATCH_MS = 100


class _Run:
    """Contiguous audio of one side, from `start_ms` on."""

    __slots__ = ("start_ms", "audio")

    def __init__(self, start_ms: int) -> None:
        self.start_ms = start_ms
        self.audio = bytearray()

    @property
    def end_ms(self) -> int:
        return self.start_ms + len(self.audio) // BYTES_PER_MS


class ListenTap:
    __slots__ = ("_records", "_caller", "_agent", "agent_cursor_ms")

    def __init__(self, now_ms: int = 0) -> None:
        self._records = bytearray()
        self._caller: _Run | None = None
        self._agent: _Run | None = None
        # Stream time at which Twilio will have played all the audio we sent so far.
        self.agent_cursor_ms = now_ms

    def caller(self, payload_b64: str, timestamp_ms: int) -> None:
        """A caller frame (Twilio's base64 payload) at Twilio's timestamp."""
        try:
            audio = binascii.a2b_base64(payload_b64)
        except (binascii.Error, ValueError):
            return
        run = self._caller
        if run is None or run.end_ms != timestamp_ms or len(run.audio) >= MAX_RECORD_BYTES:
            if run is not None:
                self._close(KIND_CALLER, run)
            run = self._caller = _Run(timestamp_ms)
        run.audio += audio

    def agent(self, audio: bytes, now_ms: int) -> None:
        """Audio we send the caller (mu-law bytes), queued behind what Twilio still plays."""
        start_ms = max(self.agent_cursor_ms, now_ms)
        self.agent_cursor_ms = start_ms + len(audio) // BYTES_PER_MS
        run = self._agent
        if run is None or run.end_ms != start_ms or len(run.audio) >= MAX_RECORD_BYTES:
            if run is not None:
                self._close(KIND_AGENT, run)
            run = self._agent = _Run(start_ms)
        run.audio += audio

    def agent_b64(self, payload_b64: str, now_ms: int) -> None:
        try:
            self.agent(binascii.a2b_base64(payload_b64), now_ms)
        except (binascii.Error, ValueError):
            return

    def clear(self, now_ms: int) -> None:
        """Twilio drops what it has buffered at `now_ms`: so do the listeners."""
        if self._agent is not None:
            self._close(KIND_AGENT, self._agent)
            self._agent = None
        self._records += HEADER.pack(KIND_CLEAR, max(0, now_ms), 0)
        self.agent_cursor_ms = now_ms

    def take(self) -> bytes:
        """Everything gathered since the last take, as one message; b"" if nothing."""
        for kind, run in ((KIND_CALLER, self._caller), (KIND_AGENT, self._agent)):
            if run is not None:
                self._close(kind, run)
        self._caller = self._agent = None
        data, self._records = bytes(self._records), bytearray()
        return data

    def _close(self, kind: int, run: _Run) -> None:
        if run.audio:
            self._records += HEADER.pack(kind, max(0, run.start_ms), len(run.audio))
            self._records += run.audio


def parse(data: bytes) -> list[tuple[int, int, bytes]]:
    """The records of a message, as (kind, start_ms, audio); for tests and tools."""
    records, offset = [], 0
    while offset + HEADER.size <= len(data):
        kind, start_ms, length = HEADER.unpack_from(data, offset)
        offset += HEADER.size
        records.append((kind, start_ms, bytes(data[offset : offset + length])))
        offset += length
    return records
