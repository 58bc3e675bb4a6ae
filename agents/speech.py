"""Text to speech with espeak-ng, as headerless 8 kHz mu-law ready for a media stream.

espeak-ng comes from the `espeakng-loader` wheel (library and voice data, no system
install) and is driven through ctypes in synchronous mode: it renders 22050 Hz PCM into our
callback, which soxr resamples to 8 kHz and `callmedia.audio` turns into mu-law.

espeak-ng keeps its state in globals (voice, parameters, the callback), so every synthesis
holds one process-wide lock. It is CPU work of a few ms per sentence: call `speak` from async
code, which runs it in a worker thread, never `synthesize` on the event loop.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import threading

import espeakng_loader

from callmedia.audio import MULAW_RATE_HZ, pcm16_to_ulaw, resample_pcm16

DEFAULT_VOICE = "en-us"
DEFAULT_RATE_WPM = 165
# Greetings and canned replies repeat on every call; long free text is not worth keeping.
CACHE_MAX_CHARS = 200
CACHE_SIZE = 256

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000
_PARAM_RATE = 1
_EE_OK = 0

# int callback(short *wav, int numsamples, espeak_EVENT *events); return 1 to abort.
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class SpeechError(RuntimeError):
    """espeak-ng could not be loaded or refused the text or the voice."""


class _Espeak:
    """The loaded library. Only used with `_lock` held."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synchronize.restype = ctypes.c_int
        data_path = espeakng_loader.get_data_path().encode()
        self.rate_hz = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, 0)
        if self.rate_hz <= 0:
            raise SpeechError(f"espeak-ng failed to initialise (data at {data_path!r})")
        self.lib = lib
        self._chunks: list[bytes] = []
        # Kept on the instance: ctypes would otherwise free the trampoline under espeak.
        self._callback = _SYNTH_CALLBACK(self._collect)
        lib.espeak_SetSynthCallback(self._callback)
        self._voice = ""

    def _collect(self, wav: ctypes.Array, count: int, events: int) -> int:
        if wav and count > 0:
            self._chunks.append(ctypes.string_at(wav, count * 2))
        return 0

    def pcm16(self, text: str, voice: str, rate_wpm: int) -> bytes:
        if voice != self._voice:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                raise SpeechError(f"espeak-ng has no voice {voice!r}")
            self._voice = voice
        self.lib.espeak_SetParameter(_PARAM_RATE, rate_wpm, 0)
        encoded = text.encode() + b"\0"
        self._chunks = []
        status = self.lib.espeak_Synth(
            encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE, None, None
        )
        if status != _EE_OK or self.lib.espeak_Synchronize() != _EE_OK:
            raise SpeechError(f"espeak-ng could not synthesise {text[:40]!r} (error {status})")
        return b"".join(self._chunks)


_lock = threading.Lock()
_engine: _Espeak | None = None


def _synthesize(text: str, voice: str, rate_wpm: int) -> bytes:
    global _engine
    with _lock:
        if _engine is None:
            _engine = _Espeak()
        pcm = _engine.pcm16(text, voice, rate_wpm)
        rate_hz = _engine.rate_hz
    return pcm16_to_ulaw(resample_pcm16(pcm, rate_hz, MULAW_RATE_HZ))


_synthesize_cached = functools.lru_cache(maxsize=CACHE_SIZE)(_synthesize)


def synthesize(text: str, *, voice: str = DEFAULT_VOICE, rate_wpm: int = DEFAULT_RATE_WPM) -> bytes:
    """Speak `text`; return headerless 8 kHz mu-law. Blocking: see `speak` for async code."""
    text = " ".join(text.split())
    if not text:
        return b""
    if len(text) <= CACHE_MAX_CHARS:
        return _synthesize_cached(text, voice, rate_wpm)
    return _synthesize(text, voice, rate_wpm)


async def speak(
    text: str, *, voice: str = DEFAULT_VOICE, rate_wpm: int = DEFAULT_RATE_WPM
) -> bytes:
    """`synthesize` in a worker thread, so the event loop keeps serving media frames."""
    return await asyncio.to_thread(synthesize, text, voice=voice, rate_wpm=rate_wpm)
