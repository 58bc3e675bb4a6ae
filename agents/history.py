"""The conversation so far, as a new model session is given it.

A Realtime session starts empty. When the model connection is replaced mid-call (a drop,
the 60-minute limit, or the call moving to another server process) the new session gets
the conversation as one system message holding the whole transcript, packed as text
(docs/openai-realtime.md, "Replaying history into a new session", says why one message
rather than one item per turn).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

CALLER = "caller"
AGENT = "agent"

# Speech runs at about 15 characters a second (150 words a minute); used to estimate how
# much of a cut-off agent line the caller heard, since only its heard duration is known.
SPOKEN_CHARS_PER_S = 15
# The model's context is large, but a packed history longer than this keeps only its end.
MAX_HISTORY_CHARS = 24_000

HISTORY_PREAMBLE = (
    "This phone call is continuing on a new connection to you: you have already been "
    "talking with the caller. Here is the conversation so far, oldest first. Carry on from "
    "where it stopped, in the same voice and language. Do not greet the caller again or "
    "introduce yourself again."
)


@dataclass(slots=True)
class Turn:
    """One line of the conversation. `heard_ms`: an agent line the caller cut off."""

    speaker: str  # CALLER or AGENT
    text: str
    offset_ms: int = 0
    heard_ms: int | None = None
    item_id: str = ""


def heard_text(text: str, heard_ms: int) -> str:
    """The start of `text` that about `heard_ms` of speech covers, cut at a word."""
    limit = heard_ms * SPOKEN_CHARS_PER_S // 1000
    if limit >= len(text):
        return text
    cut = text[:limit].rsplit(" ", 1)[0] if " " in text[:limit] else text[:limit]
    return cut.rstrip(" ,;:") + "…"


def _line(turn: Turn) -> str:
    if turn.speaker == CALLER:
        return f"Caller: {turn.text}"
    if turn.heard_ms is not None:
        heard = heard_text(turn.text, turn.heard_ms)
        return f"You (cut off by the caller, who heard only this): {heard}"
    return f"You: {turn.text}"


def history_message(turns: Iterable[Turn]) -> str:
    """The packed history: a preamble and one line per turn, in the order they were spoken."""
    lines = [_line(turn) for turn in sorted(turns, key=lambda t: t.offset_ms) if turn.text]
    body = "\n".join(lines)
    if len(body) > MAX_HISTORY_CHARS:
        body = "…\n" + body[-MAX_HISTORY_CHARS:].split("\n", 1)[-1]
    return f"{HISTORY_PREAMBLE}\n\n{body}" if lines else ""


def caller_spoke_last(turns: Iterable[Turn]) -> bool:
    ordered = sorted((t for t in turns if t.text), key=lambda t: t.offset_ms)
    return bool(ordered) and ordered[-1].speaker == CALLER
