"""Answering-machine detection: Twilio's verdict on a call we placed, and what it means.

Twilio POSTs the verdict (`AnsweredBy`) to /twilio/voice/amd while our stream is already
running, usually to another server process than the one holding the stream: the verdict is
written first, then sent to the call's channel-layer group (`call.amd`), so the session
either finds it in the database when it starts or receives it (no gap between the two).
docs/twilio-rest.md#answering-machine-detection.
"""

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from ..models import Actor, Call, call_group_name
from .transcripts import call_event_record

logger = logging.getLogger(__name__)

HUMAN = "human"
UNKNOWN = "unknown"
FAX = "fax"
MACHINE_START = "machine_start"
# Detection waited for the greeting to end: the message can be left now.
MESSAGE_ENDS = frozenset({"machine_end_beep", "machine_end_silence", "machine_end_other"})
ANSWERED_BY = frozenset({HUMAN, UNKNOWN, FAX, MACHINE_START, *MESSAGE_ENDS})


def is_machine(answered_by: str) -> bool:
    return answered_by == MACHINE_START or answered_by in MESSAGE_ENDS


def call_amd_record(
    *, call_sid: str, answered_by: str, detection_ms: int | None = None
) -> Call | None:
    """Record Twilio's verdict on `call_sid` (event `amd_result`) and tell its stream."""
    if answered_by not in ANSWERED_BY:
        logger.warning("Call %s: unexpected AnsweredBy %r", call_sid, answered_by)
        answered_by = UNKNOWN
    with transaction.atomic():
        call = Call.objects.select_for_update().filter(sid=call_sid).first()
        if call is None:
            logger.warning("AMD result %s for unknown call %s", answered_by, call_sid)
            return None
        call.answered_by = answered_by
        call.save(update_fields=["answered_by"])
        data: dict[str, object] = {"answered_by": answered_by}
        if detection_ms is not None:
            data["detection_ms"] = detection_ms
        call_event_record(call=call, kind="amd_result", actor=Actor.TWILIO, data=data)
        group = call_group_name(call.id)

        def send() -> None:
            layer = get_channel_layer()
            if layer is not None:
                async_to_sync(layer.group_send)(
                    group, {"type": "call.amd", "answered_by": answered_by}
                )

        transaction.on_commit(send)
    return call
