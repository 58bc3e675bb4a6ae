"""What the fake model says: scripted replies and the tone they play by default.

A `Reply` precomputes its audio as base64 20 ms chunks and its transcript as pieces, once,
so streaming it costs one string join per delta (the bench streams thousands per second).
"""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

MULAW_RATE_HZ = 8000
MULAW_BYTES_PER_MS = MULAW_RATE_HZ // 1000
FRAME_MS = 20
FRAME_BYTES = FRAME_MS * MULAW_BYTES_PER_MS
FRAME_S = FRAME_MS / 1000
TONE_HZ = 400
DEFAULT_REPLY_AUDIO_MS = 600
PACES = ("realtime", "burst")


def mulaw_encode_sample(sample: int) -> int:
    """G.711 mu-law encoding of one signed 16-bit sample."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), 32635) + 0x84
    exponent = max(0, min(7, (magnitude >> 7).bit_length() - 1))
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _tone_frame() -> bytes:
    # 400 Hz fits exactly 8 periods in a 20 ms frame, so frames repeat seamlessly.
    return bytes(
        mulaw_encode_sample(int(8000 * math.sin(2 * math.pi * TONE_HZ * n / MULAW_RATE_HZ)))
        for n in range(FRAME_BYTES)
    )


TONE_FRAME = _tone_frame()


def tone(duration_ms: int, hz: int = TONE_HZ) -> bytes:
    """Non-silent mu-law audio (a 400 Hz tone unless `hz` says) of the given duration."""
    total = duration_ms * MULAW_BYTES_PER_MS
    if hz == TONE_HZ:
        return (TONE_FRAME * (total // FRAME_BYTES + 1))[:total]
    return bytes(
        mulaw_encode_sample(int(8000 * math.sin(2 * math.pi * hz * n / MULAW_RATE_HZ)))
        for n in range(total)
    )


@dataclass(frozen=True, eq=False)
class Reply:
    """What the fake model says in one response.

    `audio` is raw mu-law; when None, a tone of `audio_ms` is generated (0 = no audio).
    `function_call` is `(name, arguments)` and is emitted after the audio.
    `pace` is "realtime" (20 ms deltas at 50/s, drift-free) or "burst" (as fast as possible).
    `lead_ms` (realtime pace): how far ahead of real time the model streams, as the real
    service does; 0 sends each delta just in time, so any hiccup on the way empties Twilio's
    buffer. `stall_after_ms`: the model falls behind after this much audio and sends nothing
    more of the reply until it is cancelled.
    """

    transcript: str = "Okay."
    audio: bytes | None = None
    audio_ms: int = DEFAULT_REPLY_AUDIO_MS
    function_call: tuple[str, dict[str, Any]] | None = None
    pace: str = "realtime"
    lead_ms: int = 0
    stall_after_ms: int | None = None

    def __post_init__(self) -> None:
        if self.pace not in PACES:
            raise ValueError(f"pace must be 'realtime' or 'burst', not {self.pace!r}")

    @cached_property
    def audio_bytes(self) -> bytes:
        return self.audio if self.audio is not None else tone(self.audio_ms)

    @cached_property
    def b64_frames(self) -> tuple[str, ...]:
        data = self.audio_bytes
        return tuple(
            base64.b64encode(data[i : i + FRAME_BYTES]).decode("ascii")
            for i in range(0, len(data), FRAME_BYTES)
        )

    @cached_property
    def frame_sizes(self) -> tuple[int, ...]:
        data = self.audio_bytes
        return tuple(len(data[i : i + FRAME_BYTES]) for i in range(0, len(data), FRAME_BYTES))

    @cached_property
    def transcript_pieces(self) -> tuple[str, ...]:
        return tuple(re.findall(r"\s*\S+", self.transcript))

    @property
    def has_message(self) -> bool:
        return bool(self.audio_bytes) or bool(self.transcript)
