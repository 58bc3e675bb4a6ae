"""Wrong passwords at the admin login lock the user name out from that address (django-axes),
even for the right password, until a superuser unlocks it or the cool-off passes."""

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client, RequestFactory, override_settings

from voicebot.client_ip import client_ip

from .dashboard_helpers import PASSWORD, make_staff

pytestmark = pytest.mark.django_db(transaction=True)

LOGIN = "/admin/login/?next=/admin/"


def log_in(client: Client, username: str, password: str):
    return client.post(LOGIN, {"username": username, "password": password})


def logged_in(response) -> bool:
    return response.status_code == 302 and response["Location"] == "/admin/"


def lock_out(client: Client, username: str) -> list[int]:
    return [log_in(client, username, "wrong-password").status_code for _ in range(20)]


def test_twenty_wrong_passwords_lock_the_user_out_even_for_the_right_one(client):
    make_staff("operator", "view_call")
    statuses = lock_out(client, "operator")
    limit = settings.AXES_FAILURE_LIMIT
    # The login form again for the first failures, then the lockout.
    assert statuses[: limit - 1] == [200] * (limit - 1)
    assert statuses[limit:] == [429] * (20 - limit)
    refused = log_in(client, "operator", PASSWORD)
    assert refused.status_code == 429
    assert "_auth_user_id" not in client.session
    # Another user at the same address is not locked out by someone else's failures.
    make_staff("other", "view_call")
    assert logged_in(log_in(Client(), "other", PASSWORD))


def test_axes_reset_unlocks(client):
    make_staff("operator", "view_call")
    lock_out(client, "operator")
    call_command("axes_reset", verbosity=0)
    assert logged_in(log_in(client, "operator", PASSWORD))


def test_a_superuser_unlocks_in_the_admin(client):
    make_staff("operator", "view_call")
    lock_out(client, "operator")
    [attempt] = AccessAttempt.objects.filter(username="operator")
    admin = Client(REMOTE_ADDR="10.0.0.9")
    User.objects.create_superuser("root", password=PASSWORD)
    assert logged_in(admin.post(LOGIN, {"username": "root", "password": PASSWORD}))
    page = admin.get("/admin/axes/accessattempt/")
    assert page.status_code == 200 and "operator" in page.content.decode()
    response = admin.post(
        "/admin/axes/accessattempt/",
        {"action": "delete_selected", "_selected_action": [attempt.pk], "post": "yes"},
    )
    assert response.status_code == 302
    assert not AccessAttempt.objects.exists()
    assert logged_in(log_in(client, "operator", PASSWORD))


@pytest.mark.parametrize(
    ("proxies", "forwarded", "expected"),
    [
        (0, "203.0.113.7", "192.0.2.1"),  # no proxy: the header is the client's own words
        (1, "203.0.113.7", "203.0.113.7"),
        (1, "1.2.3.4, 203.0.113.7", "203.0.113.7"),  # made-up entries on the left are ignored
        (2, "1.2.3.4, 203.0.113.7, 10.0.0.2", "203.0.113.7"),
        (2, "203.0.113.7", "192.0.2.1"),  # fewer entries than proxies: not through them
    ],
)
def test_the_client_address_is_read_from_the_right_of_x_forwarded_for(
    proxies, forwarded, expected
):
    request = RequestFactory().get("/", REMOTE_ADDR="192.0.2.1", HTTP_X_FORWARDED_FOR=forwarded)
    with override_settings(TRUSTED_PROXY_COUNT=proxies):
        assert client_ip(request) == expected


@override_settings(TRUSTED_PROXY_COUNT=1)
def test_behind_a_proxy_a_made_up_forwarded_for_does_not_reset_the_count():
    make_staff("operator", "view_call")
    statuses = []
    for attempt in range(10):
        client = Client(HTTP_X_FORWARDED_FOR=f"10.9.9.{attempt}, 203.0.113.7")
        statuses.append(log_in(client, "operator", "wrong-password").status_code)
    assert statuses[-1] == 429
    assert AccessAttempt.objects.get(username="operator").ip_address == "203.0.113.7"
