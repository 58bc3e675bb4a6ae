"""Twilio's `<Dial>` as the emulator runs it: the person called, their whisper, the action.

`dial_run` plays what Twilio does with a `<Dial action><Number url>…</Number></Dial>` the
server put on a call: it rings the number, and for each outcome a test (or `simulate_call`)
chooses per number it does what Twilio would:

- ``busy``, ``no-answer``, ``failed``: nobody answers; the action gets that DialCallStatus.
- ``press:DIGITS`` (``accept`` is ``press:1``, ``reject`` is ``press:2``, ``silent`` is
  ``press:``): the person answers. A `<Number url>` is requested for their leg (signed, with
  their own CallSid and the caller's as ParentCallSid) and run: its `<Gather>` gets DIGITS
  (none: it times out and the verbs after it run). A `<Hangup>` ends their leg; reaching the
  end of the document bridges the caller to them. Either way their leg was answered, so the
  action gets ``completed``, as Twilio reports it: whether the person took the call is only
  known from what the whisper's answer said.

The `<Dial action>` is then posted and its TwiML returned for the caller's side to follow.
"""

from __future__ import annotations

import secrets
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

# POST a signed webhook to an absolute public URL; return the TwiML answered.
Post = Callable[[str, dict[str, str]], Awaitable[str]]

ALIASES = {"accept": "press:1", "reject": "press:2", "silent": "press:"}
UNANSWERED = ("busy", "no-answer", "failed")
# How long a bridged conversation lasts, as reported in DialCallDuration.
BRIDGED_DURATION_S = 5


@dataclass
class DialRun:
    """What happened on one `<Dial>`, and what its action answered."""

    number: str
    outcome: str
    dial_status: str = ""
    bridged: bool = False
    whisper: str | None = None  # the whisper's TwiML, if the person answered and had one
    whisper_said: list[str] = field(default_factory=list)
    gather_answer: str | None = None
    action_twiml: str | None = None


def dial_outcome_normalise(outcome: str) -> str:
    outcome = ALIASES.get(outcome, outcome)
    if outcome not in UNANSWERED and not outcome.startswith("press:"):
        raise ValueError(
            f"a dial outcome is busy, no-answer, failed, accept, reject, silent or press:KEYS,"
            f" not {outcome!r}"
        )
    return outcome


def _verbs(document: str) -> list[ET.Element]:
    return list(ET.fromstring(document))


def _params(**values: str) -> dict[str, str]:
    return {key: value for key, value in values.items() if value is not None}


async def dial_run(
    twiml: str,
    *,
    post: Post,
    call_sid: str,
    account_sid: str,
    caller_number: str = "",
    outcome_for: Callable[[str], str] = lambda number: "accept",
) -> DialRun | None:
    """Run the first `<Dial>` of `twiml`; None if it has none."""
    root = ET.fromstring(twiml)
    dial = root.find(".//Dial")
    if dial is None:
        return None
    number_noun = dial.find("Number")
    number = (
        (number_noun.text or "").strip() if number_noun is not None else (dial.text or "").strip()
    )
    run = DialRun(number=number, outcome=dial_outcome_normalise(outcome_for(number)))
    child_sid = "CA" + secrets.token_hex(16)
    if run.outcome in UNANSWERED:
        run.dial_status = run.outcome
    else:
        run.dial_status = "completed"
        url = number_noun.get("url") if number_noun is not None else None
        run.bridged = True
        if url:
            run.bridged = await _whisper(run, url, post, child_sid, call_sid, account_sid, number)
    action = dial.get("action")
    if action:
        params = _params(
            AccountSid=account_sid,
            CallSid=call_sid,
            CallStatus="in-progress",
            From=caller_number,
            DialCallSid=child_sid,
            DialCallStatus=run.dial_status,
            DialCallDuration=str(BRIDGED_DURATION_S if run.bridged else 0),
        )
        run.action_twiml = await post(action, params)
    return run


async def _whisper(
    run: DialRun,
    url: str,
    post: Post,
    child_sid: str,
    parent_sid: str,
    account_sid: str,
    number: str,
) -> bool:
    """Run the person's `<Number url>` document; True if it ends with the legs bridged."""
    leg = _params(
        AccountSid=account_sid,
        CallSid=child_sid,
        ParentCallSid=parent_sid,
        CallStatus="in-progress",
        Direction="outbound-dial",
        To=number,
    )
    document = run.whisper = await post(url, leg)
    digits = run.outcome.removeprefix("press:")
    while True:
        for verb in _verbs(document):
            if verb.tag == "Hangup":
                return False
            if verb.tag == "Say":
                run.whisper_said.append((verb.text or "").strip())
            if verb.tag != "Gather":
                continue
            run.whisper_said.extend((say.text or "").strip() for say in verb.iter("Say"))
            wanted = int(verb.get("numDigits", "0") or 0)
            pressed = digits[:wanted] if wanted else digits
            if pressed and verb.get("action"):
                document = run.gather_answer = await post(
                    verb.get("action"), {**leg, "Digits": pressed}
                )
                break  # Twilio runs the action's document instead of what follows
            # No key: the Gather times out and the verbs after it run.
        else:
            return True  # the end of the document: the legs are bridged
