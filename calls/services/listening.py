"""Staff listening in on a live call, and taking it over from the agent.

Listening is recorded (who, from when to when) in the call's event log; the audio itself
goes from the process holding the stream to the listeners' sockets over the channel layer
(calls.consumers.listening, calls.consumers.listen). Take-over and hand-back are requests
to the stream like every staff action (calls.services.control.call_request): the stream acts
and confirms, and only then is the event written.
"""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async

from ..models import Actor, Call
from .control import CallControlError, _ask_stream, _live_call, _stream_is_live, call_send
from .transcripts import call_event_record

NO_AUDIO = "This call has no live audio stream to listen to."


def listen_begin(*, call_id: str, user: Any) -> None:
    """A member of staff starts listening; raises CallControlError if there is nothing to hear."""
    call = _live_call(call_id)
    if not _stream_is_live(call_id):
        raise CallControlError(NO_AUDIO)
    call_event_record(call=call, kind="listen_started", actor=Actor.STAFF, user=user)


def listen_end(*, call_id: str, user: Any, seconds: float) -> None:
    call = Call.objects.filter(pk=call_id).first()
    if call is not None:
        data = {"seconds": round(seconds, 1)}
        call_event_record(call=call, kind="listen_stopped", actor=Actor.STAFF, user=user, data=data)


async def listen_announce(*, call_id: str, kind: str, channel: str) -> None:
    """Tell the stream a listener joined, is still there, or left (`kind`: join, keepalive,
    leave). Best effort: a lost keepalive is made up by the next one."""
    await call_send(call_id, {"type": f"listen.{kind}", "channel": channel})


@database_sync_to_async
def _record(call_id: str, kind: str, user: Any, data: dict[str, Any]) -> None:
    call = Call.objects.filter(pk=call_id).first()
    if call is not None:
        call_event_record(call=call, kind=kind, actor=Actor.STAFF, user=user, data=data)


@database_sync_to_async
def _check_live(call_id: str) -> None:
    _live_call(call_id)
    if not _stream_is_live(call_id):
        raise CallControlError("This call has no live audio stream to talk on.")


async def call_take_over(*, call_id: str, user: Any, holder: str) -> None:
    """Silence the agent and let this staff member's microphone reach the caller.

    `holder` is the listener socket's channel: only its audio is played, and the call goes
    back to the agent if that socket closes or its keepalives stop.
    """
    await _check_live(call_id)
    message = {"type": "call.take_over", "holder": holder, "user": user.get_username()}
    await _ask_stream(call_id, message, "take_over", Actor.STAFF, user)
    await _record(call_id, "take_over", user, {})


async def call_hand_back(*, call_id: str, user: Any, holder: str) -> None:
    """Give the call back to the agent, which answers when the caller next speaks."""
    message = {"type": "call.hand_back", "holder": holder}
    await _ask_stream(call_id, message, "hand_back", Actor.STAFF, user)
    await _record(call_id, "hand_back", user, {})


async def staff_audio_send(*, call_id: str, holder: str, audio: bytes) -> None:
    """Microphone audio (8 kHz mu-law, whole 20 ms frames) for the caller."""
    await call_send(call_id, {"type": "call.staff_audio", "holder": holder, "audio": audio})
