"""What a voice backend offers the agent session, and the events it reports.

A backend speaks to one model for one call. The session talks to it only through `Backend`
and reads normalized events from `events()`, so the OpenAI Realtime backend and the offline
one are interchangeable. Audio is 8 kHz mu-law as base64 text both ways, passed through
untouched.

Every sending method is synchronous and never blocks: it queues the message for a writer
task. The session calls them from its event handlers, and barge-in must not wait on a socket.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from agents.history import Turn, history_message

# --- the agent as the session and the backends see it ---------------------------------------


@dataclass(frozen=True, slots=True)
class TargetConfig:
    name: str
    description: str
    is_default: bool


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """A plain snapshot of an Agent and its transfer targets, loaded once per call."""

    id: int | None
    name: str
    instructions: str
    greeting: str
    voice: str
    model: str
    backend: str
    transfer_digit: str
    max_call_seconds: int
    idle_timeout_seconds: int
    targets: tuple[TargetConfig, ...] = ()
    voicemail_message: str = ""

    @property
    def default_target(self) -> TargetConfig | None:
        return next((target for target in self.targets if target.is_default), None)

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(target.name for target in self.targets)


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResponseCreated:
    response_id: str


@dataclass(frozen=True, slots=True)
class AudioDelta:
    item_id: str
    response_id: str
    payload_b64: str
    nbytes: int


@dataclass(frozen=True, slots=True)
class AudioDone:
    item_id: str
    response_id: str = ""


@dataclass(frozen=True, slots=True)
class AgentTranscriptDelta:
    """Part of what the agent is saying; kept so a call ending mid-sentence loses nothing."""

    item_id: str
    text: str


@dataclass(frozen=True, slots=True)
class AgentTranscript:
    """The whole of an agent utterance (what was generated; cut short if cancelled)."""

    item_id: str
    text: str


@dataclass(frozen=True, slots=True)
class CallerTranscript:
    item_id: str
    text: str


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The caller started speaking. `received_at` is `time.perf_counter()` on arrival."""

    item_id: str = ""
    received_at: float = 0.0


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    item_id: str = ""


@dataclass(frozen=True, slots=True)
class ToolCall:
    call_id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ResponseDone:
    response_id: str
    status: str  # completed, cancelled, failed, incomplete


@dataclass(frozen=True, slots=True)
class BackendError:
    """The model reported an error. A fatal one means the backend cannot go on."""

    code: str
    message: str
    fatal: bool
    # A fatal error a new session cures (the session's time limit): reconnect, don't fail.
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class BackendClosed:
    """The connection ended without us closing it (a drop, or the server closed it)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Idle:
    """Nothing to act on, and nothing more has arrived: what the events before it produced
    should be written now (see `Backend.events_waiting`)."""


IDLE = Idle()


BackendEvent = (
    Idle
    | ResponseCreated
    | AudioDelta
    | AudioDone
    | AgentTranscriptDelta
    | AgentTranscript
    | CallerTranscript
    | SpeechStarted
    | SpeechStopped
    | ToolCall
    | ResponseDone
    | BackendError
    | BackendClosed
)


class BackendUnavailable(Exception):
    """The backend could not connect; `str()` says why."""


# --- the interface --------------------------------------------------------------------------


class Backend(ABC):
    """One call's connection to a voice model."""

    @abstractmethod
    async def connect(self) -> None:
        """Open the connection and configure the session; raise BackendUnavailable."""

    @abstractmethod
    def send_audio(self, payload_b64: str) -> None:
        """Caller audio (base64 mu-law). Hot path: O(1), never blocks, never raises."""

    @abstractmethod
    def create_response(self) -> None:
        """Ask the model to respond now (after a tool result or added context)."""

    @abstractmethod
    def say(self, text: str) -> None:
        """Have the agent speak `text` (the greeting, or a sentence staff typed)."""

    @abstractmethod
    def truncate(self, item_id: str, audio_end_ms: int) -> None:
        """The caller heard only the first `audio_end_ms` of this item's audio."""

    @abstractmethod
    def cancel_response(self, response_id: str) -> None:
        """Stop that response if it is still being generated.

        Naming it matters: by the time this arrives the model may have finished it, or
        server VAD cancelled it and started the next one, which must not be cut.
        """

    @abstractmethod
    def send_tool_result(self, call_id: str, output: str) -> None:
        """Answer a ToolCall; follow with create_response() to have the model react."""

    @abstractmethod
    def add_context(self, text: str) -> None:
        """Tell the model something that happened on the call (e.g. a key pressed)."""

    def keypad(self, digit: str, *, transferring: bool) -> None:
        """The caller pressed a key. `transferring`: the session is already transferring on it.

        A model hears about it as context; a backend with its own menu overrides this.
        """
        if transferring:
            self.add_context(
                f"The caller pressed {digit} to reach a person and is being transferred."
            )
        else:
            self.add_context(f"The caller pressed the {digit} key on their phone.")

    def restore(self, turns: list[Turn]) -> None:
        """Give a new session the conversation so far (after a reconnect or a resume).

        One packed system message (agents.history); it asks for no response.
        """
        message = history_message(turns)
        if message:
            self.add_context(message)

    @abstractmethod
    def set_auto_respond(self, respond: bool) -> None:
        """Whether the model answers by itself when the caller stops speaking.

        Off while a member of staff holds the call: the model keeps hearing the caller (so
        the transcript goes on) but speaks only when asked.
        """

    def events_waiting(self) -> bool:
        """Whether the next event has already arrived (the next step of `events` will not
        wait): its caller may handle it before writing what this one produced."""
        return False

    @abstractmethod
    def events(self) -> AsyncIterator[BackendEvent]:
        """Normalized events until the connection ends (after our close(): just stops)."""

    @abstractmethod
    async def close(self) -> None:
        """Close the connection; idempotent."""
