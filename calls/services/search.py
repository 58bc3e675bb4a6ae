"""The call list's search: by the call's numbers and SID, its agent's name, and the words
said in its transcript.

On PostgreSQL the words are matched with full-text search (English stemming, the web
search syntax: "quoted phrases", -excluded, or), on the same expression the GIN index of
migration 0004 holds, so the planner can use it. On SQLite, a case-insensitive substring.
"""

from django.contrib.postgres.search import SearchQuery, SearchVector
from django.db import connection
from django.db.models import Exists, OuterRef, Q, QuerySet

from ..models import Call, TranscriptEntry

SEARCH_CONFIG = "english"


def transcript_matches(*, term: str) -> QuerySet[TranscriptEntry]:
    """The transcript lines that match `term`, by full text where the database has it."""
    if connection.vendor == "postgresql":
        return TranscriptEntry.objects.annotate(
            words=SearchVector("text", config=SEARCH_CONFIG)
        ).filter(words=SearchQuery(term, config=SEARCH_CONFIG, search_type="websearch"))
    return TranscriptEntry.objects.filter(text__icontains=term)


def calls_search(*, calls: QuerySet[Call], term: str) -> QuerySet[Call]:
    term = term.strip()
    if not term:
        return calls
    said = transcript_matches(term=term).filter(call_id=OuterRef("pk"))
    return calls.filter(
        Q(sid__iexact=term)
        | Q(from_number__icontains=term)
        | Q(to_number__icontains=term)
        | Q(agent__name__icontains=term)
        | Exists(said)
    )
