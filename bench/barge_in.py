"""Barge-in time against the fake model's VAD, per caller-audio chunk size.

    python -m bench.barge_in [--chunks 20,40,60,80,100] [--trials 30]

Caller audio reaches the model CALLER_AUDIO_CHUNK_MS at a time (callmedia.chunker): the
frame in which the caller starts to speak may wait for the rest of its chunk before the
model hears it, and the model's VAD cannot fire before it does. This measures that cost
end to end: one call through the project's ASGI application (in this process, the same
event loop as both peers), the fake Realtime server with its energy VAD on
(peers.realtime.vad, which decides at once, so what is measured is the bridge's share),
the agent speaking, and the caller barging in at a random moment, `--trials` times per
chunk size. The figure is the time from the caller's first loud frame leaving "Twilio"
to Twilio receiving `clear`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import random
import secrets
import statistics
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from .relay import prepare_database

FRAME_S = 0.02
ACCOUNT_SID = "AC" + "1" * 32


async def one_chunk_size(chunk_ms: int, trials: int) -> list[float]:
    from asgiref.sync import sync_to_async
    from channels.testing import WebsocketCommunicator
    from django.conf import settings

    from callmedia import audio
    from calls import services
    from calls.simulator import wire
    from peers.realtime import FakeRealtimeServer, Reply, tone
    from voicebot.asgi import application

    silent_b64 = base64.b64encode(audio.silence(20)).decode("ascii")
    loud_b64 = base64.b64encode(tone(20)).decode("ascii")
    settings.CALLER_AUDIO_CHUNK_MS = chunk_ms
    reply = Reply(transcript="", audio_ms=20_000, pace="realtime")
    async with FakeRealtimeServer(vad=True, default_reply=reply) as model:
        settings.OPENAI_REALTIME_URL = model.url
        call_sid = "CA" + secrets.token_hex(16)
        document = await sync_to_async(services.call_answer)(
            call_sid=call_sid,
            account_sid=ACCOUNT_SID,
            from_number="+14155550123",
            to_number="+14155550100",
            direction="inbound",
        )
        token = ET.fromstring(document).find("./Connect/Stream/Parameter[@name='token']")
        stream_sid = "MZ" + secrets.token_hex(16)
        twilio = WebsocketCommunicator(application, "/twilio/stream")
        assert (await twilio.connect())[0]
        await twilio.send_to(text_data=wire.connected_message())
        await twilio.send_to(
            text_data=wire.start_message(
                stream_sid=stream_sid,
                call_sid=call_sid,
                account_sid=ACCOUNT_SID,
                sequence_number=1,
                custom_parameters={"token": token.get("value")},
            )
        )
        clears: list[float] = []
        cleared = asyncio.Event()

        async def read() -> None:
            while True:
                message = await twilio.receive_output(timeout=30)
                if message["type"] != "websocket.send":
                    return
                if message.get("text", "").startswith('{"event":"clear"'):
                    clears.append(time.perf_counter())
                    cleared.set()

        reader = asyncio.create_task(read())
        sequence, frame = 1, 0
        start = time.perf_counter()

        async def send(payload_b64: str, count: int) -> float:
            """`count` frames in real time; when the first one left."""
            nonlocal sequence, frame
            first = 0.0
            for i in range(count):
                delay = start + frame * FRAME_S - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                sequence += 1
                if i == 0:
                    first = time.perf_counter()
                await twilio.send_to(
                    text_data=wire.inbound_media_message(
                        stream_sid=stream_sid,
                        sequence_number=sequence,
                        chunk=frame + 1,
                        timestamp_ms=frame * 20,
                        payload_b64=payload_b64,
                    )
                )
                frame += 1
            return first

        times = []
        await send(silent_b64, 25)
        await send(loud_b64, 10)  # the caller speaks first: the agent answers
        for _ in range(trials):
            # The agent talks a while; the caller barges in at a random frame.
            await send(silent_b64, 40 + random.randrange(10))
            seen = len(clears)
            cleared.clear()
            onset = await send(loud_b64, 10)
            if len(clears) == seen:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cleared.wait(), 1.0)
            if len(clears) > seen:
                times.append(clears[seen] - onset)
        await twilio.disconnect()
        reader.cancel()
        return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.barge_in", description=__doc__)
    parser.add_argument("--chunks", default="20,40,60,80,100", help="chunk sizes, ms")
    parser.add_argument("--trials", type=int, default=30, help="barge-ins per chunk size")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    random.seed(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="voicebot-barge-in-"))
    prepare_database(workdir / "db.sqlite3")
    print(f"{'chunk ms':>8} {'n':>3} {'p50 ms':>7} {'p90 ms':>7} {'max ms':>7}")
    for chunk_ms in [int(c) for c in args.chunks.split(",")]:
        times = sorted(1000 * t for t in asyncio.run(one_chunk_size(chunk_ms, args.trials)))
        if not times:
            print(f"{chunk_ms:>8}   0  no barge-in detected")
            continue
        p90 = times[min(len(times) - 1, round(0.9 * (len(times) - 1)))]
        print(
            f"{chunk_ms:>8} {len(times):>3} {statistics.median(times):>7.1f} {p90:>7.1f} "
            f"{times[-1]:>7.1f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
