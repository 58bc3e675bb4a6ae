"""Post-call analysis: a summary of each finished call and its agent's structured fields.

Each analysis is a `CallAnalysis` row, which is also its job. Where it runs: the analysis
loop of every server process (calls/process.py, with CALL_ANALYSIS on) and
`manage.py analyze_calls` claim due rows with a conditional UPDATE and a lease, so a job is
run by one worker at a time, survives a restart (a row, not a task in memory), and a worker
that dies loses only its lease. It runs off the request path and the media path: the
HTTP request is an aiohttp call on the loop, the database work is in the thread pool, and
at most ANALYSIS_CONCURRENCY jobs run at once per worker.

With OPENAI_API_KEY and an agent on the OpenAI backend, the transcript goes to the
Responses API (calls/openai_text.py) with a strict JSON schema: {"summary", "fields"}.
Failures worth retrying are retried ANALYSIS_MAX_ATTEMPTS times in all, waiting
ANALYSIS_RETRY_SECONDS, then twice that, and so on; the last error is kept in words.
Otherwise (no key, or the local backend) a summary is built from the call's record and
says so: its outcome, duration, the keys pressed and the caller's first line.
"""

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone
from jsonschema import Draft202012Validator

from agents.models import Backend

from .. import labels
from ..models import (
    AnalysisSource,
    AnalysisStatus,
    Call,
    CallAnalysis,
    CallEvent,
    Outcome,
    Speaker,
)
from ..openai_text import TextApiError, structured_response

logger = logging.getLogger(__name__)

# A transcript longer than this is cut (from the middle) before it is sent.
TRANSCRIPT_MAX_CHARS = 60_000
CALLER_LINE_MAX_CHARS = 200
SUMMARY_NOTE = "Summary built from the call's record (no model):"
INSTRUCTIONS = (
    "You analyse a finished phone call between a caller and an AI phone agent. Write "
    "`summary`: two or three plain sentences on why the caller called and how it ended. "
    "Fill `fields` from what was said; where the transcript does not say, use the most "
    "neutral value (empty string, false, 0). Do not invent facts."
)


def analysis_enqueue(
    *, call_id: Any, redo: bool = False, delay_seconds: float | None = None
) -> bool:
    """Queue `call_id`'s analysis (after ANALYSIS_DELAY_SECONDS); with `redo`, run it
    again even if done. Returns whether a job was queued."""
    delay = settings.ANALYSIS_DELAY_SECONDS if delay_seconds is None else delay_seconds
    run_after = timezone.now() + timedelta(seconds=delay)
    analysis, created = CallAnalysis.objects.get_or_create(
        call_id=call_id, defaults={"run_after": run_after}
    )
    if created:
        return True
    if not redo or analysis.status == AnalysisStatus.RUNNING:
        return False
    CallAnalysis.objects.filter(pk=analysis.pk).update(
        status=AnalysisStatus.PENDING, attempts=0, error="", run_after=run_after
    )
    return True


def _lease() -> timedelta:
    # Longer than a job can take, so a living worker never loses its claim mid-job.
    return timedelta(seconds=settings.ANALYSIS_HTTP_TIMEOUT_SECONDS * 2 + 30)


def analyses_claim(*, limit: int, now: datetime | None = None) -> list[int]:
    """Claim up to `limit` due jobs (pending and due, or running with a lapsed lease)."""
    now = now or timezone.now()
    due = Q(status=AnalysisStatus.PENDING, run_after__lte=now) | Q(
        status=AnalysisStatus.RUNNING, claimed_until__lt=now
    )
    candidates = list(
        CallAnalysis.objects.filter(due)
        .order_by("run_after")
        .values_list("pk", "status")[: limit * 2]
    )
    claimed = []
    for pk, status in candidates:
        # Conditional on the row being as we saw it: two workers never take the same job.
        taken = (
            CallAnalysis.objects.filter(pk=pk, status=status)
            .filter(due)
            .update(status=AnalysisStatus.RUNNING, claimed_until=now + _lease())
        )
        if taken:
            claimed.append(pk)
            if len(claimed) == limit:
                break
    return claimed


@dataclass
class AnalysisJob:
    analysis_id: int
    call_id: str
    outcome_label: str
    duration_label: str
    keys: list[str]
    lines: list[tuple[str, str]]  # (speaker, text) in order
    schema: dict[str, Any] = field(default_factory=dict)
    use_model: bool = False


def analysis_job_load(*, analysis_id: int) -> AnalysisJob | None:
    analysis = (
        CallAnalysis.objects.select_related("call", "call__agent").filter(pk=analysis_id).first()
    )
    if analysis is None:
        return None
    call = analysis.call
    agent = call.agent
    keys = [
        str(data.get("digit", ""))
        for data in CallEvent.objects.filter(call=call, kind="key_pressed")
        .order_by("created_at", "id")
        .values_list("data", flat=True)
    ]
    lines = list(call.transcript.order_by("offset_ms", "id").values_list("speaker", "text"))
    outcome = Outcome(call.outcome).label if call.outcome else call.get_status_display()
    if call.outcome_detail:
        outcome += f" ({call.outcome_detail})"
    return AnalysisJob(
        analysis_id=analysis.pk,
        call_id=str(call.pk),
        outcome_label=outcome,
        duration_label=labels.duration_label(call) or "unknown",
        keys=keys,
        lines=lines,
        schema=(agent.analysis_schema if agent else {}) or {},
        use_model=bool(
            settings.OPENAI_API_KEY and agent is not None and agent.backend != Backend.LOCAL
        ),
    )


def deterministic_summary(job: AnalysisJob) -> str:
    """What the call's record says, labelled as such: no model was asked."""
    first_caller_line = next((text for speaker, text in job.lines if speaker == Speaker.CALLER), "")
    parts = [
        SUMMARY_NOTE,
        f"Outcome: {job.outcome_label}.",
        f"Duration: {job.duration_label}.",
        f"Keys pressed: {' '.join(job.keys) if job.keys else 'none'}.",
    ]
    if first_caller_line:
        quoted = first_caller_line[:CALLER_LINE_MAX_CHARS]
        parts.append(f'The caller first said: "{quoted}".')
    else:
        parts.append("The caller said nothing that was transcribed.")
    return " ".join(parts)


def analysis_response_schema(fields_schema: dict[str, Any]) -> dict[str, Any]:
    """The strict schema the model answers in: a summary, and the agent's fields if any."""
    properties: dict[str, Any] = {"summary": {"type": "string"}}
    if fields_schema:
        properties["fields"] = fields_schema
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def transcript_text(job: AnalysisJob) -> str:
    text = "\n".join(f"{speaker}: {line}" for speaker, line in job.lines)
    if len(text) > TRANSCRIPT_MAX_CHARS:
        half = TRANSCRIPT_MAX_CHARS // 2
        text = text[:half] + "\n[… the middle of the call is left out …]\n" + text[-half:]
    return (
        f"Outcome: {job.outcome_label}. Duration: {job.duration_label}. "
        f"Keys pressed: {' '.join(job.keys) or 'none'}.\n\nTranscript:\n{text or '(empty)'}"
    )


def analysis_finish(
    *, analysis_id: int, summary: str, fields: dict[str, Any], source: str, model: str = ""
) -> None:
    CallAnalysis.objects.filter(pk=analysis_id).update(
        status=AnalysisStatus.DONE,
        summary=summary,
        fields=fields,
        source=source,
        model=model,
        error="",
        claimed_until=None,
        finished_at=timezone.now(),
    )


def analysis_failure_record(*, analysis_id: int, error: str, retryable: bool) -> str:
    """Count a failed attempt: retry later (with backoff) or give up. Returns the status."""
    analysis = CallAnalysis.objects.filter(pk=analysis_id).first()
    if analysis is None:
        return AnalysisStatus.FAILED
    attempts = analysis.attempts + 1
    now = timezone.now()
    if retryable and attempts < settings.ANALYSIS_MAX_ATTEMPTS:
        wait = settings.ANALYSIS_RETRY_SECONDS * 2 ** (attempts - 1)
        status, words = AnalysisStatus.PENDING, f"Attempt {attempts} failed ({error}); retrying."
        run_after = now + timedelta(seconds=wait)
    else:
        status, run_after = AnalysisStatus.FAILED, analysis.run_after
        words = f"Failed after {attempts} attempt{'s' if attempts > 1 else ''}: {error}"
    CallAnalysis.objects.filter(pk=analysis_id).update(
        status=status,
        attempts=attempts,
        error=words,
        run_after=run_after,
        claimed_until=None,
        finished_at=now if status == AnalysisStatus.FAILED else None,
    )
    return status


_load = database_sync_to_async(analysis_job_load)
_finish = database_sync_to_async(analysis_finish)
_failure = database_sync_to_async(analysis_failure_record)
_claim = database_sync_to_async(analyses_claim)


async def analysis_run(*, analysis_id: int) -> str:
    """Run one claimed job to its next status: done, pending (a retry) or failed."""
    job = await _load(analysis_id=analysis_id)
    if job is None:
        return AnalysisStatus.FAILED
    if not job.use_model:
        await _finish(
            analysis_id=analysis_id,
            summary=deterministic_summary(job),
            fields={},
            source=AnalysisSource.DETERMINISTIC,
        )
        return AnalysisStatus.DONE
    schema = analysis_response_schema(job.schema)
    try:
        answer = await structured_response(
            base_url=settings.OPENAI_API_BASE_URL,
            api_key=settings.OPENAI_API_KEY,
            model=settings.ANALYSIS_MODEL,
            instructions=INSTRUCTIONS,
            text=transcript_text(job),
            schema_name="call_analysis",
            schema=schema,
            timeout_seconds=settings.ANALYSIS_HTTP_TIMEOUT_SECONDS,
        )
        errors = sorted(Draft202012Validator(schema).iter_errors(answer.data), key=str)
        if errors:
            raise TextApiError(
                f"the answer does not follow the schema: {errors[0].message}", retryable=True
            )
    except TextApiError as error:
        logger.warning("Analysis of call %s failed: %s", job.call_id, error)
        return await _failure(analysis_id=analysis_id, error=str(error), retryable=error.retryable)
    await _finish(
        analysis_id=analysis_id,
        summary=str(answer.data["summary"]),
        fields=answer.data.get("fields", {}),
        source=AnalysisSource.MODEL,
        model=answer.model,
    )
    return AnalysisStatus.DONE


async def analyses_run_due(*, concurrency: int | None = None) -> Counter:
    """Claim what is due, at most `concurrency` jobs, run them together; the statuses."""
    limit = concurrency or settings.ANALYSIS_CONCURRENCY
    claimed = await _claim(limit=limit)

    async def one(analysis_id: int) -> str:
        try:
            return await analysis_run(analysis_id=analysis_id)
        except Exception as error:  # a bug must not stop the loop; the job says what broke
            logger.exception("Analysis %s crashed", analysis_id)
            return await _failure(analysis_id=analysis_id, error=repr(error), retryable=False)

    return Counter(str(status) for status in await asyncio.gather(*map(one, claimed)))


def analyses_select(*, since: datetime | None = None, agent: str | None = None) -> QuerySet[Call]:
    """Finished calls, for `analyze_calls`: those since `since`, of agents named `agent`."""
    calls = Call.objects.exclude(outcome="")
    if since is not None:
        calls = calls.filter(created_at__gte=since)
    if agent:
        calls = calls.filter(agent__name=agent)
    return calls
