from django.contrib import admin

from .models import Call, CallEvent, MediaStream, TranscriptEntry


class ReadOnlyInline(admin.TabularInline):
    """Calls are written only by services; the admin shows what happened."""

    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class TranscriptInline(ReadOnlyInline):
    model = TranscriptEntry
    fields = ["offset_ms", "speaker", "text", "interrupted", "heard_ms"]


class EventInline(ReadOnlyInline):
    model = CallEvent
    fields = ["created_at", "kind", "actor", "user", "data"]


class StreamInline(ReadOnlyInline):
    model = MediaStream
    fields = [
        "sid",
        "status",
        "started_at",
        "stopped_at",
        "frames_in",
        "frames_out",
        "marks_sent",
        "marks_received",
        "clears",
        "bad_messages",
    ]


@admin.register(Call)
class CallAdmin(admin.ModelAdmin):
    list_display = [
        "sid",
        "direction",
        "from_number",
        "to_number",
        "agent",
        "status",
        "created_at",
        "duration_seconds",
        "end_reason",
    ]
    list_filter = ["status", "direction", "end_reason", "agent", "created_at"]
    search_fields = ["sid", "from_number", "to_number"]
    date_hierarchy = "created_at"
    list_select_related = ["agent"]
    inlines = [StreamInline, TranscriptInline, EventInline]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(CallEvent)
class CallEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "call", "kind", "actor", "user"]
    list_filter = ["kind", "actor"]
    search_fields = ["call__sid", "kind"]
    list_select_related = ["call", "user"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
