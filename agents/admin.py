from django import forms
from django.conf import settings
from django.contrib import admin, messages

from .models import Agent, Backend, TransferTarget

OPENAI_ONLY = "Used by the OpenAI Realtime backend only; the Local backend ignores it "
NO_OPENAI_KEY_WARNING = (
    "{agent} uses the OpenAI Realtime backend, but OPENAI_API_KEY is not set: its calls "
    "will fail to reach the model and go to its default transfer target (or end). Set "
    "OPENAI_API_KEY, or choose the Local backend."
)


class AgentForm(forms.ModelForm):
    class Meta:
        model = Agent
        fields = "__all__"  # noqa: DJ007 (the fieldsets below choose and order them)
        widgets = {"greeting": forms.Textarea(attrs={"rows": 3, "cols": 60})}
        help_texts = {
            "voice": OPENAI_ONLY + "(espeak-ng speaks with its own voice).",
            "model": OPENAI_ONLY + "(it has no model).",
        }


class TransferTargetInline(admin.TabularInline):
    model = TransferTarget
    extra = 1
    fields = ["name", "phone_number", "mode", "description", "is_default"]


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    form = AgentForm
    list_display = ["name", "phone_number", "backend_label", "voice", "is_active", "is_default"]
    list_filter = ["is_active", "backend", "voice"]
    search_fields = ["name", "phone_number"]
    inlines = [TransferTargetInline]
    fieldsets = [
        (None, {"fields": ["name", "phone_number", "is_default", "is_active"]}),
        ("Conversation", {"fields": ["instructions", "greeting", "voice", "model", "backend"]}),
        ("Calls it places", {"fields": ["answering_machine", "voicemail_message"]}),
        (
            "Limits and keys",
            {"fields": ["max_call_seconds", "idle_timeout_seconds", "transfer_digit"]},
        ),
        ("Recording", {"fields": ["record_calls"]}),
        ("After the call", {"fields": ["analysis_schema"]}),
    ]

    def save_model(self, request, obj: Agent, form, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if obj.backend == Backend.OPENAI_REALTIME and not settings.OPENAI_API_KEY:
            self.message_user(
                request, NO_OPENAI_KEY_WARNING.format(agent=obj.name), messages.WARNING
            )

    @admin.display(description="backend", ordering="backend")
    def backend_label(self, agent: Agent) -> str:
        if agent.backend == Backend.LOCAL:
            return "Local (development)"
        return agent.get_backend_display()


@admin.register(TransferTarget)
class TransferTargetAdmin(admin.ModelAdmin):
    list_display = ["name", "phone_number", "agent", "mode", "is_default"]
    list_filter = ["agent", "mode", "is_default"]
    search_fields = ["name", "phone_number", "description"]
