"""Audio conversion between WAV/PCM and the 8 kHz mu-law that Twilio and the model speak.

Pure functions on bytes (plus reading a WAV when given a path), so they are unit-tested
without sockets. Call audio itself is never converted: it passes through as base64.
"""

from __future__ import annotations

import io
import warnings
import wave
from pathlib import Path

import numpy as np
import soxr

with warnings.catch_warnings():
    # Deprecated in 3.11-3.12; on 3.13+ the audioop-lts package provides the same module.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

MULAW_RATE_HZ = 8000
FRAME_MS = 20
BYTES_PER_MS = MULAW_RATE_HZ // 1000  # one mu-law byte per sample
FRAME_BYTES = FRAME_MS * BYTES_PER_MS
# 0xFF decodes to a PCM value of 0.
MULAW_SILENCE = b"\xff"

_PCM16_WIDTH = 2
_SUPPORTED_WIDTHS = (1, 2, 3, 4)


class AudioError(ValueError):
    """Input that is not audio we can convert (not a WAV, float samples, ...)."""


def ulaw_to_pcm16(data: bytes) -> bytes:
    return audioop.ulaw2lin(data, _PCM16_WIDTH)


def pcm16_to_ulaw(data: bytes) -> bytes:
    _check_pcm16(data)
    return audioop.lin2ulaw(data, _PCM16_WIDTH)


def resample_pcm16(pcm: bytes, from_hz: int, to_hz: int) -> bytes:
    """Resample mono 16-bit PCM; returns the input unchanged when the rates match."""
    _check_pcm16(pcm)
    if from_hz <= 0 or to_hz <= 0:
        raise AudioError(f"sample rates must be positive, got {from_hz} -> {to_hz}")
    if from_hz == to_hz or not pcm:
        return pcm
    # soxr dithers int16 output, which turns digital silence into hiss: resample in
    # float and round ourselves, clipping the filter's overshoot on full-scale input.
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32)
    resampled = np.rint(soxr.resample(samples, from_hz, to_hz))
    return np.clip(resampled, -32768, 32767).astype(np.int16).tobytes()


def wav_to_ulaw(source: bytes | str | Path) -> bytes:
    """Convert an integer-PCM WAV (any rate, width 8-32 bit, any channels) to raw 8 kHz mu-law.

    The result has no header: Twilio plays header bytes as a click.
    """
    channels, width, rate_hz, data = _read_wav(source)
    if width == 1:
        # 8-bit WAV samples are unsigned; audioop expects signed.
        data = audioop.bias(data, 1, -128)
    pcm = data if width == _PCM16_WIDTH else audioop.lin2lin(data, width, _PCM16_WIDTH)
    pcm = _to_mono(pcm, channels)
    return audioop.lin2ulaw(resample_pcm16(pcm, rate_hz, MULAW_RATE_HZ), _PCM16_WIDTH)


def frames(ulaw: bytes, frame_bytes: int = FRAME_BYTES) -> list[bytes]:
    """Split mu-law into equal frames, padding the last one with silence."""
    if frame_bytes <= 0:
        raise ValueError(f"frame_bytes must be positive, got {frame_bytes}")
    ulaw = bytes(ulaw)
    short_by = -len(ulaw) % frame_bytes
    ulaw += MULAW_SILENCE * short_by
    return [ulaw[i : i + frame_bytes] for i in range(0, len(ulaw), frame_bytes)]


def wav_to_frames(source: bytes | str | Path) -> list[bytes]:
    return frames(wav_to_ulaw(source))


def ulaw_to_wav(ulaw: bytes) -> bytes:
    """8 kHz 16-bit mono WAV, for recordings that ordinary players open."""
    return pcm16_to_wav(ulaw_to_pcm16(ulaw), MULAW_RATE_HZ)


def pcm16_to_wav(pcm: bytes, rate_hz: int) -> bytes:
    _check_pcm16(pcm)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(_PCM16_WIDTH)
        wav.setframerate(rate_hz)
        wav.writeframes(pcm)
    return buffer.getvalue()


def silence(ms: int) -> bytes:
    if ms < 0:
        raise ValueError(f"ms must not be negative, got {ms}")
    return MULAW_SILENCE * (ms * BYTES_PER_MS)


def ulaw_rms(ulaw: bytes) -> int:
    """Energy of mu-law audio as 16-bit PCM RMS (0..32767), for a simple level check."""
    if not ulaw:
        return 0
    return audioop.rms(ulaw_to_pcm16(ulaw), _PCM16_WIDTH)


def duration_ms(ulaw: bytes) -> int:
    return len(ulaw) // BYTES_PER_MS


def _check_pcm16(pcm: bytes) -> None:
    if len(pcm) % _PCM16_WIDTH:
        raise AudioError(f"16-bit PCM must have an even length, got {len(pcm)} bytes")


def _read_wav(source: bytes | str | Path) -> tuple[int, int, int, bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        if bytes(source[:4]) != b"RIFF":
            raise AudioError("not a WAV file: no RIFF header")
        target: io.BytesIO | str = io.BytesIO(source)
    else:
        target = str(source)
    try:
        with wave.open(target, "rb") as wav:
            channels = wav.getnchannels()
            width = wav.getsampwidth()
            rate_hz = wav.getframerate()
            data = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        # wave raises "unknown format: 3" for float WAVs, which is worth passing on.
        raise AudioError(
            f"unsupported or invalid WAV ({_source_name(source)}): {exc}"
            " (only integer PCM WAV is supported)"
        ) from exc
    if width not in _SUPPORTED_WIDTHS:
        raise AudioError(f"unsupported WAV sample width: {width * 8} bits")
    if channels < 1 or rate_hz <= 0:
        raise AudioError(f"invalid WAV header: {channels} channels at {rate_hz} Hz")
    # A file cut short mid-frame would misalign every later channel and sample.
    whole = len(data) - len(data) % (width * channels)
    return channels, width, rate_hz, data[:whole]


def _source_name(source: bytes | str | Path) -> str:
    if isinstance(source, str | Path):
        return str(source)
    return f"{len(source)} bytes"


def _to_mono(pcm: bytes, channels: int) -> bytes:
    if channels == 1:
        return pcm
    samples = np.frombuffer(pcm, dtype=np.int16).reshape(-1, channels)
    # The mean of int16 values always fits back into int16.
    return np.rint(samples.mean(axis=1)).astype(np.int16).tobytes()
