"""The session's state: the phase it is in, and what it knows about each model item."""

import enum
from dataclasses import dataclass, field


class Phase(enum.Enum):
    ACTIVE = "active"  # connecting to the model, or talking with the caller
    ENDING = "ending"  # hanging up or transferring: the model is no longer heard
    FAILING = "failing"  # the model failed: apologising, then transferring or hanging up
    STOPPED = "stopped"  # the stream ended; nothing more happens


@dataclass(slots=True)
class ModelItem:
    """One item of the model's output: an agent utterance, its audio and its transcript."""

    id: str
    response_id: str = ""  # the response its audio came in; "" while it has none
    offset_ms: int | None = None  # stream time of its first audio
    audio_done: bool = False  # all its audio arrived (output_audio.done)
    text: list[str] = field(default_factory=list)  # transcript deltas not yet written
    heard_ms: int | None = None  # set when cut off: how much of it the caller heard
    written: bool = False  # its transcript line is recorded
    staff_say: str = ""  # the sentence staff typed, if it is one (see AgentSession.say)

    @property
    def has_audio(self) -> bool:
        return self.offset_ms is not None
