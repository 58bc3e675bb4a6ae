"""A fake OpenAI Realtime API server (GA protocol) on loopback.

It is a double at the external edge: the backend connects to it with `websockets`
exactly as it connects to wss://api.openai.com/v1/realtime, so it speaks the GA wire
protocol and checks what the real service checks (bearer auth, no beta header, GA session
shape, truncate bounds, one active response).

Tests script what the "model" says with `Reply`, trigger server-side events (caller
speech, transcripts, errors, expiry, a dropped socket) through `FakeSession`, and assert
on what the client sent through the session's records.

It must carry `make bench` (100 calls, 50 audio deltas/s each, both ways) on a small
machine, so the hot paths avoid per-frame dicts and lists: audio deltas are built from
a string template around precomputed base64 chunks, and appends are counted, not kept.

The parts: `wire` checks client events as the service does; `conversation` and
`session_config` hold a session's state; `replies` and `responses` are what the model
says and how it is streamed; `session` ties them to one connection; `server` listens.
"""

from .replies import FRAME_BYTES, FRAME_MS, MULAW_BYTES_PER_MS, Reply, tone
from .responses import FakeResponse
from .server import FakeRealtimeServer
from .session import FakeSession
from .wire import REALTIME_PATH

__all__ = [
    "FRAME_BYTES",
    "FRAME_MS",
    "MULAW_BYTES_PER_MS",
    "REALTIME_PATH",
    "FakeRealtimeServer",
    "FakeResponse",
    "FakeSession",
    "Reply",
    "tone",
]
