"""What `make run` says as it starts, and where the site's root leads."""

import io
import subprocess

import pytest
from django.conf import settings
from django.core.management import call_command

from .dashboard_helpers import make_staff

pytestmark = pytest.mark.django_db


def banner(**options) -> str:
    out = io.StringIO()
    call_command("run_banner", stdout=out, **options)
    return out.getvalue()


def test_the_banner_says_where_it_listens_and_how_to_call_that_address():
    text = banner(host="127.0.0.1", port=9123)

    assert "listening on http://127.0.0.1:9123/" in text
    assert "http://127.0.0.1:9123/admin/" in text
    assert "make call PORT=9123" in text


def test_on_the_default_address_the_call_hint_needs_no_options():
    text = banner(host="127.0.0.1", port=8000)

    assert "make call\n" in text or text.rstrip().endswith("make call")
    assert "PORT=" not in text


def test_it_asks_for_a_staff_login_only_while_there_is_none():
    assert "make superuser" in banner(host="127.0.0.1", port=8000)
    make_staff("boss")
    assert "make superuser" not in banner(host="127.0.0.1", port=8000)


def test_make_run_prints_the_banner_for_its_own_host_and_port():
    plan = subprocess.run(
        ["make", "-n", "run", "PORT=9123", "HOST=0.0.0.0"],
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "run_banner --host 0.0.0.0 --port 9123" in plan
    assert "daphne -b 0.0.0.0 -p 9123" in plan


def test_the_root_leads_to_the_console(client):
    response = client.get("/")

    assert response.status_code == 302
    assert response["Location"] == "/admin/"
