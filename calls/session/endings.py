"""How a call ends, or leaves the agent: goodbye, transfer, model failure, limits.

Hang-ups and transfers go through calls.services, run shielded from the session's own
cancellation: a `stop` that arrives meanwhile (a transfer always causes one) must not cut
them short. However it ends, the session then ends the stream through its port.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from agents import assets
from agents.backends.base import TargetConfig, ToolCall
from callmedia.audio import BYTES_PER_MS
from calls import services
from calls.models import Actor, EndReason
from calls.session.state import Phase

if TYPE_CHECKING:
    from calls.session.agent import AgentSession

logger = logging.getLogger(__name__)

# How long a goodbye or "connecting you now" may take to play before we act anyway.
PLAYOUT_WAIT_S = 10.0
# Extra time, beyond a clip's length, for its mark to come back.
CLIP_WAIT_MARGIN_S = 5.0
# How long the model may take to produce a voicemail message.
VOICEMAIL_GENERATION_S = 30.0

APOLOGY_CLIP = "apology"
GOODBYE_CLIP = "goodbye"


class Endings:
    """The session's endings; each runs as one of its action tasks."""

    def __init__(self, session: AgentSession) -> None:
        self.session = session

    # -- the agent says goodbye ----------------------------------------------------------

    async def goodbye(self, event: ToolCall) -> None:
        """The end_call tool: hang up once the goodbye has played."""
        session = self.session
        if session.phase is not Phase.ACTIVE:
            return
        if not await self._played_out():
            logger.info("Call %s: goodbye interrupted; staying on the call", session.call_sid)
            session.recorder.event("goodbye_interrupted", Actor.CALLER, {"reason": event.arguments})
            session.tool_result(
                event.call_id,
                "The caller interrupted your goodbye, so the call is still connected. "
                "Listen to what they say and carry on.",
            )
            return
        reason = str(event.arguments.get("reason", ""))[:200]
        logger.info("Call %s: agent ends the call (%s)", session.call_sid, reason)
        await self.hang_up(EndReason.AGENT_ENDED, Actor.AGENT)

    # -- an answering machine -----------------------------------------------------------

    async def voicemail(self, message: str) -> None:
        """After the beep: say the message word for word, and hang up once it has played."""
        session = self.session
        if session.phase is not Phase.ACTIVE:
            return
        logger.info("Call %s: leaving a voicemail message", session.call_sid)
        generated = await session.speak(message, VOICEMAIL_GENERATION_S)
        played = generated and await self._played_out()
        if played:
            session.recorder.event("voicemail_left", Actor.AGENT, {"chars": len(message)})
        else:
            session.recorder.event("voicemail_failed", Actor.SYSTEM, {"generated": generated})
        await self.hang_up(EndReason.VOICEMAIL if played else EndReason.MACHINE, Actor.AGENT)

    async def machine(self, answered_by: str) -> None:
        """A machine (no message to leave) or a fax answered: hang up at once."""
        session = self.session
        if session.phase is not Phase.ACTIVE:
            return
        logger.info("Call %s: %s answered; hanging up", session.call_sid, answered_by)
        await self.hang_up(EndReason.MACHINE, Actor.SYSTEM)

    # -- transfers -------------------------------------------------------------------------

    async def transfer_tool(self, event: ToolCall) -> None:
        """The transfer_to_human tool; a failure goes back to the model as its result."""
        session = self.session
        config = session.config
        assert config is not None
        target = event.arguments.get("target")
        if target not in config.target_names:
            session.tool_result(
                event.call_id,
                f"There is nobody called {target!r}. Choose one of: "
                + ", ".join(config.target_names),
            )
            return
        # The caller asked for a person: transfer even if they talk over "connecting you".
        await self._played_out()
        error = await self._transfer(target, Actor.AGENT, str(event.arguments.get("reason", "")))
        if error:
            session.tool_result(
                event.call_id,
                f"The transfer failed ({error}). The caller is still with you: tell them you "
                "could not connect them, and offer to help or to try again later.",
            )

    async def key_transfer(self, digit: str, target: TargetConfig) -> None:
        """The caller pressed the agent's transfer key."""
        session = self.session
        error = await self._transfer(target.name, Actor.CALLER, f"caller pressed {digit}")
        if error and session.backend is not None:
            session.backend.add_context(
                f"Transferring the caller failed ({error}). Tell them, and offer to help."
            )
            session.respond()

    async def _transfer(self, target_name: str, actor: str, reason: str) -> str:
        """Hand the caller to `target_name`; return an error in words, or "" on success."""
        session = self.session
        if session.phase is Phase.ACTIVE:
            session.phase = Phase.ENDING
        try:
            await session.control(
                services.call_transfer(
                    call_id=session.call_id, actor=actor, target_name=target_name, reason=reason
                )
            )
        except services.CallControlError as error:
            logger.warning(
                "Call %s: transfer to %s failed: %s", session.call_sid, target_name, error
            )
            if session.phase is Phase.ENDING:
                session.phase = Phase.ACTIVE  # the caller is still with the agent
            return str(error)
        logger.info("Call %s: transferred to %s", session.call_sid, target_name)
        return ""

    # -- the model fails ---------------------------------------------------------------------

    def fail(self, failure: str, detail: str) -> None:
        """The model is gone: stop listening to it now, and recover in a task."""
        session = self.session
        if session.phase is not Phase.ACTIVE:
            return
        session.phase = Phase.FAILING
        session.spawn_action(self._recover(failure, detail), "recover")

    async def _recover(self, failure: str, detail: str) -> None:
        """Apologise, then hand the caller to a person, or hang up if there is nobody."""
        session = self.session
        logger.error("Call %s: model failed (%s): %s", session.call_sid, failure, detail)
        session.recorder.event(
            "agent_error", Actor.SYSTEM, {"failure": failure, "detail": detail[:500]}
        )
        await session.drop_backend()
        await self._play_clip(APOLOGY_CLIP)
        target = session.config.default_target if session.config is not None else None
        if target is not None:
            try:
                await session.control(
                    services.call_transfer(
                        call_id=session.call_id,
                        actor=Actor.SYSTEM,
                        target_name=target.name,
                        reason=f"model failure: {failure}",
                    )
                )
                return
            except services.CallControlError as error:
                logger.error("Call %s: fallback transfer failed: %s", session.call_sid, error)
        await self.hang_up(EndReason.FAILED, Actor.SYSTEM)

    # -- limits ------------------------------------------------------------------------------

    async def limit_reached(self, limit: str, seconds: int) -> None:
        """The call ran too long, or nobody spoke for too long: say goodbye and hang up."""
        session = self.session
        if session.phase is not Phase.ACTIVE:
            return
        logger.info("Call %s: %s (%ss) reached; ending the call", session.call_sid, limit, seconds)
        session.recorder.event("limit_reached", Actor.SYSTEM, {"limit": limit, "seconds": seconds})
        session.cut_off("limit_cut_off", Actor.SYSTEM)
        session.phase = Phase.ENDING
        await session.drop_backend()
        await self._play_clip(GOODBYE_CLIP)
        await self.hang_up(EndReason.TIMEOUT, Actor.SYSTEM)

    # -- the end ---------------------------------------------------------------------------

    async def hang_up(self, reason: str, actor: str) -> None:
        session = self.session
        if session.phase is Phase.ACTIVE:
            session.phase = Phase.ENDING
        try:
            await session.control(
                services.call_hangup(call_id=session.call_id, actor=actor, reason=reason)
            )
        except services.CallControlError as error:
            # Ending the stream still ends the call: Twilio runs <Connect action>.
            logger.error("Call %s: hang-up failed: %s", session.call_sid, error)
        try:
            await session.port.end_stream()
        except Exception as error:  # the socket may be gone already; the call is over either way
            logger.debug("Call %s: ending the stream: %r", session.call_sid, error)

    async def _played_out(self) -> bool:
        """Wait for what was sent to play; False only if a clear cut it short."""
        session = self.session
        session.end_segment()
        loop = asyncio.get_running_loop()
        started = loop.time()
        if await session.port.wait_played(PLAYOUT_WAIT_S):
            return True
        if loop.time() - started >= PLAYOUT_WAIT_S - 0.05:
            # Twilio never confirmed: act anyway, a call that never ends is worse.
            logger.warning("Call %s: no mark echo after %ss", session.call_sid, PLAYOUT_WAIT_S)
            return True
        return False

    async def _play_clip(self, name: str) -> bool:
        ulaw = assets.clip(name)
        port = self.session.port
        await port.play_ulaw(ulaw, name)
        return await port.wait_played(len(ulaw) / (BYTES_PER_MS * 1000) + CLIP_WAIT_MARGIN_S)
