"""The agent a session speaks as, and what the call asks of it, loaded once per call."""

import dataclasses
from dataclasses import dataclass

from agents.backends.base import AgentConfig, TargetConfig
from agents.models import Agent
from agents.prompt import prompt_fill
from calls.models import Call


def agent_config_load(agent_id: int | None) -> AgentConfig | None:
    agent = Agent.objects.filter(pk=agent_id).first() if agent_id is not None else None
    if agent is None:
        return None
    targets = tuple(
        TargetConfig(name=t.name, description=t.description, is_default=t.is_default)
        for t in agent.transfer_targets.all()
    )
    return AgentConfig(
        id=agent.pk,
        name=agent.name,
        instructions=agent.instructions,
        greeting=agent.greeting,
        voice=agent.voice,
        model=agent.model,
        backend=agent.backend,
        transfer_digit=agent.transfer_digit,
        max_call_seconds=agent.max_call_seconds,
        idle_timeout_seconds=agent.idle_timeout_seconds,
        targets=targets,
        voicemail_message=agent.voicemail_message,
    )


@dataclass(frozen=True)
class CallPlan:
    """The agent for this call, with the call's variables filled in, and its detection."""

    config: AgentConfig | None
    machine_detection: str = ""  # what Twilio was asked ("" = no detection)
    answered_by: str = ""  # the verdict, if it came before the stream
    missing_variables: tuple[str, ...] = ()  # placeholders the call had no value for


def call_plan_load(call_id: str, agent_id: int | None) -> CallPlan:
    config = agent_config_load(agent_id)
    call = (
        Call.objects.filter(pk=call_id)
        .values("machine_detection", "answered_by", "prompt_variables")
        .first()
    )
    if call is None:
        return CallPlan(config)
    missing: set[str] = set()
    variables = call["prompt_variables"] or {}
    if config is not None and variables:
        filled = {}
        for name in ("instructions", "greeting", "voicemail_message"):
            filled[name], unknown = prompt_fill(getattr(config, name), variables)
            missing |= unknown
        config = dataclasses.replace(config, **filled)
    return CallPlan(
        config,
        machine_detection=call["machine_detection"],
        answered_by=call["answered_by"],
        missing_variables=tuple(sorted(missing)),
    )
