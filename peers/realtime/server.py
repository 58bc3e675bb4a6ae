"""The fake service's listening socket: the WebSocket handshake, then one session per client."""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from . import wire
from .replies import Reply
from .session import FakeSession


class FakeRealtimeServer:
    """Loopback stand-in for wss://api.openai.com/v1/realtime (GA protocol).

    `session_class` builds each connection's session; the bench passes an instrumented one.
    """

    def __init__(
        self,
        *,
        script: list[Reply] | None = None,
        default_reply: Reply | None = None,
        interrupt_response: bool = True,
        auto_reply_every_ms: int | None = None,
        session_class: type[FakeSession] = FakeSession,
        vad: bool = False,
        port: int = 0,
    ) -> None:
        self.script: list[Reply] = list(script or [])
        self.default_reply: Reply = default_reply or Reply()
        self.interrupt_response = interrupt_response
        self.auto_reply_every_ms = auto_reply_every_ms
        self.session_class = session_class
        # Hear the caller: speech_started/stopped from the appended audio (peers.realtime.vad).
        self.vad = vad
        self.port = port  # 0: any free port (`url` says which)
        self.sessions: list[FakeSession] = []
        self.handshakes: list[dict[str, Any]] = []  # every attempt, accepted or not
        # While set, new connections are refused with this HTTP status (an outage).
        self.refuse_with: HTTPStatus | None = None
        self._server: Server | None = None
        self._session_cursor = 0
        self._session_added = asyncio.Event()

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}{wire.REALTIME_PATH}"

    async def start(self) -> FakeRealtimeServer:
        self._session_added = asyncio.Event()
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            self.port,
            process_request=self._check_handshake,
            compression=None,
            max_size=None,
        )
        return self

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> FakeRealtimeServer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def queue_reply(self, reply: Reply | None = None, **fields: Any) -> Reply:
        """Append to the script that every session started from now on plays in order."""
        reply = reply if reply is not None else Reply(**fields)
        self.script.append(reply)
        return reply

    async def wait_for_session(
        self,
        timeout: float = 5.0,
        *,
        index: int | None = None,
        configured: bool = False,
    ) -> FakeSession:
        """The session at `index`, or else the next one not yet returned by this method.

        `configured`: once the client's first session.update is in, that is once the bridge
        is hearing the caller (audio before that is not the model's to hear).
        """
        wanted = self._session_cursor if index is None else index
        async with asyncio.timeout(timeout):
            while len(self.sessions) <= wanted:
                self._session_added.clear()
                await self._session_added.wait()
        if index is None:
            self._session_cursor += 1
        session = self.sessions[wanted]
        if configured:
            await session.wait_for(lambda: session.session_updates, timeout)
        return session

    def _check_handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        record: dict[str, Any] = {
            "path": parts.path,
            "query": parts.query,
            "headers": request.headers,
        }
        self.handshakes.append(record)
        refusal = wire.handshake_rejection(parts.path, request.headers.get("Authorization", ""))
        if refusal is None and self.refuse_with is not None:
            refusal = self.refuse_with, "The service is unavailable."
        if refusal is None:
            record["status"] = 101
            return None
        status, message = refusal
        record["status"] = int(status)
        body = wire.dumps(
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            }
        )
        response = connection.respond(status, body)
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        return response

    async def _handle(self, ws: ServerConnection) -> None:
        await self.session_class(self, ws).run(on_listed=self._add_session)

    def _add_session(self, session: FakeSession) -> None:
        self.sessions.append(session)
        self._session_added.set()
