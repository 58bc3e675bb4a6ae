"""The staff member's own page: the time zone the console shows times in."""

from zoneinfo import available_timezones

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse

from . import labels
from .staff import staff_time_zone, staff_time_zone_set


class TimeZoneForm(forms.Form):
    time_zone = forms.ChoiceField(
        label="Time zone",
        required=False,
        help_text="Every time on the call pages and the live view is shown in this zone.",
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        server = f"The server's time zone ({settings.TIME_ZONE})"
        self.fields["time_zone"].choices = [
            ("", server),
            *((name, name) for name in sorted(available_timezones())),
        ]


def profile(request: HttpRequest) -> HttpResponse:
    """Shown to any signed-in staff member (admin_view checks that), for themselves only."""
    current = staff_time_zone(user=request.user)
    chosen = getattr(getattr(request.user, "staff_profile", None), "time_zone", "")
    form = TimeZoneForm(request.POST or None, initial={"time_zone": chosen})
    if request.method == "POST" and form.is_valid():
        zone = form.cleaned_data["time_zone"]
        staff_time_zone_set(user=request.user, time_zone=zone)
        messages.success(request, f"Times are now shown in {zone or settings.TIME_ZONE}.")
        return redirect("staff-profile")
    context = {
        **admin.site.each_context(request),
        "title": "Your time zone",
        "form": form,
        "zone_label": labels.time_zone_label(current),
    }
    return TemplateResponse(request, "admin/staff_profile.html", context)
