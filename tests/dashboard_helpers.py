"""Staff users and calls for the staff console's tests."""

from django.contrib.auth.models import Permission, User

from agents.models import Agent
from calls.models import Call, CallStatus, Direction

from .twilio_helpers import ACCOUNT_SID, new_call_sid

ACTION_PERMISSIONS = ["hangup_call", "clear_audio", "transfer_call", "say_on_call", "place_call"]
PASSWORD = "a-long-test-password"


def make_staff(username: str, *codenames: str) -> User:
    """An active staff user holding exactly the given `calls` permissions."""
    user = User.objects.create_user(username, password=PASSWORD, is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="calls", codename__in=codenames)
    )
    return user


def make_call(agent: Agent | None, *, status: str = CallStatus.IN_PROGRESS, **fields) -> Call:
    values = {
        "sid": new_call_sid(),
        "account_sid": ACCOUNT_SID,
        "direction": Direction.INBOUND,
        "from_number": "+14155550123",
        "to_number": "+14155550100",
        "agent": agent,
        "status": status,
        **fields,
    }
    return Call.objects.create(**values)
