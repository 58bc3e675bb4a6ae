"""WebSocket consumers: Twilio's media stream (media.py), the staff's live feed (live.py), and
a staff member listening to (and taking over) one call (listen.py)."""

from calls.consumers.listen import ListenConsumer
from calls.consumers.live import LiveCallsConsumer
from calls.consumers.media import MediaStreamConsumer

__all__ = ["ListenConsumer", "LiveCallsConsumer", "MediaStreamConsumer"]
