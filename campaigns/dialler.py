"""The dialler: places a running campaign's calls, a few at a time, in any number of processes.

Every pass (CAMPAIGN_DIALLER_INTERVAL_SECONDS) it

1. settles contacts whose call is over: the outcome, and a retry later or done;
2. claims contacts for each running campaign, in one transaction that first takes the
   campaign's row (an UPDATE: a row lock on PostgreSQL, the write lock on SQLite, whose
   transactions here are IMMEDIATE), so claimers of a campaign go one at a time. Inside
   it, the contacts already dialling are counted, and only the free slots are claimed,
   each by a conditional UPDATE (state pending -> dialling): two processes never dial the
   same number, and the campaign never has more than `max_concurrent_calls` at once;
3. places the claimed calls (outside the transaction: Twilio takes a while) and records
   each call on its contact.

A contact stays `dialling` from its claim until its call is seen to be over, so the count
holds across processes whatever the timing of Twilio's callbacks. Do-not-call numbers and
numbers outside calling hours are never claimed.
"""

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from agents.models import Agent
from calls import services as call_services
from calls.models import TERMINAL_STATUSES, Call, CallStatus, EndReason
from calls.services import amd

from .hours import within_calling_hours
from .models import Campaign, CampaignStatus, Contact, ContactState, DoNotCall, Outcome

logger = logging.getLogger(__name__)

# How many waiting contacts a claim looks at (those outside calling hours are passed over).
CLAIM_SCAN_LIMIT = 500

_OUTCOME_BY_STATUS = {
    CallStatus.BUSY: Outcome.BUSY,
    CallStatus.NO_ANSWER: Outcome.NO_ANSWER,
    CallStatus.FAILED: Outcome.FAILED,
    CallStatus.CANCELED: Outcome.FAILED,
}


@dataclass(frozen=True)
class Claim:
    contact_id: int
    campaign_id: int
    agent_id: int
    phone_number: str
    variables: dict[str, str]


def call_outcome(call: Call) -> str:
    """What an ended call of a campaign came to."""
    if call.status in _OUTCOME_BY_STATUS:
        return _OUTCOME_BY_STATUS[call.status]
    if call.end_reason == EndReason.VOICEMAIL:
        return Outcome.VOICEMAIL
    if amd.is_machine(call.answered_by) or call.answered_by == amd.FAX:
        return Outcome.MACHINE
    if call.answered_at is None and call.end_reason == EndReason.FAILED:
        return Outcome.FAILED
    return Outcome.ANSWERED


def _retries(campaign: Campaign, outcome: str) -> bool:
    return {
        Outcome.NO_ANSWER: campaign.retry_no_answer,
        Outcome.BUSY: campaign.retry_busy,
        Outcome.VOICEMAIL: campaign.retry_voicemail,
        Outcome.MACHINE: campaign.retry_voicemail,
    }.get(outcome, False)


def _settle(contact: Contact, outcome: str, now: datetime, error: str = "") -> bool:
    """Record `outcome` for a dialling contact: pending again for a retry, or done."""
    campaign = contact.campaign
    retry = _retries(campaign, outcome) and contact.attempts < campaign.max_attempts
    changes = {
        "outcome": outcome,
        "state": ContactState.PENDING if retry else ContactState.DONE,
        "next_attempt_at": now + timedelta(seconds=campaign.retry_delay_seconds) if retry else None,
    }
    if error:
        changes["last_error"] = error[:300]
    # Conditional: only the process that sees it first settles it.
    return bool(
        Contact.objects.filter(
            pk=contact.pk, state=ContactState.DIALLING, call_id=contact.call_id
        ).update(**changes)
    )


def contacts_settle(*, now: datetime | None = None) -> int:
    """Settle every dialling contact whose call has ended, or whose claim went stale."""
    now = now or timezone.now()
    settled = 0
    # Twilio's "completed" for our own hang-up can land before the hang-up has recorded its
    # reason (a voicemail left, say): the contact waits for it (calls/services/hang_ups.py).
    ended = (
        Contact.objects.filter(state=ContactState.DIALLING, call__status__in=TERMINAL_STATUSES)
        .exclude(call_services.hang_ups_in_flight(now, through="call__"))
        .select_related("call", "campaign")
    )
    for contact in ended:
        settled += _settle(contact, call_outcome(contact.call), now)
    # A dialler that died between its claim and Twilio's answer: give the number back.
    stale_before = now - timedelta(seconds=settings.CAMPAIGN_CLAIM_STALE_SECONDS)
    settled += Contact.objects.filter(
        state=ContactState.DIALLING, call__isnull=True, claimed_at__lt=stale_before
    ).update(state=ContactState.PENDING, claimed_by="", attempts=F("attempts") - 1)
    return settled


def contacts_claim(*, campaign_id: int, holder: str, now: datetime | None = None) -> list[Claim]:
    """Claim as many of the campaign's due contacts as it has free call slots."""
    now = now or timezone.now()
    with transaction.atomic():
        # First statement a write: serialises this campaign's claimers (see the module doc).
        if not Campaign.objects.filter(pk=campaign_id, status=CampaignStatus.RUNNING).update(
            status=CampaignStatus.RUNNING
        ):
            return []
        campaign = Campaign.objects.select_related("agent").get(pk=campaign_id)
        if not campaign.agent.is_active:
            return []
        dialling = campaign.contacts.filter(state=ContactState.DIALLING).count()
        free = campaign.max_concurrent_calls - dialling
        if free <= 0:
            return []
        due = (
            campaign.contacts.filter(state=ContactState.PENDING)
            .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
            .order_by(F("next_attempt_at").asc(nulls_first=True), "line")[:CLAIM_SCAN_LIMIT]
        )
        blocked = set(
            DoNotCall.objects.filter(phone_number__in=[c.phone_number for c in due]).values_list(
                "phone_number", flat=True
            )
        )
        claims = []
        for contact in due:
            if contact.phone_number in blocked:
                campaign.contacts.filter(pk=contact.pk, state=ContactState.PENDING).update(
                    state=ContactState.DONE, outcome=Outcome.DO_NOT_CALL
                )
                continue
            if not within_calling_hours(
                timezones=contact.timezones,
                fallback=campaign.fallback_timezone,
                start=campaign.calling_hours_start,
                end=campaign.calling_hours_end,
                now=now,
            ):
                continue
            claimed = campaign.contacts.filter(pk=contact.pk, state=ContactState.PENDING).update(
                state=ContactState.DIALLING,
                claimed_by=holder[:200],
                claimed_at=now,
                attempts=F("attempts") + 1,
                call=None,
                last_error="",
            )
            if claimed:
                claims.append(
                    Claim(
                        contact.pk,
                        campaign.pk,
                        campaign.agent_id,
                        contact.phone_number,
                        contact.variables,
                    )
                )
                if len(claims) == free:
                    break
    return claims


def contact_call_record(*, contact_id: int, call_id: str) -> None:
    Contact.objects.filter(pk=contact_id, state=ContactState.DIALLING).update(call_id=call_id)


def contact_place_failed(*, contact_id: int, error: str) -> None:
    contact = Contact.objects.select_related("campaign").filter(pk=contact_id).first()
    if contact is not None:
        _settle(contact, Outcome.FAILED, timezone.now(), error)


def campaigns_running() -> list[int]:
    return list(Campaign.objects.filter(status=CampaignStatus.RUNNING).values_list("pk", flat=True))


def campaigns_finish() -> int:
    """Running campaigns with nothing left to call or on a call are finished."""
    finished = 0
    for campaign in Campaign.objects.filter(status=CampaignStatus.RUNNING):
        if not campaign.contacts.exclude(state=ContactState.DONE).exists():
            finished += Campaign.objects.filter(
                pk=campaign.pk, status=CampaignStatus.RUNNING
            ).update(status=CampaignStatus.FINISHED, finished_at=timezone.now())
    return finished


async def _place(claim: Claim) -> None:
    try:
        agent = await Agent.objects.aget(pk=claim.agent_id)
        call = await call_services.call_place_outbound(
            agent=agent,
            to_number=claim.phone_number,
            variables=claim.variables,
            source={"campaign": claim.campaign_id, "contact": claim.contact_id},
        )
    except (call_services.CallControlError, Agent.DoesNotExist) as error:
        logger.warning(
            "Campaign %s: calling %s failed: %s", claim.campaign_id, claim.phone_number, error
        )
        await database_sync_to_async(contact_place_failed)(
            contact_id=claim.contact_id, error=str(error)
        )
        return
    await database_sync_to_async(contact_call_record)(contact_id=claim.contact_id, call_id=call.pk)


async def dialler_pass(holder: str) -> int:
    """One pass over the running campaigns; returns how many calls it placed."""
    await database_sync_to_async(contacts_settle)()
    placed = 0
    for campaign_id in await database_sync_to_async(campaigns_running)():
        claims = await database_sync_to_async(contacts_claim)(
            campaign_id=campaign_id, holder=holder
        )
        await asyncio.gather(*(_place(claim) for claim in claims))
        placed += len(claims)
    await database_sync_to_async(campaigns_finish)()
    return placed


async def dialler_loop(holder: str) -> None:
    """Run a pass every CAMPAIGN_DIALLER_INTERVAL_SECONDS, for ever."""
    while True:
        await asyncio.sleep(settings.CAMPAIGN_DIALLER_INTERVAL_SECONDS)
        try:
            await dialler_pass(holder)
        except Exception:
            logger.exception("Campaign dialler %s: the pass failed", holder)
