"""A staff member holding the call: the agent quiet, the model still hearing the caller.

While staff hold the call the model does not answer on its own (its server VAD's
`create_response` is off; the local backend has the same flag), any response that starts
anyway is cancelled unheard, and the caller's lines are kept. Handing back tells the model,
as conversation context, that a person spoke with the caller between two times and what the
caller said then; it answers when the caller next speaks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime


@dataclass
class StaffHold:
    user: str
    since: datetime = field(default_factory=lambda: datetime.now(UTC))
    caller_lines: list[str] = field(default_factory=list)


def took_over_line(user: str) -> str:
    return f"Staff member {user} took over the call; the agent is silent."


def handed_back_line(user: str, reason: str) -> str:
    if reason == "handed back":
        return f"Staff member {user} handed the call back to the agent."
    return f"The call went back to the agent: staff member {user}'s connection {reason}."


def hand_back_context(hold: StaffHold, until: datetime) -> str:
    """What the model is told when the call comes back to it."""
    span = f"{hold.since:%H:%M:%S} and {until:%H:%M:%S} UTC"
    if hold.caller_lines:
        said = " ".join(f"“{line}”" for line in hold.caller_lines)
        heard = f"What the caller said in that time: {said}"
    else:
        heard = "The caller said nothing you could hear in that time."
    return (
        f"Between {span} a member of staff spoke with the caller directly and you stayed "
        f"silent; you did not hear what the staff member said. {heard} The call is yours "
        "again: do not speak now, answer when the caller next speaks."
    )
