from collections.abc import Callable

from django.contrib import admin, messages
from django.urls import URLPattern, path

from . import admin_analytics, admin_views, labels, services, trial_views
from .models import LIVE_STATUSES, Call, CallEvent

# The call list's columns, in one place, narrow enough for a 1366 px screen with the
# filters beside them. The SID is on the call's page.
CALL_LIST_COLUMNS = [
    "caller",
    "agent_name",
    "started",
    "duration",
    "outcome",
    "end_reason",
    "status",
]


@admin.register(Call)
class CallAdmin(admin.ModelAdmin):
    list_display = CALL_LIST_COLUMNS
    list_display_links = ["caller"]
    list_filter = ["status", "outcome", "direction", "end_reason", "agent", "created_at"]
    search_fields = ["sid", "from_number", "to_number"]
    date_hierarchy = "created_at"
    list_select_related = ["agent"]
    actions = ["hang_up_selected", "export_transcripts"]

    def get_urls(self) -> list:
        def route(pattern: str, view: Callable, name: str) -> URLPattern:
            wrapped = self.admin_site.admin_view(view)
            return path(pattern, wrapped, {"model_admin": self}, name=f"calls_call_{name}")

        # Ahead of the admin's own patterns, whose "<object_id>/" would swallow "live/".
        return [
            route("live/", admin_views.live, "live"),
            route("place/", admin_views.place, "place"),
            route("analytics/", admin_analytics.analytics, "analytics"),
            route("<uuid:call_id>/hangup/", admin_views.hangup, "hangup"),
            route("<uuid:call_id>/clear/", admin_views.clear, "clear"),
            route("<uuid:call_id>/transfer/", admin_views.transfer, "transfer"),
            route("<uuid:call_id>/say/", admin_views.say, "say"),
            route("<uuid:call_id>/mark-ended/", admin_views.mark_ended, "mark_ended"),
            route("test-agent/<int:agent_id>/", trial_views.start, "test_agent"),
            route("test-agent/run/<str:call_sid>/", trial_views.progress, "trial"),
            *super().get_urls(),
        ]

    def get_search_results(self, request, queryset, search_term):
        # The numbers, the SID, the agent's name, and the words said (calls/services/search.py).
        return services.calls_search(calls=queryset, term=search_term), False

    def change_view(self, request, object_id, form_url="", extra_context=None):
        # Calls are written only by services: their page shows what happened, and steers.
        return admin_views.detail(request, object_id, model_admin=self)

    @admin.display(description="caller", ordering="from_number")
    def caller(self, call: Call) -> str:
        return labels.caller_label(call)

    @admin.display(description="agent", ordering="agent__name")
    def agent_name(self, call: Call) -> str:
        return call.agent.name if call.agent_id else "–"

    @admin.display(description="started", ordering="created_at")
    def started(self, call: Call) -> str:
        return labels.time_label(call.created_at, with_date=True)

    @admin.display(description="duration", ordering="duration_seconds")
    def duration(self, call: Call) -> str:
        return labels.duration_label(call) or "–"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        # Calls are the audit trail: nobody deletes one from the admin, superusers included.
        return False

    def has_hangup_permission(self, request) -> bool:
        return admin_views.may(request.user, "calls.hangup_call")

    @admin.action(description="Hang up the selected calls", permissions=["hangup"])
    def hang_up_selected(self, request, queryset) -> None:
        total = queryset.count()
        hung_up, _, errors = admin_views.hang_up_calls(
            queryset.filter(status__in=LIVE_STATUSES), request.user
        )
        message = f"Hung up {hung_up} of the {total} selected calls."
        if over := total - hung_up - len(errors):
            message += f" {over} {'was' if over == 1 else 'were'} already over."
        self.message_user(request, message, messages.SUCCESS if hung_up else messages.WARNING)
        for error in errors:
            self.message_user(request, error, messages.ERROR)

    @admin.action(description="Export the transcripts of the selected calls (CSV)")
    def export_transcripts(self, request, queryset):
        return admin_views.transcripts_csv(queryset)


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

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # a call's log is part of its audit trail
