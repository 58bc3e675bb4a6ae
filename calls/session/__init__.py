"""The agent runtime for one call: between the media stream consumer and a model backend."""

from calls.session.agent import AgentSession

__all__ = ["AgentSession"]
