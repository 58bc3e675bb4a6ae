from django.contrib import admin

from .models import Agent, Backend, TransferTarget


class TransferTargetInline(admin.TabularInline):
    model = TransferTarget
    extra = 1
    fields = ["name", "phone_number", "description", "is_default"]


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ["name", "phone_number", "backend_label", "voice", "is_active", "is_default"]
    list_filter = ["is_active", "backend", "voice"]
    search_fields = ["name", "phone_number"]
    inlines = [TransferTargetInline]
    fieldsets = [
        (None, {"fields": ["name", "phone_number", "is_default", "is_active"]}),
        ("Conversation", {"fields": ["instructions", "greeting", "voice", "model", "backend"]}),
        (
            "Limits and keys",
            {"fields": ["max_call_seconds", "idle_timeout_seconds", "transfer_digit"]},
        ),
        ("After the call", {"fields": ["analysis_schema"]}),
    ]

    @admin.display(description="backend", ordering="backend")
    def backend_label(self, agent: Agent) -> str:
        if agent.backend == Backend.LOCAL:
            return "Local (development)"
        return agent.get_backend_display()


@admin.register(TransferTarget)
class TransferTargetAdmin(admin.ModelAdmin):
    list_display = ["name", "phone_number", "agent", "is_default"]
    list_filter = ["agent", "is_default"]
    search_fields = ["name", "phone_number", "description"]
