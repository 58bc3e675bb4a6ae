"""What staff do with campaigns: import contacts, start, pause, resume, cancel; progress.

Views and the admin parse input and check permissions, then call one of these.
"""

import csv
import io
from dataclasses import dataclass, field
from typing import Any

import phonenumbers
from django.db import transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from agents.prompt import placeholders

from .hours import number_timezones_of
from .models import Campaign, CampaignEvent, CampaignStatus, Contact, ContactState, Outcome

# Header names accepted for the number column; every other column is a variable.
NUMBER_COLUMNS = ("phone_number", "phone", "number", "to")
MAX_IMPORT_ERRORS_SHOWN = 50
VARIABLE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


class CampaignError(Exception):
    """A campaign action that cannot be done; `str()` is fit to show staff."""


class CampaignImportError(CampaignError):
    def __init__(self, errors: list[str]) -> None:
        shown = errors[:MAX_IMPORT_ERRORS_SHOWN]
        more = len(errors) - len(shown)
        super().__init__(
            "Nothing was imported. " + " ".join(shown) + (f" (and {more} more)" if more else "")
        )
        self.errors = errors


@dataclass
class ImportResult:
    imported: int
    # Placeholders in the agent's texts that the CSV has no column for: left as written.
    unknown_variables: list[str] = field(default_factory=list)


def e164_or_error(raw: str) -> tuple[str, phonenumbers.PhoneNumber] | str:
    """(E.164, parsed) for a valid number in international form, else what is wrong."""
    value = raw.strip()
    if not value:
        return "no phone number"
    try:
        parsed = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        return f"“{value}” is not a phone number in international form (+…)"
    if not phonenumbers.is_valid_number(parsed):
        return f"“{value}” is not a valid phone number"
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164), parsed


def _variable_name(header: str) -> str:
    return header.strip().lower().replace(" ", "_").replace("-", "_")


def campaign_import_csv(*, campaign: Campaign, data: bytes | str, user: Any = None) -> ImportResult:
    """Add the CSV's rows as contacts, all of them or, if any row is bad, none.

    The first row names the columns: one of NUMBER_COLUMNS holds the number (E.164), the
    others become the contact's variables for the agent's {placeholders}.
    """
    if campaign.status not in (CampaignStatus.DRAFT, CampaignStatus.PAUSED):
        raise CampaignError("Contacts can be added to a draft or paused campaign only.")
    text = data.decode("utf-8-sig", errors="replace") if isinstance(data, bytes) else data
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        raise CampaignImportError(["Line 1: the file is empty; it needs a header row."])
    names = [_variable_name(column) for column in header]
    number_index = next((i for i, name in enumerate(names) if name in NUMBER_COLUMNS), None)
    if number_index is None:
        raise CampaignImportError(
            ["Line 1: no phone number column (name one of: " + ", ".join(NUMBER_COLUMNS) + ")."]
        )
    errors = [
        f"Line 1: “{header[i]}” is not a usable variable name (letters, digits, _)."
        for i, name in enumerate(names)
        if i != number_index
        and (not name or not set(name) <= VARIABLE_NAME_CHARS or name[0].isdigit())
    ]
    existing = set(campaign.contacts.values_list("phone_number", flat=True))
    seen: dict[str, int] = {}
    contacts = []
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            errors.append(f"Line {line}: {len(row)} columns, the header has {len(header)}.")
            continue
        checked = e164_or_error(row[number_index])
        if isinstance(checked, str):
            errors.append(f"Line {line}: {checked}.")
            continue
        number, parsed = checked
        if number in seen:
            errors.append(f"Line {line}: {number} is already on line {seen[number]}.")
            continue
        if number in existing:
            errors.append(f"Line {line}: {number} is already in this campaign.")
            continue
        seen[number] = line
        variables = {
            name: cell.strip()
            for i, (name, cell) in enumerate(zip(names, row, strict=True))
            if i != number_index
        }
        contacts.append(
            Contact(
                campaign=campaign,
                line=line,
                phone_number=number,
                variables=variables,
                timezones=number_timezones_of(parsed),
            )
        )
    if errors:
        raise CampaignImportError(errors)
    agent = campaign.agent
    used = set()
    for text_ in (agent.instructions, agent.greeting, agent.voicemail_message):
        used |= placeholders(text_)
    unknown = sorted(used - set(names))
    with transaction.atomic():
        Contact.objects.bulk_create(contacts)
        CampaignEvent.objects.create(
            campaign=campaign,
            kind="imported",
            user=user if user and user.pk else None,
            data={"contacts": len(contacts), "unknown_variables": unknown},
        )
    return ImportResult(imported=len(contacts), unknown_variables=unknown)


# What each action does: from which statuses, to which.
TRANSITIONS = {
    "start": ({CampaignStatus.DRAFT}, CampaignStatus.RUNNING),
    "pause": ({CampaignStatus.RUNNING}, CampaignStatus.PAUSED),
    "resume": ({CampaignStatus.PAUSED}, CampaignStatus.RUNNING),
    "cancel": (
        {CampaignStatus.DRAFT, CampaignStatus.RUNNING, CampaignStatus.PAUSED},
        CampaignStatus.CANCELLED,
    ),
}


DONE_WORDS = {"start": "started", "pause": "paused", "resume": "resumed", "cancel": "cancelled"}


def campaign_transition(*, campaign_id: int, action: str, user: Any = None) -> Campaign:
    """Start, pause, resume or cancel; audited. Calls already live finish normally."""
    if action not in TRANSITIONS:
        raise CampaignError(f"Unknown action {action!r}.")
    allowed, target = TRANSITIONS[action]
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().filter(pk=campaign_id).first()
        if campaign is None:
            raise CampaignError("No such campaign.")
        if campaign.status not in allowed:
            raise CampaignError(f"A {campaign.status} campaign cannot be {DONE_WORDS[action]}.")
        if action == "start" and not campaign.contacts.exists():
            raise CampaignError("Import contacts before starting the campaign.")
        now = timezone.now()
        campaign.status = target
        fields = ["status"]
        if action == "start":
            campaign.started_at = now
            fields.append("started_at")
        if action == "cancel":
            campaign.finished_at = now
            fields.append("finished_at")
            campaign.contacts.filter(state=ContactState.PENDING).update(
                state=ContactState.DONE, outcome=Outcome.CANCELLED
            )
        campaign.save(update_fields=fields)
        CampaignEvent.objects.create(
            campaign=campaign, kind=action, user=user if user and user.pk else None
        )
    return campaign


def campaign_progress(*, campaign: Campaign) -> dict[str, Any]:
    """Counts for the campaign page: by state and outcome, calls made, retries."""
    contacts = campaign.contacts
    totals = contacts.aggregate(
        total=Count("id"),
        done=Count("id", filter=Q(state=ContactState.DONE)),
        dialling=Count("id", filter=Q(state=ContactState.DIALLING)),
        pending=Count("id", filter=Q(state=ContactState.PENDING)),
        calls=Sum("attempts"),
        called=Count("id", filter=Q(attempts__gt=0)),
    )
    calls = totals["calls"] or 0
    outcomes = dict(
        contacts.exclude(outcome="").values_list("outcome").annotate(n=Count("id")).order_by()
    )
    total = totals["total"] or 0
    return {
        "status": campaign.status,
        "status_label": campaign.get_status_display(),
        "total": total,
        "done": totals["done"],
        "dialling": totals["dialling"],
        "pending": totals["pending"],
        "percent": round(100 * totals["done"] / total) if total else 0,
        "calls": calls,
        "retries": calls - totals["called"],
        "outcomes": {
            label: outcomes.get(value, 0) for value, label in Outcome.choices if outcomes.get(value)
        },
        "outcome_counts": {value: outcomes.get(value, 0) for value in Outcome.values},
    }
