"""What Twilio records of a call: both sides on one clock, as a dual-channel WAV.

Twilio's dual-channel recording of a call with RecordingTrack=both puts the inbound track
(the audio Twilio receives from the caller) on the first channel, the left, and the
outbound track (the audio Twilio plays to the caller: on a `<Connect><Stream>` call, our
agent) on the second, the right (docs/twilio-rest.md#recording-a-call-during-a-stream).
The emulator builds the same file from the audio its stream clients exchanged: the caller's
frames as they were sent, and what the caller heard as it played.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass, field

import numpy as np

from callmedia.audio import MULAW_RATE_HZ, ulaw_to_pcm16

INBOUND, OUTBOUND = "inbound", "outbound"
CHANNELS = (INBOUND, OUTBOUND)  # left, right


@dataclass
class DualChannelRecorder:
    """Chunks of mu-law audio per track, each at the loop time its first byte was heard."""

    chunks: dict[str, list[tuple[float, bytes]]] = field(
        default_factory=lambda: {INBOUND: [], OUTBOUND: []}
    )

    def add(self, track: str, at_s: float, ulaw: bytes) -> None:
        if ulaw:
            self.chunks[track].append((at_s, ulaw))

    def wav(self, start_s: float, end_s: float) -> bytes:
        """8 kHz 16-bit PCM, two channels, from `start_s` to `end_s` (loop time)."""
        samples = max(0, round((end_s - start_s) * MULAW_RATE_HZ))
        stereo = np.zeros((samples, 2), dtype="<i2")
        for channel, track in enumerate(CHANNELS):
            for at_s, ulaw in self.chunks[track]:
                pcm = np.frombuffer(ulaw_to_pcm16(ulaw), dtype="<i2")
                first = round((at_s - start_s) * MULAW_RATE_HZ)
                skip = max(0, -first)
                first = max(0, first)
                pcm = pcm[skip : skip + max(0, samples - first)]
                stereo[first : first + len(pcm), channel] = pcm
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as out:
            out.setnchannels(2)
            out.setsampwidth(2)
            out.setframerate(MULAW_RATE_HZ)
            out.writeframes(stereo.tobytes())
        return buffer.getvalue()
