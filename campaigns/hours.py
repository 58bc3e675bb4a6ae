"""Calling hours in the callee's local time, told from the number (phonenumbers' timezone)."""

from datetime import datetime, time
from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers import timezone as number_timezones

UNKNOWN_ZONE = "Etc/Unknown"


def number_timezones_of(parsed: phonenumbers.PhoneNumber) -> list[str]:
    """The time zones a number may be in; [] when the number does not say."""
    zones = [
        zone for zone in number_timezones.time_zones_for_number(parsed) if zone != UNKNOWN_ZONE
    ]
    return sorted(zones)


def in_window(local: time, start: time, end: time) -> bool:
    """`start` <= `local` < `end`; a window whose end is before its start spans midnight."""
    if start <= end:
        return start <= local < end
    return local >= start or local < end


def within_calling_hours(
    *, timezones: list[str], fallback: str, start: time, end: time, now: datetime
) -> bool:
    """True if it is calling time wherever the number may be (a country with several zones
    and no way to tell from the number must be within hours in all of them)."""
    for zone in timezones or [fallback]:
        if not in_window(now.astimezone(ZoneInfo(zone)).time(), start, end):
            return False
    return True
