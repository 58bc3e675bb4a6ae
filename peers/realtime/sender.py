"""Server events out on one session's socket, each with its own event_id."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection

from .wire import Rejection, dumps


class EventSender:
    def __init__(self, ws: ServerConnection, *, on_error: Callable[[], None]) -> None:
        # The socket is swappable: the bench wraps it to time-stamp what goes out.
        self.ws: Any = ws
        # Event ids are "<prefix>_<n>"; audio deltas, built from a template, use the prefix.
        self.prefix = f"event_{secrets.token_hex(4)}"
        self.errors_sent: list[dict[str, Any]] = []
        self._counter = itertools.count(1)
        self._on_error = on_error

    def event_id(self) -> str:
        return f"{self.prefix}_{next(self._counter)}"

    async def emit(self, type_: str, **fields: Any) -> None:
        await self.ws.send(dumps({"type": type_, "event_id": self.event_id(), **fields}))

    async def error(self, rejection: Rejection, *, client_event_id: str | None = None) -> None:
        error = {
            "type": rejection.type,
            "code": rejection.code,
            "message": rejection.message,
            "param": rejection.param,
            "event_id": client_event_id,
        }
        self.errors_sent.append(error)
        self._on_error()
        await self.emit("error", error=error)
