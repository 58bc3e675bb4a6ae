import uuid
from datetime import datetime, timedelta
from zoneinfo import available_timezones

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone


class CallStatus(models.TextChoices):
    """Twilio's CallStatus values."""

    QUEUED = "queued"
    INITIATED = "initiated"
    RINGING = "ringing"
    IN_PROGRESS = "in-progress", "In progress"
    COMPLETED = "completed"
    BUSY = "busy"
    FAILED = "failed"
    NO_ANSWER = "no-answer", "No answer"
    CANCELED = "canceled"


# Callbacks arrive out of order: a status only ever moves to a higher rank, and a call in a
# terminal status never changes status again.
STATUS_RANK = {
    CallStatus.QUEUED: 0,
    CallStatus.INITIATED: 1,
    CallStatus.RINGING: 2,
    CallStatus.IN_PROGRESS: 3,
    CallStatus.COMPLETED: 4,
    CallStatus.BUSY: 4,
    CallStatus.FAILED: 4,
    CallStatus.NO_ANSWER: 4,
    CallStatus.CANCELED: 4,
}
TERMINAL_STATUSES = frozenset(status for status, rank in STATUS_RANK.items() if rank == 4)
LIVE_STATUSES = frozenset(STATUS_RANK) - TERMINAL_STATUSES


class Direction(models.TextChoices):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class EndReason(models.TextChoices):
    # Labels read on their own (the call list) and after "Ended: " (the live view).
    CALLER_HANGUP = "caller_hangup", "Caller hung up"
    AGENT_ENDED = "agent_ended", "Agent said goodbye"
    STAFF_HANGUP = "staff_hangup", "Staff hung up"
    TRANSFERRED = "transferred", "Transferred to a person"
    FAILED = "failed", "Something failed (see the call's log)"
    TIMEOUT = "timeout", "Time or silence limit reached"
    NO_AGENT = "no_agent", "No agent for the number"
    # Found out after the fact: the process holding the call died and Twilio says it is over.
    SERVER_LOST = "server_lost", "Ended while the server was down"
    UNKNOWN_TO_TWILIO = "twilio_unknown", "Unknown to Twilio"
    # Answering-machine detection on a call we placed (docs/twilio-rest.md).
    VOICEMAIL = "voicemail", "Left a voicemail"
    MACHINE = "machine", "Answering machine"


class Outcome(models.TextChoices):
    """What a finished call came to, derived from how it ended (calls/outcomes.py)."""

    RESOLVED = "resolved", "Resolved by the agent"
    TRANSFERRED = "transferred", "Transferred, answered"
    TRANSFER_UNANSWERED = "transfer_unanswered", "Transferred, not answered"
    CALLER_HUNG_UP = "caller_hung_up", "Caller hung up"
    NO_ANSWER = "no_answer", "No answer / busy"
    VOICEMAIL = "voicemail", "Voicemail"
    STAFF_ENDED = "staff_ended", "Ended by staff"
    TIMED_OUT = "timed_out", "Time limit"
    FAILED = "failed", "Failed"


class Actor(models.TextChoices):
    CALLER = "caller"
    AGENT = "agent"
    STAFF = "staff"
    TWILIO = "twilio"
    SYSTEM = "system"


class Call(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    sid = models.CharField("Call SID", max_length=64, unique=True)
    account_sid = models.CharField(max_length=64, blank=True)
    direction = models.CharField(max_length=16, choices=Direction.choices, db_index=True)
    # Raw values from Twilio: callers may be "anonymous" or a client identity, not E.164.
    from_number = models.CharField("from", max_length=64, blank=True, db_index=True)
    to_number = models.CharField("to", max_length=64, blank=True, db_index=True)
    agent = models.ForeignKey(
        "agents.Agent", null=True, blank=True, on_delete=models.SET_NULL, related_name="calls"
    )
    status = models.CharField(
        max_length=16, choices=CallStatus.choices, default=CallStatus.QUEUED, db_index=True
    )
    status_sequence = models.IntegerField(null=True, blank=True, editable=False)
    # Indexed by `call_analytics`, whose first column it is.
    created_at = models.DateTimeField(auto_now_add=True)
    answered_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    duration_seconds = models.PositiveIntegerField(null=True, blank=True)
    end_reason = models.CharField(
        max_length=16, choices=EndReason.choices, blank=True, db_index=True
    )
    transfer_target = models.ForeignKey(
        "agents.TransferTarget",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="calls",
    )
    # Kept even if the target is later deleted or renumbered.
    transferred_to = models.CharField(max_length=32, blank=True)
    # Set when the call ends (services.call_outcome_update); empty while it is live.
    outcome = models.CharField(max_length=24, choices=Outcome.choices, blank=True, db_index=True)
    # For a failure, what failed; for a transfer, what the <Dial> said; in words.
    outcome_detail = models.CharField(max_length=300, blank=True)
    # Set once by whoever hangs up first, so Twilio is asked exactly once.
    hangup_requested_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Answering-machine detection asked of Twilio when placing the call ("" = none), and
    # its verdict (AnsweredBy: human, machine_end_beep, fax, unknown, ...).
    machine_detection = models.CharField(max_length=16, blank=True, editable=False)
    answered_by = models.CharField(max_length=32, blank=True, editable=False)
    # Values for the agent's {placeholders} on this call (a campaign contact's columns).
    prompt_variables = models.JSONField(default=dict, blank=True, editable=False)
    # The nonce of the single outstanding stream token; emptied when the stream uses it.
    stream_nonce = models.CharField(max_length=64, blank=True, editable=False)
    # A reconciler has claimed the call (or put off looking at it again) until then.
    reconcile_after = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The analytics page reads only these columns over a date range: from the index
            # alone, without the table's rows.
            models.Index(
                fields=["created_at", "agent", "outcome", "duration_seconds"],
                name="call_analytics",
            ),
        ]
        permissions = [
            ("hangup_call", "Can hang up a live call"),
            ("clear_audio", "Can clear the audio playing on a live call"),
            ("transfer_call", "Can transfer a live call to a person"),
            ("place_call", "Can place an outbound call"),
            ("say_on_call", "Can make the agent say a sentence on a live call"),
            ("mark_call_ended", "Can mark ended a call Twilio no longer has"),
            ("listen_recording", "Can play a call's recording"),
            ("listen_call", "Can listen to a live call"),
            ("take_over_call", "Can take over a live call and talk to the caller"),
        ]

    def __str__(self) -> str:
        return f"{self.get_direction_display()} {self.from_number} → {self.to_number} ({self.sid})"

    @property
    def is_live(self) -> bool:
        return self.status in LIVE_STATUSES

    @property
    def group_name(self) -> str:
        return call_group_name(self.id)


def call_group_name(call_id: uuid.UUID | str) -> str:
    """Channel-layer group of the consumer that holds this call's stream."""
    return f"call.{call_id}"


def listen_group_name(call_id: uuid.UUID | str) -> str:
    """Channel-layer group of the staff listening to this call."""
    return f"listen.{call_id}"


LIVE_CALLS_GROUP = "calls.live"


class StreamStatus(models.TextChoices):
    STARTED = "started"
    STOPPED = "stopped"
    ERROR = "error"


class ServerProcess(models.Model):
    """A server process that holds media streams.

    While it holds any, it writes `last_seen` every STREAM_HEARTBEAT_SECONDS (one UPDATE for
    all of them); a process not seen for STREAM_STALE_SECONDS, or stopped, holds nothing.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField(auto_now_add=True)
    last_seen = models.DateTimeField(db_index=True)
    stopped_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"


class ReconcilerLease(models.Model):
    """One row: which reconciler may work, until when. Taken by a conditional UPDATE."""

    holder = models.CharField(max_length=200, blank=True)
    expires_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.holder or 'nobody'} until {self.expires_at:%Y-%m-%d %H:%M:%S}"


class MediaStreamQuerySet(models.QuerySet):
    def lost(self, now: datetime | None = None) -> "MediaStreamQuerySet":
        """Streams still marked started whose process is gone: stopped, or silent too long.

        A stream with no process is from before processes were recorded (or is being
        attached at this instant): lost once it is as old as a silent process would be.
        """
        stale_before = (now or timezone.now()) - timedelta(seconds=settings.STREAM_STALE_SECONDS)
        return self.filter(status=StreamStatus.STARTED).filter(
            Q(process__last_seen__lt=stale_before)
            | Q(process__stopped_at__isnull=False)
            | Q(process__isnull=True, started_at__lt=stale_before)
        )


class MediaStream(models.Model):
    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="streams")
    # The server process whose consumer holds the socket.
    process = models.ForeignKey(
        ServerProcess,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="streams",
        editable=False,
    )
    sid = models.CharField("Stream SID", max_length=64, unique=True)
    status = models.CharField(
        max_length=16, choices=StreamStatus.choices, default=StreamStatus.STARTED, db_index=True
    )
    started_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    custom_parameters = models.JSONField(default=dict, blank=True)
    media_format = models.JSONField(default=dict, blank=True)
    tracks = models.JSONField(default=list, blank=True)
    frames_in = models.PositiveIntegerField(default=0)
    frames_out = models.PositiveIntegerField(default=0)
    bytes_in = models.PositiveBigIntegerField(default=0)
    bytes_out = models.PositiveBigIntegerField(default=0)
    marks_sent = models.PositiveIntegerField(default=0)
    marks_received = models.PositiveIntegerField(default=0)
    clears = models.PositiveIntegerField(default=0)
    dtmf_digits = models.PositiveIntegerField(default=0)
    bad_messages = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)

    objects = MediaStreamQuerySet.as_manager()

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return self.sid


class Speaker(models.TextChoices):
    CALLER = "caller"
    AGENT = "agent"
    STAFF = "staff"
    SYSTEM = "system"


class TranscriptEntry(models.Model):
    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="transcript")
    speaker = models.CharField(max_length=8, choices=Speaker.choices)
    text = models.TextField()
    offset_ms = models.PositiveIntegerField(help_text="Milliseconds from the start of the call")
    interrupted = models.BooleanField(default=False)
    heard_ms = models.PositiveIntegerField(
        null=True, blank=True, help_text="For an interrupted agent line: how much the caller heard"
    )
    item_id = models.CharField(max_length=64, blank=True)
    # An agent line staff typed (Say): whom the agent said it for.
    said_for = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["offset_ms", "id"]
        indexes = [models.Index(fields=["call", "offset_ms"])]
        verbose_name_plural = "transcript entries"

    def __str__(self) -> str:
        return f"{self.speaker}: {self.text[:60]}"


class CallEvent(models.Model):
    """The audit log of a call: who did what, when."""

    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=40, db_index=True)
    actor = models.CharField(max_length=8, choices=Actor.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["call", "created_at"])]

    def __str__(self) -> str:
        return f"{self.kind} by {self.actor_label}"

    @property
    def actor_label(self) -> str:
        if self.user_id:
            return f"staff {self.user}"
        return self.get_actor_display()


def time_zone_validator(value: str) -> None:
    if value and value not in available_timezones():
        raise ValidationError(f"“{value}” is not a time zone.")


class StaffProfile(models.Model):
    """A staff member's own settings for the console."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="staff_profile"
    )
    # Empty: the server's TIME_ZONE.
    time_zone = models.CharField(
        max_length=64,
        blank=True,
        validators=[time_zone_validator],
        help_text="Every time in the console is shown in this zone.",
    )

    def __str__(self) -> str:
        return f"{self.user}: {self.time_zone or 'server time zone'}"


class RecordingStatus(models.TextChoices):
    """Twilio's RecordingStatus values (and ours before Twilio's first callback)."""

    IN_PROGRESS = "in-progress", "Recording"
    COMPLETED = "completed"
    ABSENT = "absent", "Absent (nothing recorded)"
    FAILED = "failed"
    DELETED = "deleted"


class Recording(models.Model):
    """A recording of a call, kept at Twilio; we keep what identifies it and play it through."""

    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="recordings")
    sid = models.CharField("Recording SID", max_length=64, unique=True)
    status = models.CharField(
        max_length=16, choices=RecordingStatus.choices, default=RecordingStatus.IN_PROGRESS
    )
    channels = models.PositiveSmallIntegerField(default=2)
    duration_seconds = models.PositiveIntegerField(null=True, blank=True)
    # Twilio's URL of the media, without an extension (".wav" or ".mp3" is added to fetch it).
    media_url = models.URLField(max_length=500, blank=True)
    # Where the recording starts on the transcript's clock (ms of the stream it started on),
    # so a transcript line's offset can be turned into a position in the recording.
    offset_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.sid


class AnalysisStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class AnalysisSource(models.TextChoices):
    MODEL = "model", "The model (from the transcript)"
    DETERMINISTIC = "deterministic", "Built from the call's record (no model)"


class CallAnalysis(models.Model):
    """The post-call analysis of one call: a summary and the agent's structured fields.

    Also the job that produces it: the analysis loop (calls/process.py) claims due rows with
    a conditional UPDATE (`claimed_until` is the claim's lease), so any server process, or
    `manage.py analyze_calls`, may run it and a process that dies mid-job loses only its lease.
    """

    call = models.OneToOneField(Call, on_delete=models.CASCADE, related_name="analysis")
    status = models.CharField(
        max_length=8,
        choices=AnalysisStatus.choices,
        default=AnalysisStatus.PENDING,
        db_index=True,
    )
    source = models.CharField(max_length=16, choices=AnalysisSource.choices, blank=True)
    model = models.CharField(max_length=64, blank=True)
    summary = models.TextField(blank=True)
    fields = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    run_after = models.DateTimeField(db_index=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "call analyses"

    def __str__(self) -> str:
        return f"analysis of {self.call_id}: {self.status}"
