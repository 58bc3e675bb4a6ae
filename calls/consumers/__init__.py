"""WebSocket consumers: Twilio's media stream (media.py), and the staff's live feed (live.py)."""

from calls.consumers.live import LiveCallsConsumer
from calls.consumers.media import MediaStreamConsumer

__all__ = ["LiveCallsConsumer", "MediaStreamConsumer"]
