"""The model's side of the bench: peers.realtime's FakeRealtimeServer, instrumented.

Run by bench.relay as `python -m bench.model_side`; it prints `READY <url>`, serves until a
`DUMP <path>` line arrives on stdin, writes what it recorded (pickle) and prints `DUMPED`.

Per model session (one per call) it plays a conversation with barge-ins: after a random
phase, a long reply streamed at real-time pace (50 deltas/s with transcript deltas); every
`turn_ms` the caller "speaks" (speech_started, which cancels the reply as server VAD with
interrupt_response does, speech_stopped, the caller's transcript) and a new reply starts.

What is recorded, with perf_counter times:
- every audio delta sent: its 8-character key (session, response, frame);
- every input_audio_buffer.append received: the key of the caller frame it carries;
- every speech_started sent, with the call it belongs to (learnt from the caller keys).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import pickle
import random
import sys
from collections import Counter
from typing import Any

from websockets.protocol import State

from peers.realtime import FakeRealtimeServer, FakeSession, Reply, tone

from .common import FRAME_BYTES, KEY_BYTES, KEY_CHARS, model_key_bytes, now, pin_to

APPEND_PREFIX = '{"type":"input_audio_buffer.append","audio":"'
APPEND_AT = len(APPEND_PREFIX)
FRAME_B64_CHARS = 4 * -(-FRAME_BYTES // 3)  # one frame's base64, padding included
DELTA_HEAD = '{"type":"response.output_audio.delta"'
SPEECH_HEAD = '{"type":"input_audio_buffer.speech_started"'
TRANSCRIPT_WORDS = (
    "Sure, let me look into that for you. Your order shipped on Monday and should arrive "
    "by Thursday. Is there anything else I can help you with today, or would you like me "
    "to send the tracking number to your phone? I can also check on any other orders."
)


class Recorder:
    def __init__(self) -> None:
        self.in_keys: list[str] = []
        self.in_times: list[float] = []
        self.append_times: list[float] = []  # one per append message (several frames each)
        self.out_keys: list[str] = []
        self.out_times: list[float] = []
        self.speech: list[tuple[int, float]] = []  # (session index, time)
        self.sessions: list[BenchSession] = []


REC = Recorder()
_ARGS: argparse.Namespace


# Above this much unsent data the tap leaves flow control to websockets' own send().
SEND_BUFFER_LIMIT = 64 * 1024


class _SendTap:
    """Wraps the session's socket: stamps deltas and speech_started as they are sent.

    It also writes each message straight through the websockets protocol object instead of
    awaiting `send()`: the same frame on the wire, without a coroutine and an async context
    manager per frame. When the socket is backed up, or not open, it falls back to `send()`
    and its flow control.
    """

    __slots__ = ("_ws", "_session", "_send", "_done")

    def __init__(self, ws: Any, session: BenchSession) -> None:
        self._ws = ws
        self._session = session
        self._send = ws.send
        self._done = asyncio.get_running_loop().create_future()
        self._done.set_result(None)

    def send(self, message: str) -> Any:
        if message.startswith(DELTA_HEAD):
            at = message.rfind('"delta":"') + 9
            REC.out_keys.append(message[at : at + KEY_CHARS])
            REC.out_times.append(now())
        elif message.startswith(SPEECH_HEAD):
            REC.speech.append((self._session.index, now()))
        ws = self._ws
        if (
            ws.protocol.state is State.OPEN
            and ws.transport.get_write_buffer_size() < SEND_BUFFER_LIMIT
        ):
            ws.protocol.send_text(message.encode())
            ws.send_data()
            return self._done
        return self._send(message)

    def __aiter__(self) -> Any:
        return self._ws.__aiter__()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ws, name)


class BenchSession(FakeSession):
    """A FakeSession whose replies carry frame keys, driving a conversation with barge-ins."""

    def __init__(self, server: FakeRealtimeServer, ws: Any) -> None:
        super().__init__(server, ws)
        self.index = len(REC.sessions)
        self.call_index = -1
        self.responses_started = 0
        self.sender.ws = _SendTap(ws, self)
        REC.sessions.append(self)

    def _next_reply(self) -> Reply:
        self.responses_started += 1
        n_frames = _ARGS.reply_ms // 20
        body = _TONE
        audio = b"".join(
            model_key_bytes(self.index, self.responses_started, i) + body for i in range(n_frames)
        )
        return Reply(transcript=TRANSCRIPT_WORDS, audio=audio, pace="realtime")

    async def _on_message(self, raw: str | bytes) -> None:
        # The hot path, 50/s per call: stamp and count; no JSON parse of the audio.
        if type(raw) is str and raw.startswith(APPEND_PREFIX) and raw.endswith('"}'):
            self._appended(raw[APPEND_AT:-2])
            return
        if type(raw) is str and '"input_audio_buffer.append"' in raw:
            # An append not in the compact form above (json.dumps' spaces): the slow way.
            message = json.loads(raw)
            if message.get("type") == "input_audio_buffer.append":
                self._appended(message["audio"])
                return
        await super()._on_message(raw)

    def _appended(self, audio_b64: str) -> None:
        # One append may carry several caller frames (the server's chunking): each frame
        # keeps its key in its first bytes, 160 bytes apart, so each is timed on its own.
        t = now()
        if len(audio_b64) <= FRAME_B64_CHARS:
            keys = [audio_b64[:KEY_CHARS]]
        else:
            audio = binascii.a2b_base64(audio_b64)
            keys = [
                binascii.b2a_base64(audio[at : at + KEY_BYTES], newline=False).decode("ascii")
                for at in range(0, len(audio), FRAME_BYTES)
            ]
        REC.in_keys += keys
        REC.in_times += [t] * len(keys)
        REC.append_times.append(t)
        self.append_count += 1
        if self.call_index < 0:
            self.call_index = int.from_bytes(base64.b64decode(keys[0])[:2], "big")

    async def _hello(self) -> None:
        await super()._hello()
        self._spawn(self._converse())

    async def _converse(self) -> None:
        # Like server VAD: the caller talks for caller_speech_ms (the reply is cancelled at
        # speech_started), speech_stopped follows, and the next reply starts right after.
        turn_s, speech_s = _ARGS.turn_ms / 1000, _ARGS.caller_speech_ms / 1000
        await self.wait_for(lambda: self.session_updates, timeout=30)
        await asyncio.sleep(random.uniform(0.05, turn_s))
        if self.active_response is None:
            self._start_response(self._next_reply(), origin="server")
        while True:
            await asyncio.sleep(turn_s * random.uniform(0.9, 1.1) - speech_s)
            await self.speech_started()  # cancels the playing reply (interrupt_response)
            await asyncio.sleep(speech_s)
            await self.speech_stopped()
            await self.caller_transcript("Actually, can you check something else for me?")
            if self.active_response is None:
                self._start_response(self._next_reply(), origin="server")


_TONE = tone(20)[KEY_BYTES:FRAME_BYTES]


def summary() -> dict[str, Any]:
    errors: Counter[str] = Counter()
    events: Counter[str] = Counter()
    for session in REC.sessions:
        for error in session.errors_sent:
            errors[str(error.get("code"))] += 1
        for event in session.client_events:
            events[str(event.get("type"))] += 1
    return {
        "sessions": len(REC.sessions),
        "session_calls": [s.call_index for s in REC.sessions],
        "appends": sum(s.append_count for s in REC.sessions),
        "responses": sum(len(s.responses) for s in REC.sessions),
        "truncations": sum(len(s.truncations) for s in REC.sessions),
        "errors_sent": dict(errors),
        "client_events": dict(events),
    }


def dump(path: str) -> None:
    data = {
        "in_keys": REC.in_keys,
        "in_times": REC.in_times,
        "append_times": REC.append_times,
        "out_keys": REC.out_keys,
        "out_times": REC.out_times,
        "speech": REC.speech,
        "summary": summary(),
    }
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)


async def main() -> None:
    server = FakeRealtimeServer(interrupt_response=True, session_class=BenchSession)
    await server.start()
    print("READY", server.url, flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if not line or line.startswith("DUMP"):
            break
    path = line.partition(" ")[2]
    if path:
        dump(path)
    print("DUMPED", flush=True)
    await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--cpu", type=int, default=1)
    parser.add_argument("--turn-ms", type=int, default=5000)
    parser.add_argument("--caller-speech-ms", type=int, default=600)
    parser.add_argument("--reply-ms", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=1)
    _ARGS = parser.parse_args()
    random.seed(_ARGS.seed)
    pin_to({_ARGS.cpu})
    asyncio.run(main())
