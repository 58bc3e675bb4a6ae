"""A staff member's own settings: the time zone every time in the console is shown in."""

from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings

from .models import StaffProfile


def staff_time_zone(*, user: Any) -> ZoneInfo:
    """The zone `user` chose, else the server's TIME_ZONE."""
    name = ""
    if user is not None and user.is_authenticated:
        name = (
            StaffProfile.objects.filter(user=user).values_list("time_zone", flat=True).first() or ""
        )
    return ZoneInfo(name or settings.TIME_ZONE)


def staff_time_zone_set(*, user: Any, time_zone: str) -> StaffProfile:
    """Choose `user`'s zone; "" goes back to the server's."""
    profile, _ = StaffProfile.objects.get_or_create(user=user)
    profile.time_zone = time_zone
    profile.full_clean()
    profile.save(update_fields=["time_zone"])
    return profile
