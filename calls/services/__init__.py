"""Every change of a call's state goes through here.

Webhooks, the stream consumer, the agent session, the admin and the management commands call
these functions and nothing else writes calls. They are synchronous ORM code; async callers
wrap them in `channels.db.database_sync_to_async`. The call control functions are async.

Callers use the package's names (`services.call_hangup`); the modules split them by concern:
webhooks, streams, transcripts (and the event log), control, outbound, outcomes (how a finished call
ended) and analysis (its summary, after it), liveness (which
process holds which stream) and reconcile (ghost calls set right). What the staff feed
sends is `calls.feed`'s; its names are re-exported here for existing callers.
"""

from ..feed import (
    SPEAKERS_AUDIBLE,
    call_broadcast,
    call_speaking_broadcast,
    call_summary,
    live_broadcast,
    transcript_summary,
)
from .amd import call_amd_record
from .analysis import (
    analyses_claim,
    analyses_run_due,
    analyses_select,
    analysis_enqueue,
    analysis_run,
)
from .analytics import calls_analytics
from .control import (
    STREAM_UNANSWERED,
    STREAM_UNREACHABLE,
    CallControlError,
    ControlOutcome,
    StreamUnanswered,
    StreamUnreachable,
    call_clear_audio,
    call_hangup,
    call_play_audio,
    call_request,
    call_say,
    call_send,
    call_transfer,
)
from .dial_outcomes import dial_outcome_record
from .handover import stream_handover_record, stream_resume_twiml
from .hang_ups import HANG_UP_RECORD_WAIT_S, hang_ups_in_flight
from .listening import (
    call_hand_back,
    call_take_over,
    listen_announce,
    listen_begin,
    listen_end,
    staff_audio_send,
)
from .liveness import (
    process_heartbeat,
    process_stopped,
    processes_prune,
    stream_process_attach,
)
from .outbound import call_place_outbound, e164
from .outcomes import call_outcome_refresh, call_outcome_update, calls_outcome_backfill
from .reconcile import (
    Outcome,
    call_mark_ended,
    call_reconcile,
    call_reconcile_claim,
    call_reconciled_end,
    call_resume_prepare,
    calls_reconcile,
    reconcile_candidates,
    reconcile_lease_claim,
    reconcile_lease_release,
)
from .recordings import (
    PurgeResult,
    call_recording_start,
    recording_status_record,
    recordings_purge,
)
from .resume import RESUME_PARAMETER, call_resume, call_resume_twiml
from .search import calls_search
from .streams import (
    STREAM_COUNTERS,
    StreamOpened,
    stream_bad_message_record,
    stream_close,
    stream_open,
    stream_status_record,
)
from .transcripts import (
    call_event_record,
    transcript_add,
    transcript_history,
    transcript_interrupt,
)
from .warm import warm_dial_result, warm_whisper_answer, warm_whisper_twiml
from .webhooks import (
    call_answer,
    call_end_reason_by_status,
    call_end_record,
    call_status_update,
    connect_ended_record,
)

__all__ = [
    "HANG_UP_RECORD_WAIT_S",
    "hang_ups_in_flight",
    "PurgeResult",
    "call_recording_start",
    "recording_status_record",
    "recordings_purge",
    "RESUME_PARAMETER",
    "call_resume",
    "call_resume_twiml",
    "warm_dial_result",
    "warm_whisper_answer",
    "warm_whisper_twiml",
    "analyses_claim",
    "analyses_run_due",
    "analyses_select",
    "analysis_enqueue",
    "analysis_run",
    "call_outcome_refresh",
    "call_outcome_update",
    "calls_search",
    "calls_analytics",
    "calls_outcome_backfill",
    "STREAM_COUNTERS",
    "STREAM_UNANSWERED",
    "STREAM_UNREACHABLE",
    "SPEAKERS_AUDIBLE",
    "CallControlError",
    "ControlOutcome",
    "StreamUnanswered",
    "StreamUnreachable",
    "Outcome",
    "StreamOpened",
    "call_amd_record",
    "call_answer",
    "call_broadcast",
    "call_clear_audio",
    "call_end_reason_by_status",
    "call_end_record",
    "call_event_record",
    "call_hand_back",
    "call_hangup",
    "call_mark_ended",
    "call_place_outbound",
    "call_play_audio",
    "call_request",
    "call_reconcile",
    "call_reconcile_claim",
    "call_reconciled_end",
    "call_resume_prepare",
    "call_say",
    "call_send",
    "call_speaking_broadcast",
    "call_status_update",
    "call_summary",
    "call_take_over",
    "call_transfer",
    "calls_reconcile",
    "connect_ended_record",
    "dial_outcome_record",
    "e164",
    "listen_announce",
    "listen_begin",
    "listen_end",
    "live_broadcast",
    "process_heartbeat",
    "process_stopped",
    "processes_prune",
    "reconcile_candidates",
    "reconcile_lease_claim",
    "reconcile_lease_release",
    "staff_audio_send",
    "stream_bad_message_record",
    "stream_close",
    "stream_handover_record",
    "stream_open",
    "stream_process_attach",
    "stream_resume_twiml",
    "stream_status_record",
    "transcript_add",
    "transcript_history",
    "transcript_interrupt",
    "transcript_summary",
]
