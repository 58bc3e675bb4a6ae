"""Server VAD, reduced to an energy threshold: the fake hears the caller speak.

The real service decides when the caller starts and stops speaking from the audio it was
appended; it reports `speech_started` only once that audio has reached it. So however long
the service itself takes to decide, the bridge adds the time a frame waits before it is
sent (caller audio sent in chunks: docs/performance.md#caller-audio-in-larger-appends).
This VAD decides at once, frame by frame: a 20 ms frame louder than `threshold_rms` is
speech, and `silence_ms` of quieter frames ends it. What it measures is therefore only the
bridge's share of the barge-in time.
"""

from __future__ import annotations

import binascii

from callmedia.audio import ulaw_rms

from .replies import FRAME_MS, MULAW_BYTES_PER_MS

FRAME_BYTES = FRAME_MS * MULAW_BYTES_PER_MS
# A tone at a tenth of full scale is well over; mu-law silence (0xff) is 0.
SPEECH_RMS = 500
SILENCE_MS = 500


class EnergyVad:
    """Feed it appended audio; it says where speech starts and stops, in audio ms."""

    def __init__(self, *, threshold_rms: int = SPEECH_RMS, silence_ms: int = SILENCE_MS) -> None:
        self.threshold_rms = threshold_rms
        self.silence_ms = silence_ms
        self.speaking = False
        self._position_ms = 0
        self._quiet_ms = 0

    def feed(self, audio_b64: str) -> list[tuple[str, int]]:
        """[("started" | "stopped", audio ms)] for this append's audio, in order."""
        audio = binascii.a2b_base64(audio_b64)
        changes = []
        for at in range(0, len(audio), FRAME_BYTES):
            frame = audio[at : at + FRAME_BYTES]
            loud = ulaw_rms(frame) >= self.threshold_rms
            if loud and not self.speaking:
                self.speaking = True
                changes.append(("started", self._position_ms))
            if self.speaking:
                self._quiet_ms = 0 if loud else self._quiet_ms + FRAME_MS
                if self._quiet_ms >= self.silence_ms:
                    self.speaking = False
                    changes.append(("stopped", self._position_ms + FRAME_MS))
            self._position_ms += len(frame) // MULAW_BYTES_PER_MS
        return changes
