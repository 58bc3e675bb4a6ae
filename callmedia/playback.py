"""Track what the caller has actually heard of the audio we sent to Twilio.

The model must be truncated at the point the caller heard, not at the point we sent
(docs/bridge-pitfalls.md, pitfall 2). Pure logic: the consumer reports what it sent, the marks it
sent and their echoes, and Twilio's stream clock; nothing here reads a wall clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

# How long after its estimated end unmarked audio still counts as playing (see is_audible).
UNMARKED_SLACK_MS = 200


@dataclass(slots=True)
class Segment:
    """Audio sent between two marks; Twilio echoes `name` once all of it has played."""

    name: str
    sent_at_ms: int  # stream time the first byte was sent
    # (item_id, nbytes) in send order; consecutive sends of one item are merged.
    parts: list[tuple[str, int]] = field(default_factory=list)
    # (item_id, nbytes, sent_at_ms) per send. Kept apart from parts because a send can
    # not start playing before it reached Twilio: that models the model being slower
    # than real time (Twilio then plays nothing in between).
    sends: list[tuple[str, int, int]] = field(default_factory=list)
    nbytes: int = 0
    played_at_ms: int | None = None  # stream time its mark echoed

    def add(self, item_id: str, nbytes: int, now_ms: int) -> None:
        self.sends.append((item_id, nbytes, now_ms))
        self.nbytes += nbytes
        if self.parts and self.parts[-1][0] == item_id:
            self.parts[-1] = (item_id, self.parts[-1][1] + nbytes)
        else:
            self.parts.append((item_id, nbytes))


class PlaybackTracker:
    """Estimate, per conversation item, how many ms of its audio the caller has heard.

    Model: Twilio plays what we send continuously, in send order, at `bytes_per_ms`;
    a send cannot start before it was sent, nor before the audio ahead of it finished.
    A mark echo says everything before it has played, so the timeline is re-anchored
    at each echo. After `clear`, Twilio drops its buffer and echoes every pending mark
    at once; those echoes prove nothing and are ignored.

    Precision: all times are Twilio's stream clock as seen in the latest inbound media
    `timestamp`, which advances in 20 ms steps and reaches us with network delay, so
    estimates are good to a few tens of ms. "Heard" means played out by Twilio: the
    carrier's and the phone's jitter buffers add latency this cannot see. Between echoes
    the position is interpolated, so a stall inside Twilio shows up only at the next
    echo; keep segments short (one per response or sentence) when that matters.
    """

    def __init__(self, *, bytes_per_ms: int = 8, mark_prefix: str = "seg") -> None:
        if bytes_per_ms <= 0:
            raise ValueError(f"bytes_per_ms must be positive, got {bytes_per_ms}")
        self._bytes_per_ms = bytes_per_ms
        self._mark_prefix = mark_prefix
        self._segment_count = 0
        self._open: Segment | None = None  # sent audio whose mark is not sent yet
        self._pending: deque[Segment] = deque()  # mark sent, echo not received yet
        self._heard_bytes: dict[str, int] = {}  # from echoed segments and cleared ones
        self._sent_bytes: dict[str, int] = {}
        # Stream time from which Twilio's buffer was last known empty (echo or clear).
        self._anchor_ms: float | None = None
        # Estimated stream time at which everything sent so far will have played.
        self._end_ms: float | None = None

    def audio_sent(self, item_id: str, nbytes: int, now_ms: int) -> None:
        """Record audio just sent to Twilio; it joins the open segment."""
        if nbytes < 0:
            raise ValueError(f"nbytes must not be negative, got {nbytes}")
        if nbytes == 0:
            return
        if self._open is None:
            self._segment_count += 1
            name = f"{self._mark_prefix}-{self._segment_count}"
            self._open = Segment(name=name, sent_at_ms=now_ms)
        self._open.add(item_id, nbytes, now_ms)
        self._sent_bytes[item_id] = self._sent_bytes.get(item_id, 0) + nbytes
        start_ms = now_ms if self._end_ms is None else max(now_ms, self._end_ms)
        self._end_ms = start_ms + nbytes / self._bytes_per_ms

    def close_segment(self) -> str | None:
        """End the open segment; return the mark name to send right after its audio."""
        if self._open is None:
            return None
        segment, self._open = self._open, None
        self._pending.append(segment)
        return segment.name

    def mark_received(self, name: str, now_ms: int) -> Segment | None:
        """Handle a mark echo; return the segment that finished playing, if any.

        None for marks this tracker did not create and for echoes of audio that a
        clear dropped.
        """
        # Names are never reused and a clear forgets its pending segments, so the
        # echoes that follow a clear land here as unknown.
        if all(segment.name != name for segment in self._pending):
            return None
        # Twilio echoes in order, so a later echo also proves the earlier segments played.
        while True:
            segment = self._pending.popleft()
            segment.played_at_ms = now_ms
            for item_id, nbytes in segment.parts:
                self._heard_bytes[item_id] = self._heard_bytes.get(item_id, 0) + nbytes
            if segment.name == name:
                break
        self._anchor_ms = now_ms
        self._end_ms = self._estimate_end_ms()
        return segment

    def cleared(self, now_ms: int) -> dict[str, int]:
        """Record that we sent `clear`; return {item_id: heard_ms} for items cut short.

        What was heard up to now is frozen, the pending marks' coming echoes are ignored
        and the open segment is discarded (its mark will never be sent).
        """
        heard_now = self._heard_unechoed_bytes(now_ms)
        unechoed: dict[str, int] = {}
        for segment in self._unechoed():
            for item_id, nbytes in segment.parts:
                unechoed[item_id] = unechoed.get(item_id, 0) + nbytes
        cut: dict[str, int] = {}
        for item_id, nbytes in unechoed.items():
            heard = heard_now.get(item_id, 0)
            self._heard_bytes[item_id] = self._heard_bytes.get(item_id, 0) + heard
            if heard < nbytes:
                cut[item_id] = self._heard_bytes[item_id] // self._bytes_per_ms
        self._pending.clear()
        self._open = None
        self._anchor_ms = now_ms
        self._end_ms = now_ms
        return cut

    def heard_ms(self, item_id: str, now_ms: int) -> int:
        """Ms of the item the caller has heard, never more than was sent."""
        heard = self._heard_bytes.get(item_id, 0)
        heard += self._heard_unechoed_bytes(now_ms).get(item_id, 0)
        return heard // self._bytes_per_ms

    def is_audible(self, now_ms: int) -> bool:
        """Is our audio believed to be playing now?

        Until a segment's mark echoes it counts as playing; audio whose mark is not
        sent yet has no echo coming, so for it the timeline estimate decides, with
        UNMARKED_SLACK_MS of margin: a model streaming at about real time keeps the
        estimated end close to "now", and the stream clock reaches us late and in
        20 ms steps, so without margin the agent would seem silent between deltas.
        """
        if self._pending:
            return True
        return (
            self._open is not None
            and self._end_ms is not None
            and self._end_ms + UNMARKED_SLACK_MS > now_ms
        )

    @property
    def all_played(self) -> bool:
        """Every mark has echoed and no sent audio is waiting for its mark."""
        return not self._pending and self._open is None

    @property
    def pending_marks(self) -> tuple[str, ...]:
        return tuple(segment.name for segment in self._pending)

    def sent_ms(self, item_id: str) -> int:
        return self._sent_bytes.get(item_id, 0) // self._bytes_per_ms

    def _unechoed(self) -> Iterator[Segment]:
        yield from self._pending
        if self._open is not None:
            yield self._open

    def _heard_unechoed_bytes(self, now_ms: int) -> dict[str, int]:
        # Walk the sends Twilio has not confirmed, in play order, from the last anchor.
        heard: dict[str, int] = {}
        end_ms = self._anchor_ms
        for segment in self._unechoed():
            for item_id, nbytes, sent_at_ms in segment.sends:
                start_ms = sent_at_ms if end_ms is None else max(sent_at_ms, end_ms)
                if start_ms >= now_ms:
                    return heard
                played = min(nbytes, int((now_ms - start_ms) * self._bytes_per_ms))
                heard[item_id] = heard.get(item_id, 0) + played
                end_ms = start_ms + nbytes / self._bytes_per_ms
        return heard

    def _estimate_end_ms(self) -> float | None:
        end_ms = self._anchor_ms
        for segment in self._unechoed():
            for _, nbytes, sent_at_ms in segment.sends:
                start_ms = sent_at_ms if end_ms is None else max(sent_at_ms, end_ms)
                end_ms = start_ms + nbytes / self._bytes_per_ms
        return end_ms
