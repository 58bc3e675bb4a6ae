"""The functions the model may call, as Realtime `tools`, built from the agent's targets."""

from __future__ import annotations

from typing import Any

from .backends.base import AgentConfig

END_CALL = "end_call"
TRANSFER_TO_HUMAN = "transfer_to_human"


def end_call_tool() -> dict[str, Any]:
    return {
        "type": "function",
        "name": END_CALL,
        "description": (
            "Hang up the phone call. First say a short goodbye to the caller, then call this. "
            "The call ends once your goodbye has played; if the caller interrupts it, the call "
            "stays connected and you are told so."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "reason": {
                    "type": "string",
                    "description": "Why the call is ending, in a few words, for the call log.",
                }
            },
            "required": ["reason"],
            "additionalProperties": False,
        },
    }


def transfer_tool(config: AgentConfig) -> dict[str, Any] | None:
    """The hand-off tool, or None when the agent has nobody to hand callers to."""
    if not config.targets:
        return None
    choices = "\n".join(
        f"- {target.name}: {target.description or 'no description'}"
        + (" (the default)" if target.is_default else "")
        for target in config.targets
    )
    return {
        "type": "function",
        "name": TRANSFER_TO_HUMAN,
        "description": (
            "Transfer the caller to a person. First tell the caller you are connecting them, "
            "then call this; the transfer starts once that sentence has played. If it fails "
            "you are told, so you can tell the caller. The people you can transfer to:\n" + choices
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "target": {
                    "type": "string",
                    "enum": list(config.target_names),
                    "description": "Who to transfer the caller to.",
                },
                "reason": {
                    "type": "string",
                    "description": "Why the caller needs a person, in a few words.",
                },
            },
            "required": ["target", "reason"],
            "additionalProperties": False,
        },
    }


def tools_for(config: AgentConfig) -> list[dict[str, Any]]:
    tools = [end_call_tool()]
    transfer = transfer_tool(config)
    if transfer is not None:
        tools.append(transfer)
    return tools
