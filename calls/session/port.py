"""What the media stream offers the agent session: the StreamPort.

The session sees the stream only through this narrow interface; the consumer that owns
Twilio's socket implements it (calls.consumers.media). Everything the session calls per
audio delta is synchronous and O(1); what awaits is for endings and clips.
"""

from collections.abc import Awaitable
from typing import Protocol


class StreamPort(Protocol):
    # The stream clock: Twilio's latest media timestamp, in ms since the stream started.
    now_ms: int

    def send_audio(self, item_id: str, payload_b64: str, nbytes: int) -> None:
        """Queue one chunk of an item's audio (base64 mu-law) for the caller."""

    def end_segment(self) -> None:
        """Close the audio sent so far with a mark, so its echo tells when it has played."""

    def clear(self) -> dict[str, int]:
        """Barge-in: drop everything not yet played; return {item_id: ms heard} for items cut."""

    def is_audible(self) -> bool:
        """Is our audio believed to be playing to the caller now?"""

    def heard_ms(self, item_id: str) -> int:
        """How much of an item's audio the caller has heard so far."""

    def sent_ms(self, item_id: str) -> int:
        """How much of an item's audio was sent to the caller."""

    async def wait_played(self, timeout_s: float) -> bool:
        """True once all audio sent so far has played; False on timeout or if cleared."""

    async def play_ulaw(self, ulaw: bytes, item_id: str) -> None:
        """Play a whole clip (headerless 8 kHz mu-law), closed by one mark."""

    def hold(self) -> None:
        """Keep what is sent from now on queued until `flush`."""

    def flush(self) -> Awaitable[None]:
        """Write what is queued, in the caller's task."""

    async def end_stream(self) -> None:
        """End the call's stream: stops the session, records the stream, closes the socket."""
