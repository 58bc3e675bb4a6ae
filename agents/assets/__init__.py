"""Pre-rendered mu-law clips the agent plays when the model cannot speak for it.

The clips ship with the project (`*.ulaw`: headerless 8 kHz mu-law, what Twilio plays), so a
call that loses its model still hears a voice, and nothing is synthesised at call time.
Regenerate them after editing `CLIPS` with

    .venv/bin/python -m agents.assets

which renders each sentence with espeak-ng through `agents.speech` and commits nothing: add
the changed files yourself.
"""

from __future__ import annotations

import functools
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent

# A little brisker than conversation: the caller is waiting for a person.
CLIP_RATE_WPM = 180
CLIPS = {
    "apology": "Sorry, I'm having a technical problem. One moment please.",
    "goodbye": "Sorry, we have to end the call now. Goodbye.",
}


def clip_path(name: str) -> Path:
    return ASSETS_DIR / f"{name}.ulaw"


@functools.cache
def clip(name: str) -> bytes:
    """A shipped clip as raw 8 kHz mu-law (read once per process)."""
    return clip_path(name).read_bytes()


def render_clips() -> dict[str, int]:
    """(Re)write every clip in CLIPS; return each one's length in ms."""
    from agents import speech

    lengths = {}
    for name, text in CLIPS.items():
        ulaw = speech.synthesize(text, rate_wpm=CLIP_RATE_WPM)
        clip_path(name).write_bytes(ulaw)
        lengths[name] = len(ulaw) // 8
    clip.cache_clear()
    return lengths
