"""Strangers on the media stream socket, against a real daphne: figures, not assertions.

    python -m bench.strangers [--refused 1000] [--silent 1000] [--fd-limit 1024]

1. `--refused` starts with bad stream tokens (forged, replaced, expired, another call's,
   an unknown call's): every close code, tracebacks in the server's log, the log's size.
2. `--silent` sockets that never send `start`, with the server under `--fd-limit` open files:
   how many were refused at once, how many closed by the deadline and when, and whether a
   signed webhook and /healthz still answer meanwhile. Run once with the default cap
   (STREAM_UNAUTHENTICATED_MAX) and once with the cap near the fd limit.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp

from peers.ports import free_port, wait_for_port

from .relay import AGENT_NUMBER, ROOT, prepare_database

CRASH_SIGNS = ("Traceback", "Task was destroyed", "Exception inside application", "close code")
ACCOUNT_SID = "AC" + "1" * 32


def start_server(env: dict[str, str], log: Path, fd_limit: int, **overrides: str):
    port = free_port()

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "voicebot.asgi:application",
        ],
        cwd=ROOT,
        env={**env, "LOG_LEVEL": "INFO", **overrides},
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        preexec_fn=limit_files,
    )
    wait_for_port(port, process=process)
    return process, f"http://127.0.0.1:{port}"


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def signed_params(call_sid: str) -> tuple[dict[str, str], str]:
    from calls import security

    params = {
        "CallSid": call_sid,
        "AccountSid": ACCOUNT_SID,
        "From": "+14155550123",
        "To": AGENT_NUMBER,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
    }
    return params, security.compute_signature(security.public_url("/twilio/voice/incoming"), params)


async def answer(http: aiohttp.ClientSession, base_url: str, call_sid: str) -> tuple[int, str]:
    import re

    params, signature = signed_params(call_sid)
    async with http.post(
        base_url + "/twilio/voice/incoming", data=params, headers={"X-Twilio-Signature": signature}
    ) as response:
        text = await response.text()
    token = re.search(r'name="token" value="([^"]+)"', text)
    return response.status, token.group(1) if token else ""


def new_sid(prefix: str) -> str:
    import secrets

    return prefix + secrets.token_hex(16)


def start_frame(call_sid: str, token: str | None) -> str:
    from calls.simulator import wire

    return wire.start_message(
        stream_sid=new_sid("MZ"),
        call_sid=call_sid,
        account_sid=ACCOUNT_SID,
        sequence_number=1,
        custom_parameters={} if token is None else {"token": token},
    )


def expired_token(call_sid: str) -> str:
    from calls import security

    with mock.patch("time.time", return_value=time.time() - 3600):
        return security.stream_token_issue(call_sid)[0]


async def refused_starts(env: dict[str, str], workdir: Path, count: int, fd_limit: int) -> dict:
    log = workdir / "refused.log"
    process, base_url = start_server(env, log, fd_limit)
    url = base_url.replace("http", "ws") + "/twilio/stream"
    codes: collections.Counter[Any] = collections.Counter()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            known, replaced, other = new_sid("CA"), new_sid("CA"), new_sid("CA")
            await answer(http, base_url, known)
            _, old_token = await answer(http, base_url, replaced)
            await answer(http, base_url, replaced)  # the first token is replaced: a replay
            _, other_token = await answer(http, base_url, other)
            kinds = [
                lambda: start_frame(new_sid("CA"), "forged"),  # unknown call
                lambda: start_frame(known, "forged"),
                lambda: start_frame(replaced, old_token),
                lambda: start_frame(known, other_token),  # another call's token
                lambda: start_frame(known, expired_token(known)),
                lambda: start_frame(known, None),
            ]
            gate = asyncio.Semaphore(100)

            async def one(i: int) -> None:
                async with gate, http.ws_connect(url) as ws:
                    await ws.send_str(kinds[i % len(kinds)]())
                    try:
                        await ws.receive(timeout=15)
                        codes[ws.close_code] += 1
                    except TimeoutError:
                        codes["still open after 15 s"] += 1

            began = time.monotonic()
            await asyncio.gather(*(one(i) for i in range(count)))
            took = time.monotonic() - began
            await asyncio.sleep(1.5)  # let the server finish its log lines
    finally:
        stop_server(process)
    text = log.read_text(errors="replace")
    lines = text.splitlines()
    access = [line for line in lines if '"WS' in line or '"GET' in line or '"POST' in line]
    own = [line for line in lines if line not in set(access)]
    return {
        "starts": count,
        "close codes": dict(codes),
        "seconds": round(took, 1),
        "log bytes (all)": len(text.encode()),
        "log bytes (without daphne's access log)": sum(len(line) + 1 for line in own),
        "log lines (without access log)": len(own),
        "crash lines": sum(any(sign in line for sign in CRASH_SIGNS) for line in lines),
        "sample": own[:3] + own[-2:],
    }


async def silent_sockets(
    env: dict[str, str], workdir: Path, count: int, fd_limit: int, cap: int | None
) -> dict:
    log = workdir / f"silent-{cap}.log"
    overrides = {} if cap is None else {"STREAM_UNAUTHENTICATED_MAX": str(cap)}
    process, base_url = start_server(env, log, fd_limit, **overrides)
    url = base_url.replace("http", "ws") + "/twilio/stream"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            refused: collections.Counter[Any] = collections.Counter()
            codes: collections.Counter[Any] = collections.Counter()
            open_for: list[float] = []  # each socket: from its upgrade to the server's close

            async def wait_closed(ws: aiohttp.ClientWebSocketResponse, opened: float) -> None:
                try:
                    await ws.receive(timeout=30)
                    open_for.append(time.monotonic() - opened)
                    codes[ws.close_code] += 1
                except TimeoutError:
                    codes["still open after 30 s"] += 1
                await ws.close()

            waiting = []
            began = time.monotonic()
            for _ in range(count):
                opened = time.monotonic()
                try:
                    ws = await http.ws_connect(url)
                except aiohttp.WSServerHandshakeError as error:
                    refused[error.status] += 1
                except OSError as error:
                    refused[type(error).__name__] += 1
                else:
                    waiting.append(asyncio.create_task(wait_closed(ws, opened)))
            opened_in = time.monotonic() - began
            # While they wait: does the server still serve Twilio and the health check?
            status, _ = await answer(http, base_url, new_sid("CA"))
            async with http.get(base_url + "/healthz") as health:
                health_status = health.status
            await asyncio.gather(*waiting)
            all_closed_in = time.monotonic() - began
    finally:
        stop_server(process)
    text = log.read_text(errors="replace")
    return {
        "sockets": count,
        "server fd limit": fd_limit,
        "cap": cap or "default (200)",
        "refused at once": dict(refused),
        "accepted": len(waiting),
        "opened all in s": round(opened_in, 2),
        "all closed in s": round(all_closed_in, 2),
        "close codes": dict(codes),
        "open for (upgrade to close), max s": round(max(open_for), 2) if open_for else None,
        "open for, min s": round(min(open_for), 2) if open_for else None,
        "signed webhook meanwhile": status,
        "healthz meanwhile": health_status,
        "crash lines": sum(any(sign in line for sign in CRASH_SIGNS) for line in text.splitlines()),
    }


async def run(args: argparse.Namespace, env: dict[str, str], workdir: Path) -> list[dict]:
    results = [await refused_starts(env, workdir, args.refused, args.fd_limit)]
    for cap in (None, args.fd_limit - 124):
        results.append(await silent_sockets(env, workdir, args.silent, args.fd_limit, cap))
    return results


def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="strangers-") as tmp:
        workdir = Path(tmp)
        env, _ = prepare_database(workdir / "db.sqlite3")  # sync: before the event loop
        for result in asyncio.run(run(args, env, workdir)):
            print()
            for key, value in result.items():
                print(f"  {key}: {value}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refused", type=int, default=1000)
    parser.add_argument("--silent", type=int, default=1000)
    parser.add_argument("--fd-limit", type=int, default=1024)
    main(parser.parse_args())
