"""Post-call analysis against a local peer speaking the Responses API: the request it gets,
the summary and fields stored, retries with backoff, giving up, no key, and the agent's
schema checked on save."""

import asyncio
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.core.exceptions import ValidationError
from django.utils import timezone

from agents.models import Agent, Backend
from calls import services
from calls.models import (
    AnalysisSource,
    AnalysisStatus,
    Call,
    CallAnalysis,
    CallStatus,
    EndReason,
    Speaker,
)
from peers.openai_http import FakeResponsesServer

pytestmark = pytest.mark.django_db(transaction=True)

FIELDS = {
    "type": "object",
    "properties": {
        "reason": {"type": "string"},
        "follow_up_needed": {"type": "boolean"},
    },
}


@pytest.fixture
async def peer(settings):
    async with FakeResponsesServer(
        api_key="sk-analysis", summary="Asked about opening hours."
    ) as server:
        settings.OPENAI_API_BASE_URL = server.base_url
        settings.OPENAI_API_KEY = "sk-analysis"
        settings.ANALYSIS_RETRY_SECONDS = 0.05
        settings.ANALYSIS_MAX_ATTEMPTS = 3
        yield server


def _finished_call(*, backend: str = Backend.OPENAI_REALTIME, keys: str = "") -> int:
    agent = Agent.objects.create(name="Front desk", phone_number="+14155550100", backend=backend)
    agent.analysis_schema = FIELDS
    agent.full_clean()
    agent.save()
    now = timezone.now()
    call = Call.objects.create(
        sid="CA" + "a" * 32,
        direction="inbound",
        from_number="+14155550123",
        to_number="+14155550100",
        agent=agent,
        status=CallStatus.COMPLETED,
        answered_at=now - timedelta(seconds=75),
        ended_at=now,
        duration_seconds=75,
        end_reason=EndReason.AGENT_ENDED,
    )
    for offset, (speaker, text) in enumerate(
        [
            (Speaker.AGENT, "Hello, how can I help?"),
            (Speaker.CALLER, "When do you open on Saturday?"),
            (Speaker.AGENT, "At nine. Goodbye!"),
        ]
    ):
        services.transcript_add(
            call_id=call.pk, speaker=speaker, text=text, offset_ms=offset * 1000
        )
    for digit in keys:
        services.call_event_record(
            call=call, kind="key_pressed", actor="caller", data={"digit": digit}
        )
    services.call_outcome_update(call=call, analyse=False)
    services.analysis_enqueue(call_id=call.pk, delay_seconds=0)
    return call.pk


async def _run_until_settled(rounds: int = 20) -> CallAnalysis:
    for _ in range(rounds):
        await services.analyses_run_due()
        analysis = await CallAnalysis.objects.aget()
        if analysis.status in (AnalysisStatus.DONE, AnalysisStatus.FAILED):
            return analysis
        await asyncio.sleep(0.05)
    return analysis


async def test_the_model_writes_the_summary_and_the_agents_fields(peer):
    await database_sync_to_async(_finished_call)()
    analysis = await _run_until_settled()
    assert analysis.status == AnalysisStatus.DONE
    assert analysis.source == AnalysisSource.MODEL
    assert analysis.summary == "Asked about opening hours."
    assert analysis.fields == {"reason": "reason from the transcript", "follow_up_needed": True}

    [request] = peer.requests
    fmt = request["text"]["format"]
    assert (fmt["type"], fmt["strict"]) == ("json_schema", True)
    assert fmt["schema"]["required"] == ["summary", "fields"]
    fields = fmt["schema"]["properties"]["fields"]
    assert fields["required"] == ["reason", "follow_up_needed"]
    assert fields["additionalProperties"] is False
    assert "caller: When do you open on Saturday?" in request["input"]
    assert "Resolved by the agent" in request["input"]


async def test_a_failing_service_is_retried_with_backoff_then_succeeds(peer):
    peer.fail_next = 2
    await database_sync_to_async(_finished_call)()
    await services.analyses_run_due()
    analysis = await CallAnalysis.objects.aget()
    assert analysis.status == AnalysisStatus.PENDING
    assert analysis.attempts == 1
    assert "Attempt 1 failed (HTTP 500: The server had an error" in analysis.error
    assert analysis.run_after > timezone.now() - timedelta(seconds=1)

    analysis = await _run_until_settled()
    assert analysis.status == AnalysisStatus.DONE
    assert analysis.error == ""
    assert len(peer.requests) == 3


async def test_it_gives_up_after_the_last_attempt_and_says_why(peer):
    peer.fail_next = 10
    await database_sync_to_async(_finished_call)()
    analysis = await _run_until_settled()
    assert analysis.status == AnalysisStatus.FAILED
    assert analysis.error.startswith("Failed after 3 attempts: HTTP 500")
    assert len(peer.requests) == 3


async def test_a_wrong_key_is_not_retried(peer, settings):
    settings.OPENAI_API_KEY = "sk-wrong"
    await database_sync_to_async(_finished_call)()
    analysis = await _run_until_settled()
    assert analysis.status == AnalysisStatus.FAILED
    assert "HTTP 401: Incorrect API key provided." in analysis.error
    assert analysis.attempts == 1


async def test_without_a_key_the_summary_is_built_from_the_record_and_says_so(peer, settings):
    settings.OPENAI_API_KEY = ""
    await database_sync_to_async(_finished_call)(keys="1#")
    analysis = await _run_until_settled()
    assert analysis.status == AnalysisStatus.DONE
    assert analysis.source == AnalysisSource.DETERMINISTIC
    assert analysis.summary == (
        "Summary built from the call's record (no model): Outcome: Resolved by the agent. "
        "Duration: 1:15. Keys pressed: 1 #. "
        'The caller first said: "When do you open on Saturday?".'
    )
    assert analysis.fields == {}
    assert peer.requests == []


async def test_a_local_agent_gets_the_deterministic_summary_even_with_a_key(peer):
    await database_sync_to_async(_finished_call)(backend=Backend.LOCAL)
    analysis = await _run_until_settled()
    assert analysis.source == AnalysisSource.DETERMINISTIC
    assert peer.requests == []


async def test_a_job_is_claimed_by_one_worker_only(peer):
    await database_sync_to_async(_finished_call)()
    claim = database_sync_to_async(services.analyses_claim)
    assert len(await claim(limit=5)) == 1
    assert await claim(limit=5) == []


def test_the_agents_fields_must_be_a_json_schema_object(db):
    agent = Agent(name="A", phone_number="+14155550100")
    for bad, words in [
        ([1, 2], "must be a JSON object"),
        ({"type": "string"}, '"type": "object"'),
        ({"type": "object", "properties": {"x": {"type": "colour"}}}, "Not a valid JSON Schema"),
        ({"type": "object"}, "non-empty"),
    ]:
        agent.analysis_schema = bad
        with pytest.raises(ValidationError, match=words):
            agent.full_clean()
    agent.analysis_schema = FIELDS
    agent.full_clean()
    assert agent.analysis_schema["required"] == ["reason", "follow_up_needed"]
    assert agent.analysis_schema["additionalProperties"] is False
