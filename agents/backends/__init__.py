"""Voice backends: one per call, chosen by the agent's `backend` field."""

from __future__ import annotations

import importlib

from .base import AgentConfig, Backend, BackendUnavailable


def backend_for(config: AgentConfig, *, call_sid: str) -> Backend:
    """A new, unconnected backend for this agent; BackendUnavailable if there is none."""
    if config.backend == "openai_realtime":
        from .openai_realtime import OpenAIRealtimeBackend

        return OpenAIRealtimeBackend(config, call_sid=call_sid)
    if config.backend == "local":
        # Imported lazily: it needs espeak-ng, and it is optional in production.
        try:
            local = importlib.import_module("agents.backends.local")
        except ImportError as error:
            raise BackendUnavailable(f"the local backend is not available: {error}") from error
        return local.LocalBackend(config, call_sid=call_sid)
    raise BackendUnavailable(f"unknown backend {config.backend!r} for agent {config.name!r}")
