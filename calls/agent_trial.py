"""Test an agent from its admin page: a simulated call against this server, as Twilio would
place it (calls.simulator), run in the background while the page shows its progress.

What the page shows is the call's own record (its transcript and log, from the database,
so any server process can show it) and the simulated caller's account of the call (kept in
this process while it runs, and after, until the server restarts).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from django.conf import settings
from django.db import close_old_connections

from agents.models import Agent

from .simulator.call import Action, SimulatedCall

logger = logging.getLogger(__name__)

# Long enough for a greeting, one thing said by the caller, and the agent's answer.
TRIAL_CALL_SECONDS = 12.0
TRIAL_CALLER_SAYS = "Hello, can you help me, please?"
TRIAL_FROM_NUMBER = "+15005550006"


class AgentTrialError(Exception):
    """The trial cannot be run; `str()` says why, in words fit for staff."""


@dataclass
class AgentTrial:
    call_sid: str
    agent_id: int
    running: bool = True
    lines: list[str] = field(default_factory=list)  # the simulated caller's log, in order
    outcome: str = ""  # how the call ended, or why it could not run

    @property
    def progress(self) -> list[str]:
        return list(self.lines)


_trials: dict[str, AgentTrial] = {}
_lock = threading.Lock()


def agent_trial_get(*, call_sid: str) -> AgentTrial | None:
    with _lock:
        return _trials.get(call_sid)


def agent_trial_start(*, agent: Agent, server_url: str) -> AgentTrial:
    """Place a simulated call to `agent` through `server_url` (this server), in a thread."""
    if agent.phone_number:
        number = str(agent.phone_number)
    elif agent.is_default:
        number = "+15005550001"  # any number no agent answers reaches the default agent
    else:
        raise AgentTrialError(
            "This agent has no number and is not the default agent, so no call reaches it."
        )
    if not agent.is_active:
        raise AgentTrialError("This agent is not active: calls to its number are refused.")
    lines: list[str] = []
    simulated = SimulatedCall(
        server_url=server_url,
        to_number=number,
        from_number=TRIAL_FROM_NUMBER,
        duration_s=TRIAL_CALL_SECONDS,
        actions=[Action("say", TRIAL_CALLER_SAYS)],
        rest_port=_rest_port(),
        log=lines.append,  # the caller's account, line by line
    )
    trial = AgentTrial(call_sid=simulated.call_sid, agent_id=agent.pk, lines=lines)
    with _lock:
        _trials[trial.call_sid] = trial
    thread = threading.Thread(
        target=_run, args=(simulated, trial), name=f"agent-trial-{trial.call_sid}", daemon=True
    )
    thread.start()
    return trial


def _rest_port() -> int:
    """Where this server sends Twilio REST calls, if that is this machine: the emulator
    listens there, so the agent's hang-ups and transfers reach it."""
    base = urlsplit(settings.TWILIO_API_BASE_URL)
    if base.hostname in ("127.0.0.1", "localhost") and base.port:
        return base.port
    # Elsewhere (Twilio itself): the emulator takes any free port; nothing will call it.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run(simulated: SimulatedCall, trial: AgentTrial) -> None:
    try:
        result = asyncio.run(simulated.run())
    except Exception as error:  # the page must say the trial failed, and why
        logger.exception("Agent trial %s failed", trial.call_sid)
        trial.outcome = f"The test call could not be completed: {error}"
    else:
        ended = {
            "hangup": "the agent hung up",
            "transfer": f"the agent transferred the caller to {result.transferred_to}",
            "stream_closed": "the server closed the call's audio",
            "duration": "the test caller hung up at the end of the test",
            "caller": "the test caller hung up",
            "refused": "the server refused the call",
        }.get(result.end_reason or "", "it ended")
        trial.outcome = f"The call ended: {ended}."
        if result.errors:
            trial.outcome += " Problems: " + "; ".join(result.errors)
    finally:
        trial.running = False
        close_old_connections()
