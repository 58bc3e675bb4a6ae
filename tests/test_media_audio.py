import io
import math
import struct
import wave

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callmedia import audio
from callmedia.audio import (
    BYTES_PER_MS,
    FRAME_BYTES,
    MULAW_RATE_HZ,
    MULAW_SILENCE,
    AudioError,
    duration_ms,
    frames,
    pcm16_to_ulaw,
    pcm16_to_wav,
    resample_pcm16,
    silence,
    ulaw_rms,
    ulaw_to_pcm16,
    ulaw_to_wav,
    wav_to_frames,
    wav_to_ulaw,
)

# Largest magnitude mu-law can represent; louder samples clip to it.
MULAW_MAX_16BIT = 32124


def make_wav(samples: np.ndarray, *, rate_hz: int, width: int) -> bytes:
    """A WAV from int samples scaled to `width`; samples has shape (frames, channels)."""
    channels = samples.shape[1]
    if width == 1:
        raw = (samples.astype(np.int16) + 128).astype(np.uint8).tobytes()
    elif width == 2:
        raw = samples.astype("<i2").tobytes()
    elif width == 3:
        wide = samples.astype("<i4").tobytes()
        # Keep the 3 low bytes of each little-endian int32.
        raw = b"".join(wide[i : i + 3] for i in range(0, len(wide), 4))
    else:
        raw = samples.astype("<i4").tobytes()
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate_hz)
        wav.writeframes(raw)
    return buffer.getvalue()


def full_scale(width: int) -> int:
    return 2 ** (8 * width - 1) - 1


def pcm(samples: bytes) -> np.ndarray:
    return np.frombuffer(samples, dtype=np.int16).astype(np.int64)


# --- mu-law ------------------------------------------------------------------


def mulaw_error_bound(x: int) -> float:
    """Largest round-trip error G.711 mu-law allows for the 16-bit sample x.

    mu-law keeps 14 bits (x >> 2) in 8 segments; in segment s the step is 2**(s+3)
    16-bit units and magnitudes there are at least 4 * (2**(s+5) - 33). Decoding returns
    the middle of the step, so the error is at most half a step, 2**(s+2) <= (|x| + 132)/32,
    plus up to 3 for the dropped low bits: |x|/32 + 8 covers both. Beyond the largest code
    (32124) the sample clips.
    """
    return max(abs(x) / 32 + 8, abs(x) - MULAW_MAX_16BIT)


@given(st.lists(st.integers(-32768, 32767), min_size=1, max_size=200))
def test_mulaw_round_trip_error_stays_within_the_g711_quantisation_bound(samples):
    data = struct.pack(f"<{len(samples)}h", *samples)
    decoded = pcm(ulaw_to_pcm16(pcm16_to_ulaw(data)))
    for x, y in zip(samples, decoded, strict=True):
        assert abs(int(y) - x) <= mulaw_error_bound(x)


def test_mulaw_round_trip_bound_holds_for_every_16_bit_sample():
    samples = np.arange(-32768, 32768, dtype=np.int16)
    decoded = pcm(ulaw_to_pcm16(pcm16_to_ulaw(samples.tobytes())))
    errors = np.abs(decoded - samples.astype(np.int64))
    bounds = np.maximum(np.abs(samples.astype(np.int64)) / 32 + 8, np.abs(samples) - 32124)
    assert np.all(errors <= bounds)
    # The bound is not slack: quiet samples come back within a few units.
    assert errors[np.abs(samples.astype(np.int64)) < 100].max() <= 8


@given(st.binary(min_size=1, max_size=400))
def test_mulaw_bytes_survive_decoding_and_re_encoding(ulaw):
    # 0x7F is mu-law's "negative zero"; it re-encodes as 0xFF.
    assert pcm16_to_ulaw(ulaw_to_pcm16(ulaw)) == ulaw.replace(b"\x7f", b"\xff")


def test_mulaw_silence_decodes_to_zero():
    assert set(pcm(ulaw_to_pcm16(MULAW_SILENCE * 10))) == {0}


def test_pcm16_to_ulaw_rejects_odd_length_input():
    with pytest.raises(AudioError):
        pcm16_to_ulaw(b"\x00\x00\x00")


# --- frames ------------------------------------------------------------------


@given(st.binary(max_size=2000), st.sampled_from([FRAME_BYTES, 1, 7, 320]))
def test_frames_are_equal_size_and_pad_the_last_with_silence(ulaw, frame_bytes):
    result = frames(ulaw, frame_bytes)
    assert len(result) == math.ceil(len(ulaw) / frame_bytes)
    assert all(len(frame) == frame_bytes for frame in result)
    joined = b"".join(result)
    assert joined[: len(ulaw)] == ulaw
    assert set(joined[len(ulaw) :]) <= set(MULAW_SILENCE)


def test_frames_default_to_20_ms():
    assert FRAME_BYTES == 160
    assert [len(f) for f in frames(b"\x00" * 161)] == [160, 160]


def test_frames_rejects_a_non_positive_size():
    with pytest.raises(ValueError):
        frames(b"\x00", 0)


# --- WAV conversion ------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    rate_hz=st.integers(8000, 48000),
    width=st.sampled_from([1, 2, 3, 4]),
    channels=st.integers(1, 2),
    nframes=st.integers(0, 3000),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_integer_wav_converts_to_headerless_8khz_mulaw_of_the_same_duration(
    rate_hz, width, channels, nframes, seed
):
    rng = np.random.default_rng(seed)
    limit = full_scale(width) // 2
    samples = rng.integers(-limit, limit, size=(nframes, channels))
    ulaw = wav_to_ulaw(make_wav(samples, rate_hz=rate_hz, width=width))

    assert abs(len(ulaw) - nframes * MULAW_RATE_HZ / rate_hz) <= 1
    assert not ulaw.startswith(b"RIFF")
    assert all(not frame.startswith(b"RIFF") for frame in frames(ulaw))


@settings(max_examples=40, deadline=None)
@given(
    rate_hz=st.integers(8000, 48000),
    width=st.sampled_from([1, 2, 3, 4]),
    channels=st.integers(1, 2),
    nframes=st.integers(100, 2000),
)
def test_a_silent_wav_becomes_pure_mulaw_silence(rate_hz, width, channels, nframes):
    # Any header byte, or 8-bit samples treated as signed, would show up as non-silence.
    samples = np.zeros((nframes, channels), dtype=np.int64)
    ulaw = wav_to_ulaw(make_wav(samples, rate_hz=rate_hz, width=width))
    assert ulaw and set(ulaw) == set(MULAW_SILENCE)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_a_440hz_sine_at_16khz_survives_conversion(width):
    rate_hz, seconds = 16000, 1
    t = np.arange(rate_hz * seconds) / rate_hz
    amplitude = 0.5
    sine = np.rint(amplitude * full_scale(width) * np.sin(2 * np.pi * 440 * t))
    ulaw = wav_to_ulaw(make_wav(sine.reshape(-1, 1), rate_hz=rate_hz, width=width))

    assert len(ulaw) == MULAW_RATE_HZ * seconds
    expected_rms = amplitude * 32767 / math.sqrt(2)
    assert ulaw_rms(ulaw) == pytest.approx(expected_rms, rel=0.05)
    spectrum = np.abs(np.fft.rfft(pcm(ulaw_to_pcm16(ulaw))))
    peak_hz = np.argmax(spectrum) * MULAW_RATE_HZ / len(ulaw)
    assert peak_hz == pytest.approx(440, abs=2)


def test_stereo_is_mixed_to_mono_by_averaging():
    rng = np.random.default_rng(1)
    left = rng.integers(-8000, 8000, size=4000)
    opposite = np.stack([left, -left], axis=1)
    same = np.stack([left, left], axis=1)

    cancelled = wav_to_ulaw(make_wav(opposite, rate_hz=8000, width=2))
    assert set(cancelled) == set(MULAW_SILENCE)
    mono = wav_to_ulaw(make_wav(left.reshape(-1, 1), rate_hz=8000, width=2))
    assert wav_to_ulaw(make_wav(same, rate_hz=8000, width=2)) == mono


def test_wav_at_8khz_16bit_is_encoded_sample_for_sample():
    samples = np.array([0, 1000, -1000, 32000, -32000]).reshape(-1, 1)
    wav = make_wav(samples, rate_hz=8000, width=2)
    assert wav_to_ulaw(wav) == pcm16_to_ulaw(samples.astype("<i2").tobytes())


def test_wav_to_ulaw_reads_a_path(tmp_path):
    path = tmp_path / "greeting.wav"
    path.write_bytes(make_wav(np.zeros((1600, 1)), rate_hz=16000, width=2))
    assert wav_to_ulaw(path) == MULAW_SILENCE * 800
    assert wav_to_ulaw(str(path)) == MULAW_SILENCE * 800


def test_wav_to_frames_returns_20ms_frames():
    result = wav_to_frames(make_wav(np.zeros((8000 * 3 // 100, 1)), rate_hz=8000, width=2))
    assert [len(frame) for frame in result] == [FRAME_BYTES, FRAME_BYTES]


def float_wav() -> bytes:
    wav = bytearray(pcm16_to_wav(b"\x00\x00" * 100, 8000))
    # Format tag 3 is IEEE float (offset 20 in a canonical header).
    wav[20:22] = struct.pack("<H", 3)
    return bytes(wav)


@pytest.mark.parametrize(
    "source",
    [
        b"",
        b"not a wav file at all",
        b"RIFF\x00\x00\x00\x00WAVE",
        b"RIFF\x24\x00\x00\x00AVI LIST",
        float_wav(),
    ],
    ids=["empty", "text", "truncated", "not-wave", "float"],
)
def test_bad_input_raises_audio_error(source):
    with pytest.raises(AudioError):
        wav_to_ulaw(source)


def test_a_non_wav_file_raises_audio_error(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("just text")
    with pytest.raises(AudioError):
        wav_to_ulaw(path)


def test_audio_error_is_a_value_error():
    assert issubclass(AudioError, ValueError)


# --- helpers ------------------------------------------------------------------


def test_ulaw_to_wav_writes_an_8khz_16bit_mono_wav():
    ulaw = pcm16_to_ulaw(struct.pack("<3h", 0, 5000, -5000))
    with wave.open(io.BytesIO(ulaw_to_wav(ulaw)), "rb") as wav:
        assert (wav.getframerate(), wav.getsampwidth(), wav.getnchannels()) == (8000, 2, 1)
        assert wav.readframes(wav.getnframes()) == ulaw_to_pcm16(ulaw)


def test_pcm16_to_wav_keeps_the_rate():
    with wave.open(io.BytesIO(pcm16_to_wav(b"\x01\x00" * 10, 24000)), "rb") as wav:
        assert wav.getframerate() == 24000
        assert wav.getnframes() == 10


@given(
    nsamples=st.integers(0, 3000),
    from_hz=st.sampled_from([8000, 16000, 22050, 24000, 44100, 48000]),
    to_hz=st.sampled_from([8000, 16000, 24000]),
)
@settings(deadline=None)
def test_resample_pcm16_scales_the_length_by_the_rate_ratio(nsamples, from_hz, to_hz):
    out = resample_pcm16(b"\x00\x00" * nsamples, from_hz, to_hz)
    assert abs(len(out) // 2 - nsamples * to_hz / from_hz) <= 1


def test_silence_is_eight_mulaw_silence_bytes_per_ms():
    assert BYTES_PER_MS == 8
    assert silence(20) == MULAW_SILENCE * 160
    assert silence(0) == b""


def test_ulaw_rms_tells_silence_from_speech_level_audio():
    assert ulaw_rms(silence(20)) == 0
    assert ulaw_rms(b"") == 0
    loud = pcm16_to_ulaw(struct.pack("<160h", *([8000, -8000] * 80)))
    assert ulaw_rms(loud) == pytest.approx(8000, rel=0.05)


def test_duration_ms_counts_eight_bytes_per_ms():
    assert duration_ms(b"\xff" * 160) == 20
    assert duration_ms(b"\xff" * 7) == 0
    assert duration_ms(b"") == 0


def test_module_constants_carry_the_twilio_format():
    assert (audio.MULAW_RATE_HZ, audio.FRAME_MS, audio.FRAME_BYTES) == (8000, 20, 160)
