from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from phonenumber_field.modelfields import PhoneNumberField

from .analysis_schema import analysis_schema_normalize


class Backend(models.TextChoices):
    OPENAI_REALTIME = "openai_realtime", "OpenAI Realtime"
    LOCAL = "local", "Local (development: espeak-ng, no model)"


class Voice(models.TextChoices):
    MARIN = "marin"
    CEDAR = "cedar"
    ALLOY = "alloy"
    ASH = "ash"
    BALLAD = "ballad"
    CORAL = "coral"
    ECHO = "echo"
    SAGE = "sage"
    SHIMMER = "shimmer"
    VERSE = "verse"


DEFAULT_INSTRUCTIONS = (
    "You are a friendly, concise phone assistant. Speak in short sentences. "
    "When the caller says goodbye or the conversation is finished, say goodbye and call end_call. "
    "If the caller asks for a person, use transfer_to_human."
)

digit_validator = RegexValidator(r"^[0-9*#]?$", "Use one key: 0-9, * or #, or leave it empty.")
# Target names become the enum the model picks from, so keep them short identifiers.
target_name_validator = RegexValidator(
    r"^[a-z][a-z0-9_]{0,39}$", "Use lower-case letters, digits and underscores, e.g. sales_desk."
)


class AnsweringMachine(models.TextChoices):
    """What an agent does about answering machines on the calls it places."""

    OFF = "off", "Off: greet whatever answers"
    DETECT = "detect", "Detect: hang up on a machine"
    VOICEMAIL = "voicemail", "Detect and leave a voicemail message"


class AgentQuerySet(models.QuerySet):
    def active(self) -> "AgentQuerySet":
        return self.filter(is_active=True)

    def for_number(self, number: str) -> "Agent | None":
        """The active agent answering `number`, else the active default agent, else None."""
        return (
            self.active().filter(phone_number=number).first()
            or self.active().filter(is_default=True).first()
        )


class Agent(models.Model):
    name = models.CharField(max_length=100)
    phone_number = PhoneNumberField(
        unique=True, null=True, blank=True, help_text="The number it answers, in E.164 (+1…)."
    )
    is_default = models.BooleanField(
        default=False, help_text="Answers calls to numbers no other agent answers."
    )
    is_active = models.BooleanField(default=True, db_index=True)
    instructions = models.TextField("prompt", default=DEFAULT_INSTRUCTIONS)
    greeting = models.CharField(
        max_length=500, blank=True, help_text="Spoken first when the call connects; empty = wait."
    )
    voice = models.CharField(max_length=16, choices=Voice.choices, default=Voice.MARIN)
    model = models.CharField(max_length=64, default="gpt-realtime")
    backend = models.CharField(
        max_length=20, choices=Backend.choices, default=Backend.OPENAI_REALTIME
    )
    transfer_digit = models.CharField(
        max_length=1,
        blank=True,
        default="0",
        validators=[digit_validator],
        help_text="Pressing this key always transfers to the default target. Empty = off.",
    )
    max_call_seconds = models.PositiveIntegerField(
        default=900, validators=[MinValueValidator(10), MaxValueValidator(3600)]
    )
    idle_timeout_seconds = models.PositiveIntegerField(
        default=30,
        validators=[MinValueValidator(5), MaxValueValidator(600)],
        help_text="End the call politely after this long with nobody speaking.",
    )
    answering_machine = models.CharField(
        max_length=16,
        choices=AnsweringMachine.choices,
        default=AnsweringMachine.OFF,
        help_text="On calls the agent places: wait for Twilio's answering-machine detection "
        "before greeting, and hang up on a machine or leave a message after the beep.",
    )
    voicemail_message = models.TextField(
        blank=True,
        help_text="Said word for word after the beep, then the agent hangs up. Campaign "
        "variables such as {first_name} may be used.",
    )
    record_calls = models.BooleanField(
        default=False,
        help_text="Record its calls at Twilio (caller and agent on separate channels); staff "
        "with the permission can play them on the call's page.",
    )
    analysis_schema = models.JSONField(
        "analysis fields",
        default=dict,
        blank=True,
        help_text=(
            "After each call a summary is written, plus these fields, taken from the "
            'transcript. A JSON Schema object, e.g. {"type": "object", "properties": '
            '{"reason": {"type": "string"}, "follow_up_needed": {"type": "boolean"}}}. '
            "Empty: the summary only."
        ),
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = AgentQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"], condition=models.Q(is_default=True), name="one_default_agent"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.phone_number})" if self.phone_number else self.name

    def clean(self) -> None:
        try:
            self.analysis_schema = analysis_schema_normalize(self.analysis_schema)
        except ValidationError as error:
            raise ValidationError({"analysis_schema": error.messages}) from error


class TransferMode(models.TextChoices):
    # Cold: the caller is put through at once. Warm: the person called hears who is coming
    # and why, and presses 1 to take the call; otherwise the caller returns to the agent.
    COLD = "cold", "Cold (put the caller through at once)"
    WARM = "warm", "Warm (announce the caller; they press 1 to accept)"


class TransferTarget(models.Model):
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="transfer_targets")
    name = models.CharField(max_length=40, validators=[target_name_validator])
    phone_number = PhoneNumberField(help_text="E.164, e.g. +14155550100.")
    description = models.CharField(
        max_length=300, blank=True, help_text="When the agent should pick this person."
    )
    is_default = models.BooleanField(
        default=False, help_text="Used for the transfer key and when the model fails."
    )
    mode = models.CharField(
        max_length=8, choices=TransferMode.choices, default=TransferMode.COLD
    )

    class Meta:
        ordering = ["agent", "-is_default", "name"]
        constraints = [
            models.UniqueConstraint(fields=["agent", "name"], name="unique_target_name"),
            models.UniqueConstraint(
                fields=["agent"], condition=models.Q(is_default=True), name="one_default_target"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.phone_number})"
