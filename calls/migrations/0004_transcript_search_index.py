"""A full-text index on what was said, on PostgreSQL only.

The call list's search matches `to_tsvector('english', text)` against the words typed
(calls/services/search.py builds the same expression, so the planner uses this index). SQLite
has no such index: there the search is a plain case-insensitive match.
"""

from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector
from django.db import migrations

INDEX_NAME = "transcript_text_search"


def _index() -> GinIndex:
    return GinIndex(SearchVector("text", config="english"), name=INDEX_NAME)


def add_index(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.add_index(apps.get_model("calls", "TranscriptEntry"), _index())


def remove_index(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.remove_index(apps.get_model("calls", "TranscriptEntry"), _index())


class Migration(migrations.Migration):
    dependencies = [("calls", "0003_call_outcome_analysis")]

    operations = [migrations.RunPython(add_index, remove_index)]
