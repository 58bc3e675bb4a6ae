"""The agent a session speaks as, loaded once per call."""

from agents.backends.base import AgentConfig, TargetConfig
from agents.models import Agent


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
    )
