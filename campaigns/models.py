"""Campaigns: an agent calling a list of numbers, a few at a time, within calling hours."""

from datetime import time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


def validate_timezone(name: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"“{name}” is not a time zone, e.g. Europe/London.") from None


class CampaignStatus(models.TextChoices):
    DRAFT = "draft"
    RUNNING = "running"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    FINISHED = "finished"


class Campaign(models.Model):
    name = models.CharField(max_length=200)
    agent = models.ForeignKey("agents.Agent", on_delete=models.PROTECT, related_name="campaigns")
    status = models.CharField(
        max_length=16,
        choices=CampaignStatus.choices,
        default=CampaignStatus.DRAFT,
        db_index=True,
        editable=False,
    )
    max_concurrent_calls = models.PositiveIntegerField(
        "most calls at once", default=5, validators=[MinValueValidator(1), MaxValueValidator(200)]
    )
    calling_hours_start = models.TimeField(
        default=time(9, 0), help_text="In the callee's local time (from the number)."
    )
    calling_hours_end = models.TimeField(
        default=time(20, 0),
        help_text="Not called from this time on. Before the start time: the window spans midnight.",
    )
    fallback_timezone = models.CharField(
        max_length=64,
        default="UTC",
        validators=[validate_timezone],
        help_text="For numbers whose time zone cannot be told from the number.",
    )
    max_attempts = models.PositiveIntegerField(
        default=3,
        validators=[MinValueValidator(1), MaxValueValidator(10)],
        help_text="Calls per number at most, the first included.",
    )
    retry_delay_seconds = models.PositiveIntegerField(
        default=3600, help_text="Wait before calling a number again."
    )
    retry_no_answer = models.BooleanField("retry no answer", default=True)
    retry_busy = models.BooleanField("retry busy", default=True)
    retry_voicemail = models.BooleanField(
        "retry voicemail",
        default=False,
        help_text="Call again after a machine answered (a message left or not).",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, editable=False
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True, editable=False)
    finished_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        permissions = [("run_campaign", "Can start, pause, resume and cancel a campaign")]

    def __str__(self) -> str:
        return self.name


class ContactState(models.TextChoices):
    PENDING = "pending"  # to be called (now, or at next_attempt_at)
    DIALLING = "dialling"  # claimed by a dialler; its call is placed or live
    DONE = "done"


class Outcome(models.TextChoices):
    ANSWERED = "answered"
    VOICEMAIL = "voicemail", "Voicemail left"
    MACHINE = "machine", "Answering machine"
    NO_ANSWER = "no_answer", "No answer"
    BUSY = "busy"
    FAILED = "failed"
    DO_NOT_CALL = "do_not_call", "Do not call"
    CANCELLED = "cancelled"


class Contact(models.Model):
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="contacts")
    line = models.PositiveIntegerField(help_text="Its line in the uploaded CSV.")
    phone_number = models.CharField(max_length=32)
    variables = models.JSONField(default=dict, blank=True)
    timezones = models.JSONField(default=list, blank=True)
    state = models.CharField(
        max_length=16, choices=ContactState.choices, default=ContactState.PENDING, db_index=True
    )
    outcome = models.CharField(max_length=16, choices=Outcome.choices, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    claimed_by = models.CharField(max_length=200, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    call = models.ForeignKey(
        "calls.Call", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_error = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["campaign", "line"]
        constraints = [
            models.UniqueConstraint(
                fields=["campaign", "phone_number"], name="one_contact_per_number"
            )
        ]
        indexes = [models.Index(fields=["campaign", "state", "next_attempt_at"])]

    def __str__(self) -> str:
        return self.phone_number


class DoNotCall(models.Model):
    """Numbers no campaign calls."""

    phone_number = models.CharField(
        max_length=32, unique=True, help_text="E.164, e.g. +14155550100."
    )
    reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["phone_number"]
        verbose_name = "do-not-call number"

    def __str__(self) -> str:
        return self.phone_number


class CampaignEvent(models.Model):
    """The campaign's audit log: who started, paused, resumed, cancelled or imported."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=32)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.kind} by {self.user or 'the system'}"
