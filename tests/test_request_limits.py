"""A request body over MAX_REQUEST_BODY_BYTES is refused (413) before it is held in memory.

Against real daphne, a 400 MB body is streamed from a buffer reused for every piece (the
test never holds it either), with and without a Content-Length; daphne's memory is read from
/proc before and after.
"""

import select
import socket
import time
from pathlib import Path

import pytest

from voicebot.asgi import application
from voicebot.limits import BodySizeLimit

from .servers import daphne_process

pytestmark = pytest.mark.django_db(transaction=True)

LIMIT = 1024 * 1024
HUGE = 400 * 1024 * 1024
PIECE = b"\0" * (64 * 1024)
MAX_GROWTH_KB = 20 * 1024


def memory_kb(pid: int) -> dict[str, int]:
    """The process's resident set now (VmRSS) and at its highest so far (VmHWM), in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def stream_post(base_url: str, total: int, *, chunked: bool) -> tuple[bytes, int]:
    """POST `total` bytes of body piece by piece, stopping once the server answers.

    Returns (the response's head, body bytes sent).
    """
    host, port = base_url.removeprefix("http://").split(":")
    framing = (
        b"Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {total}\r\n".encode()
    )
    head = (
        b"POST /twilio/voice/incoming HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n" + framing + b"\r\n"
    )
    chunk_head = f"{len(PIECE):x}\r\n".encode()
    sent = 0
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        try:
            while sent < total:
                if select.select([sock], [], [], 0)[0]:
                    break  # the server has answered
                sock.sendall(chunk_head + PIECE + b"\r\n" if chunked else PIECE)
                sent += len(PIECE)
            else:
                sock.sendall(b"0\r\n\r\n" if chunked else b"")
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            response = sock.recv(4096)
        except ConnectionResetError:
            response = b""
    return response, sent


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_daphne_refuses_a_huge_body_without_holding_it(tmp_path, chunked):
    with daphne_process(tmp_path / "daphne.log") as (base_url, process):
        # Warm up: one ordinary (unsigned, so refused) webhook loads everything a request uses.
        response, _ = stream_post(base_url, 0, chunked=False)
        assert response.startswith(b"HTTP/1.1 403"), response
        time.sleep(0.5)
        before = memory_kb(process.pid)

        started = time.monotonic()
        response, sent = stream_post(base_url, HUGE, chunked=chunked)
        elapsed = time.monotonic() - started
        time.sleep(0.5)
        after = memory_kb(process.pid)

    growth = after["VmHWM"] - before["VmRSS"]
    print(
        f"\n{'chunked' if chunked else 'content-length'}: answered after {sent / 2**20:.1f} MB sent"
        f" in {elapsed:.2f} s; daphne RSS {before['VmRSS'] / 1024:.1f} MB before,"
        f" peak {after['VmHWM'] / 1024:.1f} MB after: growth {growth / 1024:.1f} MB"
    )
    assert response.startswith(b"HTTP/1.1 413"), response
    assert sent < HUGE / 10  # the rest was never sent: the connection was closed
    assert growth < MAX_GROWTH_KB


def test_a_body_just_over_the_limit_is_refused_and_one_under_it_is_served(tmp_path):
    with daphne_process(tmp_path / "daphne.log") as (base_url, _):
        over, _ = stream_post(base_url, LIMIT + len(PIECE), chunked=False)
        under, _ = stream_post(base_url, LIMIT - len(PIECE), chunked=False)
    assert over.startswith(b"HTTP/1.1 413"), over
    assert under.startswith(b"HTTP/1.1 403"), under  # read, then refused: it is unsigned


# --- the ASGI middleware, for servers that stream the body to the application ----------------


async def run_http(app, headers: list[tuple[bytes, bytes]], pieces: list[bytes]) -> list[dict]:
    """Run one HTTP request through `app`; return what it sent."""
    incoming = [
        {"type": "http.request", "body": piece, "more_body": index < len(pieces) - 1}
        for index, piece in enumerate(pieces)
    ]
    read = []
    sent: list[dict] = []

    async def receive() -> dict:
        if incoming:
            read.append(incoming.pop(0))
            return read[-1]
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/twilio/voice/incoming",
        "raw_path": b"/twilio/voice/incoming",
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 5000),
        "headers": [(b"host", b"127.0.0.1"), *headers],
    }
    await app(scope, receive, send)
    return sent


def status(sent: list[dict]) -> int:
    return next(message["status"] for message in sent if message["type"] == "http.response.start")


async def test_the_middleware_refuses_a_declared_length_without_reading():
    async def app(scope, receive, send):
        raise AssertionError("the application must not run")

    limited = BodySizeLimit(app, max_bytes=LIMIT)
    sent = await run_http(limited, [(b"content-length", str(HUGE).encode())], [b""])
    assert status(sent) == 413


async def test_the_middleware_counts_a_streamed_body_and_refuses_it_past_the_limit():
    pieces = [PIECE] * (LIMIT // len(PIECE) + 2)
    sent = await run_http(application, [], pieces)
    assert status(sent) == 413
    assert b"".join(m.get("body", b"") for m in sent) == b"Request body too large.\n"
