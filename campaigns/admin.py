"""Campaigns in the admin: the campaign page (contacts upload, start/pause/resume/cancel, live
progress), its contacts, and the do-not-call list.

The views check the permission, parse the input and call one service; the progress bar
polls `progress/` (JSON) every few seconds.
"""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.urls import path, reverse
from django.views.decorators.http import require_POST

from . import services
from .models import Campaign, CampaignEvent, CampaignStatus, Contact, DoNotCall

RUN_PERMISSION = "campaigns.run_campaign"
# Larger uploads are refused before parsing (the request body limit applies first anyway).
MAX_CSV_BYTES = 5 * 1024 * 1024


class ContactsUploadForm(forms.Form):
    contacts = forms.FileField(label="Contacts (CSV)")


class CampaignEventInline(admin.TabularInline):
    model = CampaignEvent
    extra = 0
    can_delete = False
    fields = ["created_at", "kind", "user", "data"]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    list_display = ["name", "agent", "status", "max_concurrent_calls", "created_at"]
    list_filter = ["status", "agent"]
    search_fields = ["name"]
    readonly_fields = ["status", "created_by", "started_at", "finished_at"]
    inlines = [CampaignEventInline]
    change_form_template = "admin/campaigns/campaign/change_form.html"
    fieldsets = [
        (None, {"fields": ["name", "agent", "status", "max_concurrent_calls"]}),
        (
            "Calling hours (the callee's local time)",
            {"fields": ["calling_hours_start", "calling_hours_end", "fallback_timezone"]},
        ),
        (
            "Retries",
            {
                "fields": [
                    "max_attempts",
                    "retry_delay_seconds",
                    "retry_no_answer",
                    "retry_busy",
                    "retry_voicemail",
                ]
            },
        ),
        ("History", {"fields": ["created_by", "started_at", "finished_at"]}),
    ]

    def save_model(self, request: HttpRequest, obj: Campaign, form: Any, change: bool) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("<path:object_id>/progress/", wrap(self.progress_view), name="campaign_progress"),
            path("<path:object_id>/contacts/", wrap(self.upload_view), name="campaign_upload"),
            path(
                "<path:object_id>/run/<str:action>/",
                wrap(self.action_view),
                name="campaign_action",
            ),
            *super().get_urls(),
        ]

    def _campaign(self, request: HttpRequest, object_id: str) -> Campaign:
        campaign = self.get_object(request, unquote(object_id))
        if campaign is None or not self.has_view_permission(request, campaign):
            raise Http404("No such campaign.")
        return campaign

    def progress_view(self, request: HttpRequest, object_id: str) -> JsonResponse:
        campaign = self._campaign(request, object_id)
        return JsonResponse(services.campaign_progress(campaign=campaign))

    def upload_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if request.method != "POST":
            return redirect(reverse("admin:campaigns_campaign_change", args=[object_id]))
        campaign = self._campaign(request, object_id)
        if not self.has_change_permission(request, campaign):
            raise PermissionDenied
        form = ContactsUploadForm(request.POST, request.FILES)
        if not form.is_valid():
            messages.error(request, "Choose a CSV file to upload.")
        elif form.cleaned_data["contacts"].size > MAX_CSV_BYTES:
            messages.error(request, "The file is too large.")
        else:
            try:
                result = services.campaign_import_csv(
                    campaign=campaign, data=form.cleaned_data["contacts"].read(), user=request.user
                )
            except services.CampaignImportError as error:
                for line in error.errors[: services.MAX_IMPORT_ERRORS_SHOWN]:
                    messages.error(request, line)
                messages.error(request, f"Nothing was imported ({len(error.errors)} problems).")
            except services.CampaignError as error:
                messages.error(request, str(error))
            else:
                messages.success(request, f"Imported {result.imported} contacts.")
                if result.unknown_variables:
                    names = ", ".join("{" + name + "}" for name in result.unknown_variables)
                    messages.warning(
                        request,
                        f"The agent's texts use {names}, which the file has no column for: "
                        "they will be left as written.",
                    )
        return redirect(reverse("admin:campaigns_campaign_change", args=[object_id]))

    def action_view(self, request: HttpRequest, object_id: str, action: str) -> HttpResponse:
        if action not in services.TRANSITIONS:
            raise Http404("No such action.")
        return require_POST(self._act)(request, object_id, action)

    def _act(self, request: HttpRequest, object_id: str, action: str) -> HttpResponse:
        campaign = self._campaign(request, object_id)
        if not request.user.has_perm(RUN_PERMISSION):
            raise PermissionDenied
        try:
            services.campaign_transition(campaign_id=campaign.pk, action=action, user=request.user)
        except services.CampaignError as error:
            messages.error(request, str(error))
        else:
            messages.success(request, f"Campaign {services.DONE_WORDS[action]}.")
        return redirect(reverse("admin:campaigns_campaign_change", args=[object_id]))

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        campaign = self.get_object(request, unquote(object_id))
        context = dict(extra_context or {})
        if campaign is not None:
            context.update(
                progress=services.campaign_progress(campaign=campaign),
                may_run=request.user.has_perm(RUN_PERMISSION),
                actions_allowed=[
                    action
                    for action, (allowed, _) in services.TRANSITIONS.items()
                    if campaign.status in allowed
                ],
                may_upload=campaign.status in (CampaignStatus.DRAFT, CampaignStatus.PAUSED),
                upload_form=ContactsUploadForm(),
            )
        return super().change_view(request, object_id, form_url, extra_context=context)


@admin.register(Contact)
class ContactAdmin(admin.ModelAdmin):
    list_display = ["phone_number", "campaign", "line", "state", "outcome", "attempts", "call"]
    list_filter = ["campaign", "state", "outcome"]
    search_fields = ["phone_number"]
    readonly_fields = [
        "campaign",
        "line",
        "phone_number",
        "variables",
        "timezones",
        "state",
        "outcome",
        "attempts",
        "next_attempt_at",
        "claimed_by",
        "claimed_at",
        "call",
        "last_error",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # contacts come from a campaign's CSV


class DoNotCallForm(forms.ModelForm):
    class Meta:
        model = DoNotCall
        fields = ["phone_number", "reason"]

    def clean_phone_number(self) -> str:
        checked = services.e164_or_error(self.cleaned_data["phone_number"])
        if isinstance(checked, str):
            raise forms.ValidationError(checked[0].upper() + checked[1:] + ".")
        return checked[0]


@admin.register(DoNotCall)
class DoNotCallAdmin(admin.ModelAdmin):
    form = DoNotCallForm
    list_display = ["phone_number", "reason", "created_at"]
    search_fields = ["phone_number", "reason"]
