"""The conversation one session holds: its items in order, and the tool calls it knows.

The service answers `previous_item_id` on every item it adds, checks a function output's
`call_id` against the calls the model made, and bounds a truncation by the audio the model
actually sent; this is the state those answers come from.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from .replies import MULAW_BYTES_PER_MS


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


@dataclass(eq=False)
class Item:
    id: str
    type: str
    role: str | None = None
    audio_bytes: int = 0  # of model audio sent for it (less after a truncation)
    has_audio: bool = False
    previous_item_id: str | None = None

    @property
    def audio_ms(self) -> float:
        return self.audio_bytes / MULAW_BYTES_PER_MS


class Conversation:
    def __init__(self) -> None:
        self.id = new_id("conv")
        self.items: dict[str, Item] = {}
        self.call_ids: set[str] = set()
        # The caller's current turn: named at speech_started, committed at speech_stopped.
        self.caller_item_id: str | None = None
        self._last_item_id: str | None = None

    def add(self, item: Item) -> Item:
        item.previous_item_id = self._last_item_id
        self.items[item.id] = item
        self._last_item_id = item.id
        return item

    def add_caller_turn(self, item_id: str | None = None) -> Item:
        return self.add(Item(id=item_id or new_id("item"), type="message", role="user"))

    def add_function_call(self) -> tuple[str, str]:
        """A new function call item; returns (item id, call id)."""
        call_id = new_id("call")
        self.call_ids.add(call_id)
        item = self.add(Item(id=new_id("item"), type="function_call"))
        return item.id, call_id

    def get(self, item_id: object) -> Item | None:
        return self.items.get(item_id) if isinstance(item_id, str) else None

    def delete(self, item_id: object) -> bool:
        return isinstance(item_id, str) and self.items.pop(item_id, None) is not None

    def previous_item_id(self, item_id: str) -> str | None:
        return self.items[item_id].previous_item_id

    @staticmethod
    def truncate(item: Item, audio_end_ms: int) -> None:
        item.audio_bytes = audio_end_ms * MULAW_BYTES_PER_MS
