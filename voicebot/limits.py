"""Refuse request bodies over MAX_REQUEST_BODY_BYTES (413) before they are held in memory.

Nothing we serve takes more than a few kilobytes: Twilio's webhooks and the admin's forms.

Two guards, because servers differ in where a body waits:

- `BodySizeLimit`, ASGI middleware around the HTTP app: refuses a declared Content-Length
  over the limit without reading a byte, and counts a streamed (chunked) body as it arrives,
  refusing it as soon as it passes the limit. Under a server that streams the body to the
  application (uvicorn), that is all it takes.
- daphne reads the whole body (to a temporary file) before it starts the application, then
  queues all of it in memory at once: by the time any middleware runs, a 400 MB body is
  400 MB of memory. `limit_daphne_request_bodies` makes daphne's request refuse such a body
  while it is still arriving: at its Content-Length, or once a chunked body passes the limit.
"""

from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

REFUSAL_BODY = b"Request body too large.\n"
_RAW_REFUSAL = (
    b"HTTP/1.1 413 Content Too Large\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: " + str(len(REFUSAL_BODY)).encode() + b"\r\n"
    b"Connection: close\r\n\r\n" + REFUSAL_BODY
)


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length; None when absent (a chunked body) or unreadable."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodySizeLimit:
    """ASGI middleware: a body over `max_bytes` gets 413 and never reaches the application."""

    def __init__(self, app: App, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = declared_length(scope)
        if length is not None and length > self.max_bytes:
            await refuse(send)
            return

        received = 0
        too_large = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # The application stops reading, as if the client had gone, and we answer.
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counting_receive, watching_send)
        if too_large and not started:
            await refuse(send)


async def refuse(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(REFUSAL_BODY)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": REFUSAL_BODY})


def limit_daphne_request_bodies(max_bytes: int) -> None:
    """Have daphne's HTTP requests refuse a body over `max_bytes` while it arrives.

    daphne builds each request from `daphne.http_protocol.WebRequest` (looked up when a
    connection is made), a Twisted `Request`, whose `gotLength` and `handleContentChunk` see
    the body's declared length and each piece of it as it comes off the socket.
    """
    from daphne import http_protocol

    base = getattr(http_protocol.WebRequest, "unlimited", http_protocol.WebRequest)

    class LimitedWebRequest(base):
        unlimited = base
        _body_bytes = 0
        _refused = False

        def gotLength(self, length: int | None) -> None:
            super().gotLength(length)
            if length is not None and length > max_bytes:
                self._refuse()

        def handleContentChunk(self, data: bytes) -> None:
            if self._refused:
                return
            self._body_bytes += len(data)
            if self._body_bytes > max_bytes:
                self._refuse()
                return
            super().handleContentChunk(data)

        def process(self) -> None:
            # Twisted may still finish parsing what it had already read: serve none of it.
            if not self._refused:
                super().process()

        def _refuse(self) -> None:
            self._refused = True
            self.channel.transport.write(_RAW_REFUSAL)
            self.channel.loseConnection()  # stops reading; the rest of the body is never read

    http_protocol.WebRequest = LimitedWebRequest
