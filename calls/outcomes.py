"""What a finished call came to: a pure function of how it ended and its event log.

The event kinds read here, with their data (written by the services and the session; an
answering-machine feature writes the last two):

- `transfer` (a transfer was put through) and `transfer_ended` {"dial_status": Twilio's
  DialCallStatus from the <Dial action>: completed/answered, busy, no-answer, failed, canceled};
- `transfer_returned` (nobody took the transfer: the caller went back to the agent, and the
  transfer before it no longer decides the outcome);
- `agent_error` {"failure": …} (the model failed mid-call);
- `limit_reached` {"limit": …} (max call length or idle timeout);
- `amd_result` {"answered_by": Twilio's AnsweredBy: human, machine_start, machine_end_beep,
  machine_end_silence, machine_end_other, fax, unknown};
- `voicemail_left` (the agent left a message on a machine).
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .models import TERMINAL_STATUSES, CallStatus, EndReason, Outcome

# The event kinds `outcome_derive` reads; the service loads only these.
OUTCOME_EVENT_KINDS = frozenset(
    {
        "transfer",
        "transfer_ended",
        "transfer_returned",
        "agent_error",
        "limit_reached",
        "amd_result",
        "voicemail_left",
    }
)
# Twilio's AnsweredBy values that mean a machine (or a fax) took the call.
MACHINE_ANSWERS = frozenset(
    {"machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax"}
)
DIAL_ANSWERED = frozenset({"completed", "answered"})
DIAL_STATUS_WORDS = {
    "busy": "the person's line was busy",
    "no-answer": "the person did not answer",
    "failed": "the person's number could not be reached",
    "canceled": "the caller hung up before the person answered",
}
UNANSWERED_WORDS = {
    CallStatus.BUSY: "busy",
    CallStatus.NO_ANSWER: "no answer",
    CallStatus.CANCELED: "canceled before it was answered",
}
TRANSFER_ANSWER_UNKNOWN = "whether the person answered is not known"


@dataclass(frozen=True)
class Derived:
    outcome: str
    detail: str = ""


def outcome_derive(
    *,
    status: str,
    end_reason: str,
    events: Iterable[tuple[str, Mapping[str, Any]]],
) -> Derived | None:
    """The outcome of a call in `status` that ended for `end_reason`, given its events
    (kind, data) in order; None while the call is live."""
    if status not in TERMINAL_STATUSES:
        return None
    kinds: dict[str, Mapping[str, Any]] = {}
    machine = False
    for kind, data in events:
        kinds[kind] = data  # the last of each kind counts
        if kind == "amd_result" and str(data.get("answered_by", "")) in MACHINE_ANSWERS:
            machine = True
        if kind == "transfer_returned":
            # The caller came back: only a transfer after this one decides the outcome.
            kinds.pop("transfer", None)
            kinds.pop("transfer_ended", None)

    if "voicemail_left" in kinds:
        return Derived(Outcome.VOICEMAIL, "a message was left")
    if machine:
        return Derived(Outcome.VOICEMAIL, f"answered by {kinds['amd_result']['answered_by']}")
    if status in UNANSWERED_WORDS:
        return Derived(Outcome.NO_ANSWER, UNANSWERED_WORDS[status])
    if status == CallStatus.FAILED:
        return Derived(Outcome.FAILED, "Twilio could not connect the call")
    if end_reason == EndReason.NO_AGENT:
        return Derived(Outcome.FAILED, EndReason.NO_AGENT.label)
    if "transfer_ended" in kinds:
        dial_status = str(kinds["transfer_ended"].get("dial_status", ""))
        if dial_status in DIAL_ANSWERED:
            return Derived(Outcome.TRANSFERRED, "the person answered")
        words = DIAL_STATUS_WORDS.get(dial_status, f"the dial ended: {dial_status or 'unknown'}")
        return Derived(Outcome.TRANSFER_UNANSWERED, words)
    if end_reason == EndReason.TRANSFERRED or "transfer" in kinds:
        return Derived(Outcome.TRANSFERRED, TRANSFER_ANSWER_UNKNOWN)
    if end_reason == EndReason.FAILED or "agent_error" in kinds:
        failure = kinds.get("agent_error", {}).get("failure", "")
        return Derived(Outcome.FAILED, f"the agent failed: {failure}" if failure else "failed")
    if end_reason in (EndReason.SERVER_LOST, EndReason.UNKNOWN_TO_TWILIO):
        return Derived(Outcome.FAILED, EndReason(end_reason).label)
    if end_reason == EndReason.TIMEOUT or "limit_reached" in kinds:
        limit = kinds.get("limit_reached", {}).get("limit", "")
        return Derived(Outcome.TIMED_OUT, str(limit))
    if end_reason == EndReason.STAFF_HANGUP:
        return Derived(Outcome.STAFF_ENDED)
    if end_reason == EndReason.AGENT_ENDED:
        return Derived(Outcome.RESOLVED)
    return Derived(Outcome.CALLER_HUNG_UP)
